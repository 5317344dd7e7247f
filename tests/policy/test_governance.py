"""Pure governance logic: domains, proposals, approvals, tallies and the chain folds."""

from __future__ import annotations

import pytest

from icn_p2p.identity.keys import NodeKey
from icn_p2p.policy.governance import (
    ActCandidate,
    Approval,
    DomainAct,
    DomainChange,
    DomainGenesis,
    GovernanceError,
    PolicyAct,
    PolicyProposal,
    Reason,
    check_act,
    check_domain_change,
    check_genesis,
    check_proposal,
    make_local_act,
    resolve_domain,
    resolve_policy_chain,
    tally,
)

KEYS = [NodeKey(bytes([i]) * 32) for i in range(1, 8)]
A, B, C, D, E = KEYS[:5]
QUOTA = {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1, "max_priority": "Low"}


def body(coop: str = "c1", domain: str | None = "gov:x", **extra) -> dict:
    return {"coop_id": coop, "governance_domain": domain, "default_quota": dict(QUOTA), **extra}


def genesis(keys=(A, B, C), t: int = 2, name: str = "gov:x", at: int = 1000) -> DomainGenesis:
    return DomainGenesis.create(name, list(keys), t, at)


def proposal(state, key=A, version=1, parent=None, at=2000, expires=10_000, **kw) -> PolicyProposal:
    pol = kw.pop("policy", None) or body(domain=state.name if state else None)
    return PolicyProposal.create(key, pol, version=version, parent_hash=parent, created_at_ms=at,
                                 domain_state=state, expires_at_ms=expires, **kw)


# --- approvals and tallies -----------------------------------------------------------


def test_approval_sign_verify_and_wire_roundtrip():
    a = Approval.sign(A, "ab" * 32, 5)
    assert a.verify()
    assert Approval.from_wire(a.to_wire()) == a
    forged = a.model_copy(update={"approved_at_ms": 6})
    assert not forged.verify()


@pytest.mark.parametrize("bad", [
    None, 5, [], {"proposal_id": "xy", "approver": "d", "approved_at_ms": 1, "signature": b"x" * 64},
    {"proposal_id": "ab" * 32, "approver": "d", "approved_at_ms": -1, "signature": b"x" * 64},
    {"proposal_id": "ab" * 32, "approver": "d", "approved_at_ms": 1, "signature": b"x"},
    {"proposal_id": "ab" * 32, "approver": "d", "approved_at_ms": "1", "signature": b"x" * 64},
    {"proposal_id": "ab" * 32, "approver": "d", "approved_at_ms": 1, "signature": b"x" * 64, "z": 1},
])
def test_approval_from_wire_rejects_malformed(bad):
    with pytest.raises(GovernanceError) as exc:
        Approval.from_wire(bad)
    assert exc.value.reason == "malformed"


def test_tally_counts_distinct_members_and_reports_the_rest():
    sid = "cd" * 32
    members = [A.did, B.did, C.did]
    approvals = [
        Approval.sign(A, sid, 10), Approval.sign(A, sid, 5),  # duplicate: earliest counts
        Approval.sign(D, sid, 11),  # non-member
        Approval.sign(B, "ee" * 32, 12),  # signed another subject
        Approval.sign(C, sid, 3),  # before the proposal existed
    ]
    t = tally(sid, approvals, members, 2, not_before_ms=4)
    assert t.valid == (A.did,)
    assert t.non_members == (D.did,)
    assert t.duplicates == (A.did,)
    assert set(t.bad) == {B.did, C.did}
    assert t.times[A.did] == 5
    assert t.threshold_at_ms is None
    assert t.shortfall_reason() == Reason.BAD_SIGNATURE
    assert set(t.notes()) == {"non_member_signature", "duplicate_signer", "bad_signature"}

    ok = tally(sid, [Approval.sign(A, sid, 10), Approval.sign(B, sid, 7), Approval.sign(C, sid, 30)],
               members, 2)
    assert ok.valid == tuple(sorted([A.did, B.did, C.did]))
    assert ok.threshold_at_ms == 10  # the 2nd earliest


def test_tally_shortfall_reasons():
    sid = "cd" * 32
    dup = tally(sid, [Approval.sign(A, sid, 1), Approval.sign(A, sid, 2)], [A.did, B.did], 2)
    assert dup.shortfall_reason() == Reason.DUPLICATE_SIGNER
    few = tally(sid, [Approval.sign(A, sid, 1)], [A.did, B.did], 2)
    assert few.shortfall_reason() == Reason.TOO_FEW_SIGNATURES and few.notes() == ()


