"""The pure CRDT: merge laws, convergence under any delivery, honest watermarks."""

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icn_p2p.usage.crdt import (
    COUNTER_FIELDS,
    SignedUsageEntry,
    UsageDelta,
    UsageEntry,
    UsageState,
    merge_entries,
    month_is_future,
    month_is_stale,
    next_month,
    previous_month,
)

from .helpers import KEYS, MONTH, NOW, PREV, RETENTION_MS

DAY = 86_400_000
counters = st.integers(min_value=0, max_value=2**40)


@st.composite
def slot_entries(draw):
    vals = draw(st.lists(counters, min_size=len(COUNTER_FIELDS), max_size=len(COUNTER_FIELDS)))
    v = draw(st.integers(min_value=1, max_value=1000))
    return UsageEntry("c", "m", MONTH, KEYS[0].did, v, *vals)


def _state(e):
    return (e.version, e.counters())


@given(slot_entries(), slot_entries())
def test_merge_is_commutative(a, b):
    assert _state(merge_entries(a, b)) == _state(merge_entries(b, a))


@given(slot_entries(), slot_entries(), slot_entries())
def test_merge_is_associative(a, b, c):
    assert _state(merge_entries(merge_entries(a, b), c)) == _state(merge_entries(a, merge_entries(b, c)))


@given(slot_entries())
def test_merge_is_idempotent(a):
    assert _state(merge_entries(a, a)) == _state(a)


def test_merge_keeps_the_dominant_signature_and_refuses_other_slots():
    a = UsageEntry("c", "m", MONTH, KEYS[0].did, 1, cpu_ms=5)
    b = UsageEntry("c", "m", MONTH, KEYS[0].did, 2, cpu_ms=9, sig=b"s" * 64)
    assert merge_entries(a, b).sig == b"s" * 64
    with pytest.raises(ValueError):
        merge_entries(a, UsageEntry("c", "other", MONTH, KEYS[0].did, 1))


def test_month_helpers():
    assert next_month("2024-12") == "2025-01" and previous_month("2025-01") == "2024-12"
    assert next_month("2025-03") == "2025-04" and previous_month("2025-03") == "2025-02"
    assert not month_is_stale(MONTH, NOW, 0)  # the current month never
    assert month_is_stale(PREV, NOW, 0)
    assert not month_is_stale(PREV, NOW, 30 * DAY)
    assert month_is_stale("2024-11", NOW, RETENTION_MS)
    assert not month_is_stale("2024-12", NOW, RETENTION_MS)
    assert month_is_future("2025-04", NOW) and not month_is_future(MONTH, NOW)


# --- convergence --------------------------------------------------------------------

N = 3
MEMBERS = ["m0", "m1", "m2"]
MONTHS = [PREV, MONTH]

local_op = st.tuples(
    st.just("local"), st.integers(0, N - 1), st.sampled_from(MEMBERS), st.sampled_from(MONTHS),
    st.sampled_from(COUNTER_FIELDS), st.integers(0, 50),
)
sync_op = st.tuples(
    st.sampled_from(["delta", "entries", "gossip_one"]), st.integers(0, N - 1),
    st.integers(0, N - 1), st.integers(0, 10**6),
)
replay_op = st.tuples(st.just("replay"), st.integers(0, N - 1), st.integers(0, 10**6))
ops = st.lists(st.one_of(local_op, sync_op, replay_op), max_size=40)


def _view(s: UsageState):
    return sorted((e.coop_id, e.key, e.version, e.counters()) for c in s.coops() for e in s.entries(c))


