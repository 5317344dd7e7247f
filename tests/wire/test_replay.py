import sqlite3

import pytest

from icn_p2p.identity.keys import NodeKey
from icn_p2p.wire import FloorStore, Reason, ReplayGuard, open_envelope, seal

NOW = 1_700_000_000_000
A = NodeKey(b"\x01" * 32)
B = NodeKey(b"\x02" * 32)
C = NodeKey(b"\x03" * 32)


def env(key=A, seq=1, ts=NOW, payload=None):
    return open_envelope(seal(key, "t", payload, seq=seq, ts=ts))


def test_duplicate_is_a_replay_and_check_changes_nothing():
    g = ReplayGuard()
    e = env(seq=10)
    assert g.check(e, NOW) is None
    assert g.check(e, NOW) is None  # check is pure
    assert g.tracked_signers == 0
    assert g.accept(e, NOW) is None
    assert g.check(e, NOW) == Reason.REPLAY
    assert g.accept(e, NOW) == Reason.REPLAY
    assert g.accept(env(seq=11), NOW) is None
    assert g.floor_of(A.did) == 11 and g.floor_of(B.did) == -1


def test_out_of_order_within_window_accepted_once():
    g = ReplayGuard(window=4)
    for seq in (100, 103):
        assert g.accept(env(seq=seq), NOW) is None
    assert g.accept(env(seq=101), NOW) is None
    assert g.accept(env(seq=101), NOW) == Reason.REPLAY
    assert g.accept(env(seq=102), NOW) is None
    assert g.accept(env(seq=102), NOW) == Reason.REPLAY


def test_window_counts_messages_not_seq_values():
    # Sealer seqs are microsecond clocks: large gaps must not shrink the window
    g = ReplayGuard(window=8)
    assert g.accept(env(seq=1_000_000), NOW) is None
    assert g.accept(env(seq=9_000_000), NOW) is None
    assert g.accept(env(seq=5_000_000), NOW) is None


def test_below_window_is_replay():
    g = ReplayGuard(window=3)
    for seq in (10, 20, 30, 40):  # 10 falls out of the window and becomes the floor
        assert g.accept(env(seq=seq), NOW) is None
    assert g.accept(env(seq=5), NOW) == Reason.REPLAY  # never seen, but below the window
    assert g.accept(env(seq=10), NOW) == Reason.REPLAY
    assert g.accept(env(seq=15), NOW) is None  # above the floor, within the window
    assert g.accept(env(seq=12), NOW) == Reason.REPLAY  # 15 was the lowest of 4: it became the floor
    assert g.check(env(seq=25), NOW) is None


def test_signers_are_independent():
    g = ReplayGuard()
    assert g.accept(env(A, seq=5), NOW) is None
    assert g.accept(env(B, seq=5), NOW) is None
    assert g.accept(env(B, seq=5), NOW) == Reason.REPLAY


def test_future_and_stale():
    g = ReplayGuard(skew_ms=30_000, max_age_ms=600_000)
    assert g.accept(env(seq=1, ts=NOW + 30_001), NOW) == Reason.FUTURE
    assert g.accept(env(seq=1, ts=NOW + 30_000), NOW) is None
    assert g.accept(env(seq=2, ts=NOW - 600_001), NOW) == Reason.STALE
    assert g.check(env(seq=3, ts=NOW - 600_001), NOW) == Reason.STALE
    assert g.check(env(seq=3, ts=NOW + 40_000), NOW) == Reason.FUTURE
    assert g.accept(env(seq=3, ts=NOW - 600_000), NOW) is None
    assert g.floor_of(A.did) == 3


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ReplayGuard(window=0)
    with pytest.raises(ValueError):
        ReplayGuard(max_signers=0)


def test_lru_eviction_without_store_relies_on_staleness():
    g = ReplayGuard(max_signers=2)
    for key in (A, B, C):
        assert g.accept(env(key, seq=1), NOW) is None
    assert g.tracked_signers == 2
    # A was evicted and there is no durable floor: only the stale rule protects it
    assert g.check(env(A, seq=1), NOW) is None
    assert g.check(env(A, seq=1, ts=NOW), NOW + 600_001) == Reason.STALE


def test_lru_eviction_is_safe_with_a_floor_store(tmp_path):
    with FloorStore(tmp_path / "floors.db") as store:
        g = ReplayGuard(max_signers=2, floor_store=store)
        assert g.accept(env(A, seq=10), NOW) is None
        assert g.accept(env(A, seq=12), NOW) is None
        for key in (B, C):  # evicts A before any flush
            assert g.accept(env(key, seq=1), NOW) is None
        assert g.tracked_signers == 2
        assert g.accept(env(A, seq=12), NOW) == Reason.REPLAY  # from the unflushed floor
        assert g.accept(env(A, seq=11), NOW) == Reason.REPLAY  # out-of-order after eviction: safe side
        assert g.flush() == 3
        assert g.pending_floors == 0
        assert g.accept(env(B, seq=2), NOW) is None
        assert g.accept(env(C, seq=2), NOW) is None  # evicts A again; its floor is on disk now
        assert g.accept(env(A, seq=12), NOW) == Reason.REPLAY
        assert g.check(env(A, seq=10), NOW) == Reason.REPLAY
        assert g.accept(env(A, seq=13), NOW) is None