# --- domains ------------------------------------------------------------------------


def test_genesis_needs_every_founder_and_has_a_stable_id():
    g = genesis()
    assert check_genesis(g) is None
    assert DomainGenesis.from_wire(g.to_wire()).genesis_id == g.genesis_id
    missing = g.model_copy(update={"signatures": g.signatures[:2]})
    assert check_genesis(missing) == Reason.TOO_FEW_SIGNATURES
    assert genesis(at=1001).genesis_id != g.genesis_id
    st = g.state()
    assert st.seq == 0 and st.state_hash == g.genesis_id and st.is_member(A.did)


def test_genesis_pinning():
    g = genesis()
    assert check_genesis(g, {"gov:x": g.genesis_id}) is None
    assert check_genesis(g, {"gov:x": "00" * 32}) == Reason.UNPINNED_GENESIS
    assert check_genesis(g, {"gov:other": "00" * 32}) is None


@pytest.mark.parametrize("members,t", [([], 1), (["did:icn:x"], 1), (None, 0), (None, 4)])
def test_genesis_shape_is_validated(members, t):
    g = genesis()
    wire = g.to_wire()
    if members is not None:
        wire["members"] = members
    wire["threshold"] = t if members is None else 1
    with pytest.raises(GovernanceError):
        DomainGenesis.from_wire(wire)


def test_genesis_members_must_be_sorted_and_distinct():
    wire = genesis().to_wire()
    wire["members"] = list(reversed(wire["members"]))
    with pytest.raises(GovernanceError):
        DomainGenesis.from_wire(wire)
    with pytest.raises(GovernanceError):
        DomainGenesis.from_wire("nope")


def _pairs(act_or_change, extra=()):
    ch = act_or_change
    return [(ch.proposer, ch.created_at_ms), *((a.approver, a.approved_at_ms) for a in extra)]


def test_domain_change_threshold_of_current_members_and_chain():
    g = genesis()
    s0 = g.state()
    ch = DomainChange.create(A, s0, [A.did, B.did, D.did], 2, 3000, 9000, reason="swap C for D")
    assert check_domain_change(ch) is None
    assert DomainChange.from_wire(ch.to_wire()) == ch
    act = DomainAct(change=ch, approvals=(Approval.sign(B, ch.change_id, 3100),))
    assert DomainAct.from_wire(act.to_wire()) == act
    # proposer alone: below threshold
    res = resolve_domain("gov:x", [g], [(ch, _pairs(ch))])
    assert res.head == s0 and res.statuses[ch.change_id] == "pending"
    # D (not yet a member) cannot help approve its own admission
    res = resolve_domain("gov:x", [g], [(ch, _pairs(ch, [Approval.sign(D, ch.change_id, 3100)]))])
    assert res.statuses[ch.change_id] == "pending"
    res = resolve_domain("gov:x", [g], [(ch, _pairs(ch, act.approvals))])
    assert res.head.seq == 1 and res.head.members == tuple(sorted([A.did, B.did, D.did]))
    assert res.statuses[ch.change_id] == "accepted"


def test_domain_change_expiry_gap_and_forged_signature():
    g = genesis()
    s0 = g.state()
    late = DomainChange.create(A, s0, [A.did, B.did], 1, 3000, 3050)
    res = resolve_domain("gov:x", [g], [(late, _pairs(late, [Approval.sign(B, late.change_id, 3100)]))])
    assert res.statuses[late.change_id] == "expired"
    gap = DomainChange.create(A, s0, [A.did], 1, 3000, 9000).model_copy(update={"seq": 2})
    # model_copy keeps the old id: build through the wire to re-hash, then its signature fails
    gap = DomainChange.from_wire(gap.to_wire())
    assert check_domain_change(gap) == Reason.BAD_SIGNATURE
    res = resolve_domain("gov:x", [g], [(gap, _pairs(gap, [Approval.sign(B, gap.change_id, 3001)]))])
    assert res.statuses[gap.change_id] == "version_gap"
    orphan = DomainChange.create(A, s0.model_copy(update={"state_hash": "ab" * 32}), [A.did], 1, 1, 9)
    res = resolve_domain("gov:x", [g], [(orphan, _pairs(orphan))])
    assert res.statuses[orphan.change_id] == "parent_mismatch"
    with pytest.raises(GovernanceError):
        DomainAct.from_wire({"type": "x"})
    with pytest.raises(GovernanceError):
        DomainAct.from_wire({"type": "icn.domain.act/1", "change": {}, "zzz": 1})
    with pytest.raises(GovernanceError):
        DomainChange.from_wire([])