def _check_watermarks_are_honest(node: UsageState, history):
    """Every change a watermark vouches for is held (at that version or later)."""
    vv = node.version_vector("c")
    for writer, changes in history.items():
        for v, key in changes:
            if v <= vv.get(writer, 0):
                held = node.get_entry("c", *key)
                assert held is not None and held.version >= v, (writer, v, key, vv)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_interleaving_and_duplication_converges(program):
    nodes = [UsageState(KEYS[i]) for i in range(N)]
    sent: list[tuple[str, object]] = []  # every message ever sent, for replays
    history = {k.did: [] for k in KEYS[:N]}
    for op in program:
        kind = op[0]
        if kind == "local":
            _, i, member, month, name, amount = op
            e = nodes[i].apply_local("c", member, month, **{name: amount})
            history[nodes[i].did].append((e.version, e.key))
        elif kind == "replay":
            if sent:
                _, dst, pick = op
                mkind, msg = sent[pick % len(sent)]
                if mkind == "delta":
                    nodes[dst].merge_delta(msg, now_ms=NOW, retention_ms=RETENTION_MS)
                else:
                    nodes[dst].merge(msg, now_ms=NOW, retention_ms=RETENTION_MS)
        else:
            _, src, dst, pick = op
            if src == dst:
                continue
            if kind == "delta":
                d = nodes[src].delta("c", nodes[dst].version_vector("c"))
                d = UsageDelta.from_wire(cbor2.loads(cbor2.dumps(d.to_wire(), canonical=True)))
                r = nodes[dst].merge_delta(d, now_ms=NOW, retention_ms=RETENTION_MS)
                sent.append(("delta", d))
            else:
                items = nodes[src].delta_since("c", {})
                if kind == "gossip_one" and items:
                    items = [items[pick % len(items)]]
                wire = [i.to_wire() for i in items]
                r = nodes[dst].merge(wire, now_ms=NOW, retention_ms=RETENTION_MS)
                sent.append(("entries", wire))
            assert r.rejected == []
        for n in nodes:
            _check_watermarks_are_honest(n, history)
    # then a few anti-entropy rounds between every pair
    for _ in range(2):
        for a in range(N):
            for b in range(N):
                if a != b:
                    d = nodes[a].delta("c", nodes[b].version_vector("c"))
                    assert nodes[b].merge_delta(d, now_ms=NOW, retention_ms=RETENTION_MS).rejected == []
    digests = {n.digest("c") for n in nodes}
    views = {tuple(_view(n)) for n in nodes}
    assert len(digests) == 1 and len(views) == 1
    vvs = [n.version_vector("c") for n in nodes]
    assert all(vv == vvs[0] for vv in vvs)
    # the merged state is exactly each writer's own entries
    truth = sorted(e for i, n in enumerate(nodes) for e in _view(n) if e[1][2] == KEYS[i].did)
    assert _view(nodes[0]) == truth
    for m in MEMBERS:
        totals = {tuple(vars_(n.totals("c", m, MONTH))) for n in nodes}
        assert len(totals) == 1


def vars_(t):
    return [getattr(t, f) for f in COUNTER_FIELDS]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from(MEMBERS), st.integers(1, 9)), max_size=12),
       st.randoms(use_true_random=False))
