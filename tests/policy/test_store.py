"""PolicyStore on real SQLite files: governed acts, votes, conflicts, history, sync reads."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icn_p2p.identity.keys import NodeKey
from icn_p2p.metrics import REGISTRY
from icn_p2p.policy.governance import (
    Approval,
    DomainAct,
    DomainChange,
    DomainGenesis,
    GovernanceError,
    PolicyAct,
    PolicyProposal,
    make_local_act,
)
from icn_p2p.policy.store import PolicyStore, make_rollback_proposal

KEYS = [NodeKey(bytes([i]) * 32) for i in range(11, 18)]
A, B, C, D, E = KEYS[:5]
GEN = DomainGenesis.create("gov:x", [A, B, C], 2, 1000)
S0 = GEN.state()


def body(cpu: float = 10.0, coop: str = "c1", domain: str | None = "gov:x", **extra) -> dict:
    return {"coop_id": coop, "governance_domain": domain,
            "default_quota": {"cpu_hours_per_month": cpu, "max_concurrent_tasks": 1,
                              "max_priority": "Low"}, **extra}


def phash(b: dict) -> str:
    from icn_p2p.core.policy import CoopSchedulingPolicy
    return CoopSchedulingPolicy.from_dict(b).content_hash()


def act(version=1, parent=None, cpu=10.0, key=A, approvers=(B,), at=2000, expires=100_000, state=S0,
        **kw) -> PolicyAct:
    p = PolicyProposal.create(key, body(cpu, domain=state.name), version=version, parent_hash=parent,
                              created_at_ms=at, domain_state=state, expires_at_ms=expires, **kw)
    return PolicyAct(proposal=p, approvals=tuple(p.approve(k, at + 1) for k in approvers))


def chain(n: int, start_cpu: float = 10.0) -> list[PolicyAct]:
    out, parent = [], None
    for v in range(1, n + 1):
        b = body(start_cpu + v)
        out.append(act(v, parent, start_cpu + v, at=2000 + v))
        parent = phash(b)
    return out


@pytest.fixture
def store(tmp_path):
    s = PolicyStore(tmp_path / "policy.db")
    assert s.apply_genesis(GEN, 1000).accepted
    yield s
    s.close()


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- basics --------------------------------------------------------------------------


def test_apply_act_and_reads(store):
    before = metric("icn_governance_acts_accepted_total", mode="governed")
    a = act()
    r = store.apply_act(a.to_wire(), 2100)
    assert r.accepted and r.reason == "accepted" and r.version == 1 and r.head_version == 1
    assert metric("icn_governance_acts_accepted_total", mode="governed") == before + 1
    v = store.current("c1", 2100)
    assert v.version == 1 and v.act_id == a.act_id and v.mode == "governed"
    assert v.approvers == tuple(sorted([A.did, B.did])) and v.threshold_at_ms == 2001
    assert store.get("c1", 1).policy_hash == phash(body(10.0))
    assert store.get("c1", 2) is None and store.current("nope", 1) is None
    assert store.get_by_hash(v.policy_hash) is v.policy
    assert store.current_policy("c1", 2100) is v.policy
    assert store.heads() == {"c1": (1, v.policy_hash, a.act_id)}
    assert store.coops() == ["c1"]
    assert store.get_act(a.act_id) == a
    assert store.status(a.act_id) == "accepted"


def test_replayed_and_old_acts(store):
    acts = chain(3)
    for a in acts:
        assert store.apply_act(a, 3000).accepted
    r = store.apply_act(acts[0], 3000)
    assert not r.accepted and r.reason == "replayed"
    rival = act(1, None, 99.0)  # a new act for an old version: history stands
    r = store.apply_act(rival, 3000)
    assert not r.accepted and r.reason == "superseded" and r.head_version == 3
    assert store.heads()["c1"].version == 3


def test_threshold_pending_votes_and_notes(store):
    a = act(approvers=())
    r = store.add_proposal(a.proposal.to_wire(), 2000)
    assert not r.accepted and r.reason == "pending"
    assert store.pending("c1")[0]["proposal"]["version"] == 1
    assert store.add_approval(a.proposal.approve(D, 2001), 2001) is None  # non-member: still pending
    assert store.add_approval(a.proposal.approve(D, 2001), 2001).reason == "replayed"
    r = store.add_approval(a.proposal.approve(C, 2002).to_wire(), 2002)
    assert r.accepted and r.version == 1
    assert store.pending() == []
    forged = Approval(proposal_id=a.act_id, approver=B.did, approved_at_ms=5, signature=bytes(64))
    assert store.add_approval(forged, 1).reason == "bad_signature"
    assert store.add_approval({"bad": 1}, 1).reason == "malformed"
    # acts carrying non-member and bad signatures are still judged on the good ones
    p2 = act(2, phash(body(10.0)), 11.0, approvers=(D,))
    bad = Approval(proposal_id=p2.act_id, approver=C.did, approved_at_ms=3, signature=bytes(64))
    r = store.apply_act(p2.model_copy(update={"approvals": (*p2.approvals, bad, p2.proposal.approve(B, 2003))}),
                        2003)
    assert r.accepted and set(r.notes) == {"bad_signature", "non_member_signature"}


def test_rejections_at_ingestion(store):
    assert store.apply_act({"type": "junk"}, 1).reason == "malformed"
    assert store.add_proposal([], 1).reason == "malformed"
    bad_body = act().proposal.to_wire()
    bad_body["policy"] = {"coop_id": "c1"}
    assert store.add_proposal(bad_body, 1).reason == "bad_signature"  # body changed under the signature
    p = PolicyProposal.create(A, {"coop_id": "c1", "governance_domain": "gov:x"}, version=1,
                              parent_hash=None, created_at_ms=1, domain_state=S0, expires_at_ms=9)
    assert store.add_proposal(p, 1).reason == "invalid_policy"
    other = DomainGenesis.create("gov:y", [A], 1, 5).state()
    assert store.apply_act(act(state=other), 1).reason == "unknown_domain"
    fake_state = S0.model_copy(update={"state_hash": "ab" * 32})
    assert store.apply_act(act(state=fake_state), 1).reason == "unknown_domain_state"
    # a stranger's proposal is not kept as pending
    assert store.add_proposal(act(key=D, approvers=()).proposal, 1).reason == "non_member_proposer"
    # ... but a stranger may carry a fully approved act
    assert store.apply_act(act(key=D, approvers=(A, B)), 1).accepted


def test_version_gap_then_fill(store):
    a1, a2, a3 = chain(3)
    r = store.apply_act(a3, 3000)
    assert not r.accepted and r.reason == "version_gap"
    assert store.apply_act(a1, 3000).reason == "accepted"
    r = store.apply_act(a2, 3000)
    assert r.accepted and r.head_version == 3  # the gap filled and the kept act attached
    assert [v.version for v in store.history("c1")] == [1, 2, 3]


def test_expiry_uses_the_threshold_time(store):
    a = act(at=2000, expires=2500, approvers=())
    assert store.add_proposal(a.proposal, 2000).reason == "pending"
    r = store.add_approval(a.proposal.approve(B, 2600), 2600)
    assert r is not None and r.reason == "expired"
    # an approval stamped in time still makes it (votes may travel late)
    r = store.add_approval(a.proposal.approve(C, 2400), 2700)
    assert r.accepted
    assert store.prune(10**9, grace_ms=0) == 0  # accepted acts are never pruned
    b = act(2, phash(body(10.0)), 12.0, at=3000, expires=3100, approvers=())
    store.add_proposal(b.proposal, 3000)
    assert store.prune(3100 + 10, grace_ms=0) == 1
    assert store.status(b.act_id) is None


def test_effective_time_keeps_the_current_version(store):
    a1 = act()
    a2 = act(2, phash(body(10.0)), 20.0, effective_at_ms=50_000)
    store.apply_act(a1, 3000)
    assert store.apply_act(a2, 3000).accepted
    assert store.heads()["c1"].version == 2
    assert store.current("c1", 49_999).version == 1
    assert store.current("c1", 50_000).version == 2
    assert store.current_policy("c1", 49_999).default_quota.cpu_hours_per_month == 10.0
    later = act(1, None, 1.0, effective_at_ms=10**9, approvers=(B, C), state=S0)
    s2_body = later  # a coop whose only version is in the future has no current policy
    assert s2_body.proposal.effective_at_ms == 10**9


def test_future_only_policy_has_no_current(tmp_path):
    with PolicyStore(tmp_path / "p.db") as s:
        s.apply_genesis(GEN, 1)
        assert s.apply_act(act(effective_at_ms=10_000), 1).accepted
        assert s.current("c1", 9_999) is None and s.current_policy("c1", 9_999) is None
        assert s.current("c1", 10_000).version == 1


def test_rollback_is_a_new_governed_version(store):
    for a in chain(3):
        store.apply_act(a, 3000)
    p = make_rollback_proposal(store, "c1", 1, key=A, created_at_ms=4000, expires_at_ms=9000)
    assert p.version == 4 and p.parent_hash == store.heads()["c1"].policy_hash
    assert store.add_proposal(p, 4000).reason == "pending"
    r = store.add_approval(p.approve(C, 4001), 4001)
    assert r.accepted and r.version == 4
    v4 = store.current("c1", 5000)
    assert v4.policy_hash == store.get("c1", 1).policy_hash and v4.reason == "rollback to version 1"
    hist = store.history("c1")
    assert hist[-1].diff.fields[0].path == "default_quota.cpu_hours_per_month"
    assert (hist[-1].diff.fields[0].old, hist[-1].diff.fields[0].new) == (13.0, 11.0)
    with pytest.raises(GovernanceError):
        make_rollback_proposal(store, "c1", 9, key=A, created_at_ms=1, expires_at_ms=2)
    with pytest.raises(GovernanceError):
        make_rollback_proposal(store, "c1", 1, key=A, created_at_ms=1)


# --- domains --------------------------------------------------------------------------


def test_membership_change_removed_member_no_longer_counts(store):
    store.apply_act(act(), 2100)
    ch = DomainChange.create(A, S0, [A.did, B.did, D.did], 2, 3000, 9000, reason="C leaves, D joins")
    r = store.apply_domain_act(ch, 3000)
    assert not r.accepted and r.reason == "pending"
    r = store.add_approval(Approval.sign(B, ch.change_id, 3001), 3001)
    assert r.accepted and r.head_version == 1
    s1 = store.domain_state("gov:x")
    assert s1.seq == 1 and D.did in s1.members and C.did not in s1.members
    parent = store.heads()["c1"].policy_hash
    by_removed = act(2, parent, 20.0, key=C, approvers=(A,), state=s1, at=4000)
    r = store.apply_act(by_removed, 4000)
    # C's own signature no longer counts: one member approval is not enough, and a
    # non-member's proposal is not kept as pending
    assert r.reason == "non_member_proposer" and "non_member_signature" in r.notes
    by_new = act(2, parent, 21.0, key=D, approvers=(A,), state=s1, at=4000)
    assert store.apply_act(by_new, 4000).accepted
    # the act accepted under the old state stays in history
    assert store.get("c1", 1).domain_state == S0.state_hash
    # the old state can no longer be used on this chain
    stale = act(3, store.heads()["c1"].policy_hash, 30.0, approvers=(C,), state=S0, at=5000)
    assert store.apply_act(stale, 5000).reason == "stale_domain_state"
    assert store.domain_states()["gov:x"] == s1
    r = store.apply_domain_act(DomainAct(change=ch), 6000)
    assert r.reason == "replayed"


def test_domain_act_rejections(store):
    assert store.apply_domain_act({"type": "x"}, 1).reason == "malformed"
    ch = DomainChange.create(A, S0, [A.did], 1, 3000, 9000)
    forged = DomainChange.from_wire({**ch.to_wire(), "reason": "other"})
    assert store.apply_domain_act(forged, 1).reason == "bad_signature"
    other = DomainGenesis.create("gov:y", [A], 1, 5)
    assert store.apply_domain_act(DomainChange.create(A, other.state(), [B.did], 1, 1, 9), 1).reason \
        == "unknown_domain"
    ghost = S0.model_copy(update={"state_hash": "ab" * 32})
    assert store.apply_domain_act(DomainChange.create(A, ghost, [B.did], 1, 1, 9), 1).reason \
        == "unknown_domain_state"
    assert store.apply_domain_act(DomainChange.create(D, S0, [D.did], 1, 1, 9), 1).reason \
        == "non_member_proposer"


def test_genesis_pinning_and_rivals(tmp_path):
    rival = DomainGenesis.create("gov:x", [D, E], 1, 7)
    with PolicyStore(tmp_path / "pinned.db", pinned={"gov:x": GEN.genesis_id}) as s:
        r = s.apply_genesis(rival.to_wire(), 1)
        assert not r.accepted and r.reason == "unpinned_genesis"
        assert s.apply_genesis(GEN, 1).accepted
        assert s.apply_genesis(GEN, 1).reason == "replayed"
        assert s.apply_genesis({"name": 1}, 1).reason == "malformed"
        unsigned = GEN.model_copy(update={"signatures": GEN.signatures[:1]})
        assert s.apply_genesis(unsigned, 1).reason == "too_few_signatures"
    with PolicyStore(tmp_path / "open.db") as s:
        s.apply_genesis(GEN, 1)
        r = s.apply_genesis(rival, 1)
        winner = min(GEN.genesis_id, rival.genesis_id)
        assert r.accepted == (winner == rival.genesis_id)
        assert s.domain_state("gov:x").genesis_id == winner
    # re-opening with a pin re-folds the domain
    with PolicyStore(tmp_path / "open.db", pinned={"gov:x": GEN.genesis_id}) as s:
        assert s.domain_state("gov:x").genesis_id == GEN.genesis_id


def test_export_import_domain_between_stores(tmp_path, store):
    ch = DomainChange.create(A, S0, [A.did, B.did, D.did], 2, 3000, 9000)
    store.apply_domain_act(DomainAct(change=ch, approvals=(Approval.sign(B, ch.change_id, 3001),)), 3001)
    exported = store.export_domain("gov:x")
    assert store.export_domain("nope") is None
    with PolicyStore(tmp_path / "peer.db") as peer:
        results = peer.import_domain(exported, 5000)
        assert [r.accepted for r in results] == [True, True]
        assert peer.domain_state("gov:x") == store.domain_state("gov:x")
        assert peer.import_domain({"type": "x"}, 1)[0].reason == "malformed"
        assert peer.import_domain({**exported, "changes": 3}, 1)[-1].reason == "malformed"


def test_orphan_votes_wait_for_their_proposal(store):
    a = act(approvers=())
    assert store.add_approval(a.proposal.approve(B, 2001), 2001) is None  # kept aside
    assert store.add_approval(a.proposal.approve(D, 2001), 2001).reason == "unknown_proposal"
    r = store.add_proposal(a.proposal, 2002)
    assert r.accepted  # the early vote joined
    ch = DomainChange.create(A, S0, [A.did, B.did], 2, 3000, 9000)
    assert store.add_approval(Approval.sign(B, ch.change_id, 3001), 3001) is None
    assert store.apply_domain_act(ch, 3002).accepted
    assert store.add_approval(Approval.sign(B, ch.change_id, 3001), 3003).reason == "replayed"
    assert store.add_approval(Approval.sign(C, ch.change_id, 3003), 3003).accepted  # an extra vote


# --- local development mode -------------------------------------------------------------


def test_local_mode_and_governed_protection(tmp_path):
    before = metric("icn_governance_acts_accepted_total", mode="local")
    with PolicyStore(tmp_path / "p.db", local_did=E.did) as s:
        l1 = make_local_act(E, body(coop="dev", domain=None), version=1, parent_hash=None, created_at_ms=1)
        r = s.apply_act(l1.to_wire(), 1)
        assert r.accepted and s.current("dev", 1).mode == "local"
        assert s.history("dev")[0].mode == "local" and s.history("dev")[0].approvers == (E.did,)
        assert metric("icn_governance_acts_accepted_total", mode="local") == before + 1
        h1 = s.heads()["dev"].policy_hash
        l2 = make_local_act(D, body(5.0, coop="dev", domain=None), version=2, parent_hash=h1,
                            created_at_ms=2)
        assert s.apply_act(l2, 2).accepted  # another dev node's act is accepted by default
        rb = make_rollback_proposal(s, "dev", 1, key=E, created_at_ms=3)
        assert rb.domain is None and s.apply_act(PolicyAct(proposal=rb), 3).accepted
        assert s.remove("dev") and s.heads() == {}
        assert not s.remove("dev")
    with PolicyStore(tmp_path / "strict.db", local_did=E.did, accept_foreign_local=False) as s:
        l = make_local_act(D, body(coop="dev", domain=None), version=1, parent_hash=None, created_at_ms=1)
        assert s.apply_act(l, 1).reason == "foreign_local"


def test_governed_coop_refuses_local_acts_and_removal(store):
    l1 = make_local_act(E, body(domain=None), version=1, parent_hash=None, created_at_ms=1)
    assert store.apply_act(l1, 1).accepted
    g2 = act(2, phash(body(domain=None)), 20.0)
    assert store.apply_act(g2, 2).accepted  # a domain takes over the development coop
    l3 = make_local_act(E, body(30.0, domain=None), version=3, parent_hash=store.heads()["c1"].policy_hash,
                        created_at_ms=3)
    assert store.apply_act(l3, 3).reason == "governed_coop"
    with pytest.raises(GovernanceError) as exc:
        store.remove("c1")
    assert exc.value.reason == "governed_coop"
    assert [v.mode for v in store.history("c1")] == ["local", "governed"]
    # rolling back to the development body keeps the governance domain
    rb = make_rollback_proposal(store, "c1", 1, key=A, created_at_ms=4, expires_at_ms=100)
    assert rb.policy["governance_domain"] == "gov:x"


def test_local_rival_arriving_before_governed_is_dropped(store):
    l1 = make_local_act(E, body(domain=None), version=1, parent_hash=None, created_at_ms=1)
    l1b = make_local_act(D, body(1.0, domain=None), version=1, parent_hash=None, created_at_ms=1)
    store.apply_act(l1, 1)
    store.apply_act(l1b, 1)
    g2 = act(2, phash(body(domain=None)), 20.0)
    store.apply_act(g2, 2)
    wanted = l1 if store.heads()["c1"].version == 2 else None
    assert wanted is not None
    assert [v.act_id for v in store.history("c1")] == [l1.act_id, g2.act_id]
    assert store.status(l1b.act_id) is None


def test_coop_pinned_to_a_domain(tmp_path):
    with PolicyStore(tmp_path / "p.db", coop_domains={"c1": "gov:y"}) as s:
        s.apply_genesis(GEN, 1)
        assert s.apply_act(act(), 2).reason == "domain_mismatch"


# --- durability and sync ---------------------------------------------------------------


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "p.db"
    with PolicyStore(path) as s:
        s.apply_genesis(GEN, 1)
        for a in chain(3):
            s.apply_act(a, 3000)
        pend = act(4, s.heads()["c1"].policy_hash, 50.0, approvers=())
        s.add_proposal(pend.proposal, 3001)
        heads, digest, hist = s.heads(), s.digest(), s.history("c1")
    with PolicyStore(path) as s:
        assert s.heads() == heads and s.digest() == digest and s.history("c1") == hist
        assert s.domain_state("gov:x") == S0
        assert s.add_approval(pend.proposal.approve(C, 3002), 3002).accepted


def test_sync_between_two_stores_converges(tmp_path):
    with PolicyStore(tmp_path / "a.db") as x, PolicyStore(tmp_path / "b.db") as y:
        for s in (x, y):
            s.apply_genesis(GEN, 1)
        acts = chain(3)
        x.apply_act(acts[0], 10)
        x.apply_act(acts[1], 10)
        rival2 = act(2, acts[1].proposal.parent_hash, 77.0, approvers=(B, C))
        y.apply_act(acts[0], 10)
        y.apply_act(rival2, 10)
        y.apply_act(acts[2], 10)  # built on x's version 2: a gap or mismatch at y for now
        assert x.digest() != y.digest()
        for src, dst in ((x, y), (y, x)):
            for w in src.acts_since("c1", 0):
                dst.apply_act(w, 20)
        assert x.heads() == y.heads() and x.digest() == y.digest()
        assert x.heads()["c1"].version == 3
        assert [(v.act_id, v.status) for v in x.history("c1")] == \
            [(v.act_id, v.status) for v in y.history("c1")]
        assert len(x.acts_since("c1", 2)) == 1


def _fixed_world():
    """A set of acts with conflicts at several versions, gaps and a membership change."""
    acts = []
    v1a = act(1, None, 1.0, approvers=(B,))
    v1b = act(1, None, 2.0, approvers=(B, C))
    acts += [v1a, v1b]
    h1a, h1b = phash(body(1.0)), phash(body(2.0))
    v2a = act(2, h1a, 3.0)
    v2b = act(2, h1b, 4.0)
    v2c = act(2, h1b, 5.0, key=B, approvers=(C,))
    acts += [v2a, v2b, v2c]
    v3a = act(3, phash(body(3.0)), 6.0)
    v3c = act(3, phash(body(5.0)), 7.0, approvers=(C,))
    v4c = act(4, phash(body(7.0)), 8.0)
    acts += [v3a, v3c, v4c]
    ch = DomainChange.create(A, S0, [A.did, B.did, D.did], 2, 3000, 9000)
    s1 = ch.state()
    v3d = act(3, phash(body(4.0)), 9.0, key=D, approvers=(B,), state=s1)
    acts.append(v3d)
    pend = act(5, phash(body(8.0)), 10.0, approvers=())
    acts.append(pend)
    dom = DomainAct(change=ch, approvals=(Approval.sign(B, ch.change_id, 3001),))
    return dom, acts


DOM, WORLD = _fixed_world()


def _snapshot(s: PolicyStore):
    return (s.heads(), s.digest(),
            [(v.version, v.act_id, v.status, v.approvers) for v in s.history("c1")],
            s.current("c1", 10**12).act_id)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_arrival_order_does_not_matter(tmp_path_factory, rnd: random.Random):
    items = [("dom", DOM)] + [("act", a) for a in WORLD]
    path = tmp_path_factory.mktemp("order") / "p.db"
    reference = None
    for attempt in range(2):
        order = items[:]
        rnd.shuffle(order)
        with PolicyStore(path.with_name(f"p{attempt}.db")) as s:
            s.apply_genesis(GEN, 1)
            retry = []
            for kind, obj in order:
                r = s.apply_domain_act(obj, 5) if kind == "dom" else s.apply_act(obj, 5)
                if r.reason == "unknown_domain_state":
                    retry.append(obj)  # the network layer re-fetches after the domain arrives
            for obj in retry:
                s.apply_act(obj, 6)
            snap = _snapshot(s)
        if reference is None:
            reference = snap
        else:
            assert snap == reference
    heads, _, hist, _ = reference
    # v3d, under the newer domain state, wins its branch; everything else is kept
    assert heads["c1"].act_id == WORLD[-2].act_id
    assert len(hist) == len(WORLD) - 1  # every valid act is in history; the pending one is not


def test_concurrent_threads_share_one_store(store):
    import threading
    acts = chain(6)
    rnd = random.Random(4)
    rnd.shuffle(acts)
    threads = [threading.Thread(target=store.apply_act, args=(a, 1)) for a in acts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.heads()["c1"].version == 6


def test_repinning_on_reopen_refolds_coops(tmp_path):
    path = tmp_path / "p.db"
    with PolicyStore(path) as s:
        s.apply_genesis(GEN, 1)
        assert s.apply_act(act(), 2).accepted
    with PolicyStore(path, pinned={"gov:x": "ab" * 32}) as s:
        assert s.domain_state("gov:x") is None
        assert s.heads() == {} and s.status(act().act_id) == "unknown_domain"
    with PolicyStore(path) as s:
        assert s.heads()["c1"].version == 1