def test_domain_fork_resolves_by_height_then_approvals_then_id():
    g = genesis()
    s0 = g.state()
    x = DomainChange.create(A, s0, [A.did, B.did], 1, 3000, 9000)
    y = DomainChange.create(B, s0, [B.did, C.did], 1, 3000, 9000)
    xa = _pairs(x, [Approval.sign(B, x.change_id, 3001)])
    ya = _pairs(y, [Approval.sign(C, y.change_id, 3001), Approval.sign(A, y.change_id, 3002)])
    res = resolve_domain("gov:x", [g], [(x, xa), (y, ya)])
    assert res.head.state_hash == y.change_id  # three approvals beat two
    assert res.statuses[x.change_id] == "superseded"
    # a child on x makes x's branch longer: x wins
    x2 = DomainChange.create(A, x.state(), [A.did], 1, 4000, 9000)
    res = resolve_domain("gov:x", [g], [(y, ya), (x, xa), (x2, _pairs(x2))])
    assert [s.state_hash for s in res.states] == [g.genesis_id, x.change_id, x2.change_id]
    # a change of another genesis is unknown here
    other = genesis(name="gov:x", at=5)
    z = DomainChange.create(A, other.state(), [A.did], 1, 1, 9)
    res = resolve_domain("gov:x", [g], [(z, _pairs(z))], pinned=g.genesis_id)
    assert res.statuses[z.change_id] == "unknown_domain"


def test_unpinned_name_takes_lowest_genesis_id_and_pinned_takes_the_pin():
    g1, g2 = genesis(at=1), genesis(at=2)
    low, high = sorted([g1, g2], key=lambda g: g.genesis_id)
    res = resolve_domain("gov:x", [high, low], [])
    assert res.genesis_id == low.genesis_id and res.rival_geneses == (high.genesis_id,)
    assert resolve_domain("gov:x", [low, high], [], pinned=high.genesis_id).genesis_id == high.genesis_id
    assert resolve_domain("gov:x", [low], [], pinned=high.genesis_id).head is None


# --- proposals and acts ----------------------------------------------------------------


def test_proposal_ids_signature_and_roundtrip():
    st = genesis().state()
    p = proposal(st)
    assert check_proposal(p).reason is None
    assert PolicyProposal.from_wire(p.to_wire()) == p
    assert PolicyProposal.from_wire(p.to_wire()).proposal_id == p.proposal_id
    act = PolicyAct(proposal=p, approvals=(p.approve(B, 2100),))
    assert PolicyAct.from_wire(act.to_wire()) == act and act.mode == "governed"
    tampered = p.to_wire()
    tampered["reason"] = "changed"
    assert check_proposal(PolicyProposal.from_wire(tampered)).reason == Reason.BAD_SIGNATURE


@pytest.mark.parametrize("mutate", [
    lambda w: w.pop("domain_state"),
    lambda w: w.update(expires_at_ms=None),
    lambda w: w.update(parent_hash="zz"),
    lambda w: w.update(version=0),
    lambda w: w.update(version="1"),
    lambda w: w.update(extra=1),
    lambda w: w.update(reason="x" * 5000),
    lambda w: w.update(domain=None),
    lambda w: w.update(policy={"k": "x" * 300_000}),
])
def test_proposal_from_wire_rejects_malformed(mutate):
    w = proposal(genesis().state()).to_wire()
    mutate(w)
    with pytest.raises(GovernanceError) as exc:
        PolicyProposal.from_wire(w)
    assert exc.value.reason == "malformed"


def test_act_from_wire_rejects_malformed():
    st = genesis().state()
    good = PolicyAct(proposal=proposal(st)).to_wire()
    for bad in [None, {}, {**good, "type": "x"}, {**good, "more": 1}, {**good, "approvals": {}},
                {**good, "approvals": [1]}, {**good, "approvals": [{}] * 3000}]:
        with pytest.raises(GovernanceError):
            PolicyAct.from_wire(bad)