def test_merge_order_does_not_matter(writes, rnd):
    writers = [UsageState(KEYS[0]), UsageState(KEYS[1])]
    for w, member, amount in writes:
        writers[w].apply_local("c", member, MONTH, cpu_ms=amount, tasks_completed=1)
    items = [s for w in writers for s in w.delta_since("c", {})]
    a, b = UsageState(KEYS[2]), UsageState(KEYS[3])
    a.merge(items, now_ms=NOW, retention_ms=RETENTION_MS)
    shuffled = items + items[: len(items) // 2]
    rnd.shuffle(shuffled)
    b.merge(shuffled, now_ms=NOW, retention_ms=RETENTION_MS)
    assert a.digest("c") == b.digest("c")
    assert _view(a) == _view(b)


def test_watermark_waits_for_a_gap_then_a_delta_closes_it():
    w, r = UsageState(KEYS[0]), UsageState(KEYS[1])
    w.apply_local("c", "m1", MONTH, cpu_ms=1)  # v1
    w.apply_local("c", "m2", MONTH, cpu_ms=1)  # v2
    w.apply_local("c", "m2", MONTH, cpu_ms=1)  # v3 supersedes v2
    latest = w.delta_since("c", {})
    v3 = [s for s in latest if s.entry.version == 3]
    r.merge(v3, now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c").get(w.did, 0) == 0  # v1 may be missing: not vouched for
    v1 = [s for s in latest if s.entry.version == 1]
    r.merge(v1, now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c")[w.did] == 1  # v2 was never seen (superseded)
    r.merge_delta(w.delta("c", r.version_vector("c")), now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c")[w.did] == 3
    assert r.digest("c") == w.digest("c")


def test_contiguous_gossip_raises_the_watermark_in_order_or_not():
    w, r = UsageState(KEYS[0]), UsageState(KEYS[1])
    signed = []
    for m in ["a", "b", "c"]:
        w.apply_local("c", m, MONTH, fuel=1)
        signed.append(w.delta_since("c", {})[-1])
    r.merge([signed[2], signed[1]], now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c") == {}
    r.merge([signed[0]], now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c") == {w.did: 3}


def test_delta_that_starts_above_our_watermark_does_not_vouch():
    w, r = UsageState(KEYS[0]), UsageState(KEYS[1])
    w.apply_local("c", "a", MONTH, fuel=1)
    w.apply_local("c", "b", MONTH, fuel=1)
    d = w.delta("c", {w.did: 1})  # built for a peer that had v1; we do not
    r.merge_delta(d, now_ms=NOW, retention_ms=RETENTION_MS)
    assert r.version_vector("c").get(w.did, 0) == 0
    assert r.get_entry("c", "b", MONTH, w.did).version == 2


def test_delta_after_one_update_in_10k_members_is_one_entry():
    w = UsageState(KEYS[0])
    for i in range(10_000):
        w.apply_local("c", f"did:icn:member-{i}", MONTH, cpu_ms=1)
    vv = w.version_vector("c")
    assert w.delta_since("c", vv) == []
    w.apply_local("c", "did:icn:member-42", MONTH, cpu_ms=5)
    delta = w.delta_since("c", vv)
    assert len(delta) == 1 and delta[0].entry.member == "did:icn:member-42"
    assert len(cbor2.dumps([d.to_wire() for d in delta], canonical=True)) < 400


def test_own_entries_are_signed_lazily_once_per_version():
    w = UsageState(KEYS[0])
    e = w.apply_local("c", "m", MONTH, cpu_ms=1)
    assert e.sig is None
    first = w.delta_since("c", {})[0]
    assert e.sig == first.sig and first.verify()
    assert w.delta_since("c", {})[0].sig is e.sig  # cached, not signed again
    w.apply_local("c", "m", MONTH, cpu_ms=1)
    assert e.sig is None


def test_apply_local_refuses_negative_and_empty():
    w = UsageState(KEYS[0])
    with pytest.raises(ValueError):
        w.apply_local("c", "m", MONTH, cpu_ms=-1)
    with pytest.raises(ValueError):
        w.apply_local("c", "", MONTH, cpu_ms=1)
    with pytest.raises(OverflowError):
        w.apply_local("c", "m", MONTH, cpu_ms=2**63)


def test_concurrency_spans_the_month_boundary_and_floors_at_zero():
    w = UsageState(KEYS[0])
    w.apply_local("c", "m", PREV, claimed=2)
    w.apply_local("c", "m", PREV, released=1)
    w.apply_local("c", "m", MONTH, claimed=1)
    assert w.concurrent("c", "m", MONTH) == 2
    other = UsageState(KEYS[1])
    other.apply_local("c", "m", MONTH, released=3)  # more releases than claims in a month
    w.merge(other.delta_since("c", {}), now_ms=NOW, retention_ms=RETENTION_MS)
    assert w.concurrent("c", "m", MONTH) == 1
    assert w.member_usage("c", "m", MONTH).concurrent_tasks == 1
    assert w.members("c", MONTH) == ["m"]
    assert w.members("nope", MONTH) == [] and w.totals("nope", "m", MONTH).cpu_ms == 0


def test_empty_reads():
    s = UsageState(KEYS[0])
    assert s.coops() == [] and s.version_vector("x") == {} and s.delta_since("x", {}) == []
    assert s.digest("x") == UsageState(KEYS[1]).digest("y")
    assert s.get_entry("x", "m", MONTH, s.did) is None and s.own_seq("x") == 0
    assert s.entries("x") == [] and s.max_versions("x") == {}


def test_foreign_entry_without_signature_cannot_be_sent():
    s = UsageState(KEYS[0])
    s.load_entry(UsageEntry("c", "m", MONTH, KEYS[1].did, 1, cpu_ms=1))
    with pytest.raises(ValueError):
        s.delta_since("c", {})


def test_prune_drops_old_months_but_never_the_current_one():
    s = UsageState(KEYS[0])
    for month in ["2024-10", "2024-12", PREV, MONTH]:
        s.apply_local("c", "m", month, cpu_ms=1)
    dropped = s.prune(NOW, RETENTION_MS)
    assert dropped == [("c", "2024-10")]
    assert s.prune(NOW, 0) == [("c", "2024-12"), ("c", PREV)]
    assert [e.month for e in s.entries("c")] == [MONTH]
    fresh = UsageState(KEYS[0])
    fresh.load_entry(s.entries("c")[0].copy())
    assert s.digest("c") == fresh.digest("c")


@given(st.integers(min_value=0, max_value=4_000_000_000_000), st.integers(0, 400))
def test_prune_never_drops_the_current_month(now, days):
    from icn_p2p.core.clock import month_key

    s = UsageState(KEYS[0])
    cur = month_key(now)
    s.apply_local("c", "m", cur, cpu_ms=1)
    s.apply_local("c", "m", previous_month(cur), cpu_ms=1)
    s.prune(now, days * DAY)
    assert s.get_entry("c", "m", cur, s.did) is not None
    prev_kept = s.get_entry("c", "m", previous_month(cur), s.did) is not None
    # the previous month stays exactly while its end is within the retention
    from icn_p2p.core.clock import month_start_ms
    assert prev_kept == (month_start_ms(cur) > now - days * DAY)


def test_signed_entry_roundtrip():
    w = UsageState(KEYS[0])
    w.apply_local("c", "m", MONTH, cpu_ms=7, credits_earned=3)
    s = w.delta_since("c", {})[0]
    back = SignedUsageEntry.from_wire(cbor2.loads(cbor2.dumps(s.to_wire(), canonical=True)))
    assert back.entry.counters() == s.entry.counters() and back.verify()
    again = SignedUsageEntry.sign(back.entry, KEYS[0])
    assert again.verify()