def test_lookups_during_a_flush_see_the_batch_in_flight(tmp_path):
    class SlowStore(FloorStore):
        def put_many(self, floors):
            rows = list(floors)
            seen.append(guard.check(env(A, seq=7), NOW))  # mid-flush, A is only in the batch
            return super().put_many(rows)

    seen = []
    store = SlowStore(tmp_path / "f.db")
    guard = ReplayGuard(max_signers=1, floor_store=store)
    guard.accept(env(A, seq=7), NOW)
    guard.accept(env(B, seq=1), NOW)  # evicts A
    assert guard.flush() == 2
    assert seen == [Reason.REPLAY]
    store.close()


def test_persisted_floor_survives_reopen(tmp_path):
    path = tmp_path / "sub" / "floors.db"
    store = FloorStore(path)
    g = ReplayGuard(floor_store=store)
    for seq in (5, 9, 7):
        assert g.accept(env(A, seq=seq), NOW) is None
    assert g.accept(env(B, seq=3), NOW) is None
    assert g.flush() == 2
    assert g.flush() == 0  # nothing pending
    store.close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(db.execute("SELECT signer, floor FROM replay_floors")) == {A.did: 9, B.did: 3}

    store = FloorStore(path)
    g2 = ReplayGuard(floor_store=store)
    assert g2.tracked_signers == 2
    assert g2.accept(env(A, seq=9), NOW) == Reason.REPLAY
    assert g2.accept(env(A, seq=8), NOW) == Reason.REPLAY  # below the floor after a restart
    assert g2.accept(env(A, seq=10), NOW) is None
    assert g2.accept(env(B, seq=3), NOW) == Reason.REPLAY
    store.close()


def test_restart_loads_at_most_max_signers_and_reads_the_rest_on_demand(tmp_path):
    with FloorStore(tmp_path / "f.db") as store:
        store.put_many([(A.did, 50, NOW - 10), (B.did, 60, NOW), (C.did, 70, NOW - 5)])
        g = ReplayGuard(floor_store=store, max_signers=2)
        assert g.tracked_signers == 2  # the two most recently updated
        assert g.check(env(A, seq=50), NOW) == Reason.REPLAY  # read from SQLite on a miss
        assert g.accept(env(A, seq=51), NOW) is None


def test_floor_store_never_lowers_a_floor(tmp_path):
    with FloorStore(tmp_path / "f.db") as store:
        assert store.put_many([]) == 0
        store.put_many([(A.did, 10, 100)])
        store.put_many([(A.did, 4, 50)])
        assert store.get(A.did) == 10
        assert store.get(B.did) is None
        assert store.load(10) == {A.did: 10}
        assert store.load(10, since_ms=101) == {}
        assert store.prune(before_ms=101) == 1
        assert store.get(A.did) is None


def test_failed_flush_keeps_floors_pending(tmp_path):
    class FailingStore(FloorStore):
        fail = True

        def put_many(self, floors):
            if self.fail:
                list(floors)
                raise sqlite3.OperationalError("disk I/O error")
            return super().put_many(floors)

    store = FailingStore(tmp_path / "f.db")
    g = ReplayGuard(floor_store=store)
    g.accept(env(A, seq=5), NOW)
    with pytest.raises(sqlite3.OperationalError):
        g.flush()
    assert g.pending_floors == 1
    store.fail = False
    assert g.flush() == 1
    assert store.get(A.did) == 5
    store.close()


def test_put_many_rolls_back_on_error(tmp_path):
    with FloorStore(tmp_path / "f.db") as store:
        with pytest.raises(sqlite3.Error):
            store.put_many([(A.did, 1, 1), (B.did, None, 1)])  # NOT NULL violation
        assert store.get(A.did) is None  # the whole batch rolled back
        assert store.put_many([(A.did, 1, 1)]) == 1


def test_prune_forgets_only_signers_whose_messages_are_all_stale():
    g = ReplayGuard(skew_ms=1_000, max_age_ms=10_000)
    g.accept(env(A, seq=1), NOW)
    g.accept(env(B, seq=1, ts=NOW + 5_000), NOW + 5_000)
    assert g.prune(NOW + 11_000) == 0  # not yet max_age + skew after A's last acceptance
    assert g.prune(NOW + 11_001) == 1
    assert g.tracked_signers == 1
    # what pruning forgot cannot be replayed: it is stale
    assert g.accept(env(A, seq=1), NOW + 11_001) == Reason.STALE