def test_check_proposal_reasons():
    st = genesis().state()
    assert check_proposal(proposal(st, policy={"coop_id": "c1"})).reason == Reason.INVALID_POLICY
    assert check_proposal(proposal(st, policy=body(coop="c2"), coop_id="c1")).reason == Reason.INVALID_POLICY
    assert check_proposal(proposal(st, policy=body(domain="gov:y"))).reason == Reason.DOMAIN_MISMATCH
    assert check_proposal(proposal(st, version=2)).reason == Reason.VERSION_GAP
    assert check_proposal(proposal(st, parent="ab" * 32)).reason == Reason.PARENT_MISMATCH
    local = make_local_act(A, body(domain=None), version=1, parent_hash=None, created_at_ms=1)
    assert local.mode == "local" and check_proposal(local.proposal).reason is None
    assert check_proposal(make_local_act(A, body(), version=1, parent_hash=None,
                                         created_at_ms=1).proposal).reason == Reason.DOMAIN_MISMATCH


def test_check_act_threshold_expiry_and_versions():
    g = genesis()
    st = g.state()
    p = proposal(st, at=2000, expires=3000)
    ok = PolicyAct(proposal=p, approvals=(p.approve(B, 2500),))
    v = check_act(ok, st)
    assert v.ok and v.tally.threshold_at_ms == 2500
    assert check_act(PolicyAct(proposal=p), st).reason == Reason.TOO_FEW_SIGNATURES
    nonmember = PolicyAct(proposal=p, approvals=(p.approve(D, 2500),))
    v = check_act(nonmember, st)
    assert v.reason == Reason.TOO_FEW_SIGNATURES and "non_member_signature" in v.tally.notes()
    dup = PolicyAct(proposal=p, approvals=(p.approve(A, 2500),))
    assert check_act(dup, st).reason == Reason.DUPLICATE_SIGNER
    forged = Approval(proposal_id=p.proposal_id, approver=B.did, approved_at_ms=2500,
                      signature=bytes(64))
    assert check_act(PolicyAct(proposal=p, approvals=(forged,)), st).reason == Reason.BAD_SIGNATURE
    late = PolicyAct(proposal=p, approvals=(p.approve(B, 3001),))
    assert check_act(late, st).reason == Reason.EXPIRED
    assert check_act(ok, st, parent_version=1, parent_hash="ab" * 32).reason == Reason.REPLAYED
    p3 = proposal(st, version=3, parent="ab" * 32)
    assert check_act(PolicyAct(proposal=p3), st, parent_version=1).reason == Reason.VERSION_GAP
    p2 = proposal(st, version=2, parent="ab" * 32)
    assert check_act(PolicyAct(proposal=p2), st, parent_version=1,
                     parent_hash="cd" * 32).reason == Reason.PARENT_MISMATCH
    assert check_act(ok, None).reason == Reason.UNKNOWN_DOMAIN
    other = genesis(at=7).state()
    assert check_act(ok, other).reason == Reason.UNKNOWN_DOMAIN_STATE
    local = make_local_act(A, body(domain=None), version=1, parent_hash=None, created_at_ms=1)
    assert check_act(local, None).ok


# --- the chain fold --------------------------------------------------------------------


def cand(act_id, version, parent, phash, *, domain="gov:x", state=None, approvers=(), proposer=None,
         created=0, expires=None):
    proposer = proposer or A.did
    return ActCandidate(act_id=act_id, coop_id="c1", version=version, parent_hash=parent,
                        policy_hash=phash, domain=domain, domain_state=state, proposer=proposer,
                        created_at_ms=created, expires_at_ms=expires,
                        approvals=((proposer, created), *((a, created + 1) for a in approvers)))


def h(n: int) -> str:
    return f"{n:064x}"


def test_chain_tie_break_and_branch_statuses():
    st = genesis().state()
    S = {st.state_hash: st}
    s = st.state_hash
    a1 = cand(h(0xA1), 1, None, h(1), state=s, approvers=[B.did])
    b1 = cand(h(0xB1), 1, None, h(2), state=s, approvers=[B.did, C.did])  # more approvals
    b2 = cand(h(0xB2), 2, h(2), h(3), state=s, approvers=[B.did])
    a2 = cand(h(0xA2), 2, h(1), h(4), state=s, approvers=[B.did])
    a3 = cand(h(0xA3), 3, h(4), h(5), state=s, approvers=[B.did])
    gap = cand(h(0xF5), 5, h(99), h(6), state=s, approvers=[B.did])
    res = resolve_policy_chain([a1, b1, b2], S)
    assert [j.cand.act_id for j in res.chain] == [b1.act_id, b2.act_id]
    assert res.statuses[a1.act_id] == "superseded"
    # a1's branch grows longer: it wins, b2 built on the loser is parent_mismatch
    res = resolve_policy_chain([a1, b1, b2, a2, a3, gap], S)
    assert [j.cand.act_id for j in res.chain] == [a1.act_id, a2.act_id, a3.act_id]
    assert res.statuses[b1.act_id] == "superseded"
    assert res.statuses[b2.act_id] == "parent_mismatch"
    assert res.statuses[gap.act_id] == "version_gap"
    # equal height and approvals: lowest id
    c1 = cand(h(0xC1), 1, None, h(7), state=s, approvers=[B.did])
    assert resolve_policy_chain([c1, a1], S).chain[0].cand.act_id == a1.act_id


def test_chain_newer_domain_state_wins_and_may_not_go_back():
    g = genesis()
    s0 = g.state()
    ch = DomainChange.create(A, s0, [A.did, B.did, D.did], 2, 3000, 9000)
    s1 = ch.state()
    S = {s0.state_hash: s0, s1.state_hash: s1}
    old = cand(h(1), 1, None, h(11), state=s0.state_hash, approvers=[B.did, C.did])
    new = cand(h(2), 1, None, h(12), state=s1.state_hash, approvers=[D.did])
    res = resolve_policy_chain([old, new], S)
    assert res.chain[0].cand.act_id == new.act_id  # newest membership first, despite fewer approvals
    # removed member C no longer counts under s1
    c_only = cand(h(3), 2, h(12), h(13), state=s1.state_hash, proposer=C.did, approvers=[A.did])
    res = resolve_policy_chain([new, c_only], S)
    assert res.statuses[c_only.act_id] == "pending"
    stale = cand(h(4), 2, h(12), h(14), state=s0.state_hash, approvers=[B.did])
    res = resolve_policy_chain([new, stale], S)
    assert res.statuses[stale.act_id] == "stale_domain_state" and len(res.chain) == 1
    unknown = cand(h(5), 1, None, h(15), state=h(77), approvers=[B.did])
    other = cand(h(6), 1, None, h(16), domain="gov:none", state=h(78), approvers=[B.did])
    expired = cand(h(7), 1, None, h(17), state=s0.state_hash, approvers=[B.did], created=10, expires=10)
    res = resolve_policy_chain([unknown, other, expired], S)
    assert res.statuses == {unknown.act_id: "unknown_domain_state", other.act_id: "unknown_domain",
                            expired.act_id: "expired"}
    res = resolve_policy_chain([old], S, coop_domain="gov:y")
    assert res.statuses[old.act_id] == "domain_mismatch"


def test_chain_local_then_governed_then_local_refused():
    st = genesis().state()
    S = {st.state_hash: st}
    l1 = cand(h(1), 1, None, h(11), domain=None, proposer=E.did)
    l2 = cand(h(2), 2, h(11), h(12), domain=None, proposer=D.did)
    g3 = cand(h(3), 3, h(12), h(13), state=st.state_hash, approvers=[B.did])
    l4 = cand(h(4), 4, h(13), h(14), domain=None, proposer=E.did)
    l3 = cand(h(5), 3, h(12), h(15), domain=None, proposer=E.did)
    res = resolve_policy_chain([l1, l2, g3, l4, l3], S)
    assert [j.cand.act_id for j in res.chain] == [l1.act_id, l2.act_id, g3.act_id]
    assert res.governed
    assert res.statuses[l4.act_id] == "governed_coop" and res.statuses[l3.act_id] == "governed_coop"
    # a governed act must stay in its domain
    other = genesis(name="gov:y").state()
    S[other.state_hash] = other
    y4 = cand(h(6), 4, h(13), h(16), domain="gov:y", state=other.state_hash, approvers=[B.did])
    res = resolve_policy_chain([l1, l2, g3, y4], S)
    assert res.statuses[y4.act_id] == "domain_mismatch"
