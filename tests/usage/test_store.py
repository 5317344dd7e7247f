"""The SQLite store: durability, migrations, batches, threads, restore from peers."""

import sqlite3
import threading

import pytest

from icn_p2p.usage import SCHEMA_VERSION, StoreError, UsageDelta, UsageState, UsageStore
from icn_p2p.usage.store import DB_FILENAME, migrate

from .helpers import KEYS, MONTH, NOW, PREV


def view(store):
    """Everything but our own signatures, which are made lazily and kept only in memory."""
    return sorted((e.coop_id, e.key, e.version, e.counters(), e.sig if e.writer != store.did else None)
                  for c in store.coops() for e in store.entries(c))


def test_reopen_finds_everything(make_store, clock):
    a = make_store("a.db", KEYS[0])
    peer = UsageState(KEYS[1])
    peer.apply_local("c", "m", MONTH, cpu_ms=7)
    a.increment("c", "m", cpu_ms=5, tasks_completed=1)
    a.increment("d", "m", month=PREV, fuel=9)
    assert a.merge(peer.delta_since("c", {})).accepted == 1
    before = (view(a), a.digest("c"), a.version_vector("c"), a.version_vector("d"), a.coops())
    a.close()
    b = make_store("a.db", KEYS[0])
    assert (view(b), b.digest("c"), b.version_vector("c"), b.version_vector("d"), b.coops()) == before
    # the peer's signature came back from disk: its entry is served without its key
    served = {s.entry.writer: s for s in b.delta_since("c", {})}
    assert served[peer.did].verify() and served[KEYS[0].did].verify()
    # and our sequence number continues where it stopped
    assert b.increment("c", "m", cpu_ms=1).version == a.state.own_seq("c") + 1 == 2


def test_store_in_a_directory_and_journal_mode(tmp_path, clock):
    s = UsageStore(tmp_path, KEYS[0], clock=clock)
    assert s.path == tmp_path / DB_FILENAME
    mode = s._conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = s._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert mode == "wal" and sync == 2  # FULL
    s.close()
    with pytest.raises(ValueError):
        UsageStore(tmp_path, KEYS[0], clock=clock, synchronous="OFF")


def test_empty_database_is_created_at_the_current_schema(tmp_path, clock):
    path = tmp_path / "v0.db"
    sqlite3.connect(path).close()  # a v0 (empty) file
    s = UsageStore(path, KEYS[0], clock=clock)
    assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    s.close()


def test_older_schema_is_upgraded_in_place(tmp_path, clock):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.execute(
        "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ("c", "m", MONTH, KEYS[0].did, 4, 3_600_000, 10, 1, 2, 0, 1, 0, None),
    )
    conn.execute("INSERT INTO own_seq VALUES ('c', 4)")
    conn.execute("INSERT INTO marks VALUES ('c', ?, 4)", (KEYS[0].did,))
    conn.close()
    s = UsageStore(path, KEYS[0], clock=clock)
    assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    u = s.member_usage("c", "m")
    assert u.cpu_hours_this_month == 1.0 and u.concurrent_tasks == 1 and u.fuel_this_month == 10
    assert s.version_vector("c") == {KEYS[0].did: 4}
    assert s.increment("c", "m", fuel=1).version == 5
    assert s.mark_processed("c", "exec", "t", MONTH, NOW)  # the v2 table exists
    s.close()


def test_newer_schema_is_refused(tmp_path, clock):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError):
        UsageStore(path, KEYS[0], clock=clock)


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    from icn_p2p.usage import store as store_mod

    def broken(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    monkeypatch.setitem(store_mod.MIGRATIONS, 1, broken)
    with pytest.raises(RuntimeError):
        migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None


def test_batch_commits_once_and_a_failed_batch_leaves_nothing(make_store):
    a = make_store("a.db", KEYS[0])
    a.apply_local_many({"coop_id": "c", "member": f"m{i}", "cpu_ms": 1} for i in range(100))
    assert len(a.entries("c")) == 100
    before = (view(a), a.digest("c"), a.version_vector("c"))
    with pytest.raises(RuntimeError):
        with a.batch():
            a.increment("c", "m1", cpu_ms=50)
            a.increment("c", "new", cpu_ms=50)
            assert a.mark_processed("c", "exec", "t1", MONTH, NOW)
            raise RuntimeError("power cut, simulated")
    assert (view(a), a.digest("c"), a.version_vector("c")) == before
    assert a.processed_month("c", "exec", "t1") is None
    a.close()
    b = make_store("a.db", KEYS[0])
    assert (view(b), b.digest("c"), b.version_vector("c")) == before


def test_threads_share_one_store(make_store):
    a = make_store("a.db", KEYS[0])
    peer = UsageState(KEYS[1])

    def writer(n):
        for i in range(50):
            a.increment("c", f"m{n}", cpu_ms=1)

    def syncer():
        for i in range(50):
            peer.apply_local("c", "p", MONTH, fuel=1)
            a.merge(peer.delta_since("c", a.version_vector("c")))
            a.digest("c")
            a.delta_since("c", {})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=syncer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a.member_usage("c", f"m{n}").cpu_hours_this_month for n in range(4)) * 3_600_000 == pytest.approx(200)
    assert a.state.own_seq("c") == 200
    assert a.version_vector("c") == {KEYS[0].did: 200, KEYS[1].did: 50}
    before = view(a)
    a.close()
    assert view(make_store("a.db", KEYS[0])) == before


def test_lost_database_is_restored_from_a_peer_without_reusing_versions(make_store):
    a = make_store("a.db", KEYS[0])
    b = make_store("b.db", KEYS[1])
    for i in range(3):
        a.increment("c", f"m{i}", cpu_ms=10)
    b.merge_delta(a.delta("c", b.version_vector("c")))
    a.close()
    a2 = make_store("a-new.db", KEYS[0])  # same key, empty disk
    r = a2.merge_delta(b.delta("c", a2.version_vector("c")))
    assert r.accepted == 3 and a2.version_vector("c") == {KEYS[0].did: 3}
    assert a2.increment("c", "m0", cpu_ms=1).version == 4
    assert b.merge_delta(a2.delta("c", b.version_vector("c"))).accepted == 1
    assert a2.digest("c") == b.digest("c")
    a2.close()
    assert make_store("a-new.db", KEYS[0]).increment("c", "m9", fuel=1).version == 5


def test_prune_is_durable_and_keeps_current_months(make_store, clock):
    a = make_store("a.db", KEYS[0])
    for month in ["2024-10", "2024-12", PREV, MONTH]:
        a.increment("c", "m", month=month, cpu_ms=1)
        assert a.mark_processed("c", "exec", f"t-{month}", month, NOW)
    assert a.prune() == [("c", "2024-10")]
    assert a.processed_month("c", "exec", "t-2024-10") is None
    assert a.processed_month("c", "exec", "t-2024-12") == "2024-12"
    vv = a.version_vector("c")
    a.close()
    b = make_store("a.db", KEYS[0])
    assert sorted(e.month for e in b.entries("c")) == ["2024-12", PREV, MONTH]
    assert b.version_vector("c") == vv  # pruning never moves a version vector back
    short = make_store("a.db", KEYS[0], retention_days=1)
    assert short.prune() == [("c", "2024-12"), ("c", PREV)]
    assert [e.month for e in short.entries("c")] == [MONTH]
    assert short.increment("c", "m", cpu_ms=1).version == 5


def test_mark_processed_is_once(make_store):
    a = make_store("a.db", KEYS[0])
    assert a.mark_processed("c", "exec", "t", MONTH, NOW)
    assert not a.mark_processed("c", "exec", "t", MONTH, NOW)
    assert a.mark_processed("c", "claim", "t", MONTH, NOW)


def test_context_manager_closes(tmp_path, clock):
    with UsageStore(tmp_path / "x.db", KEYS[0], clock=clock) as s:
        s.increment("c", "m", cpu_ms=1)
    with pytest.raises(sqlite3.ProgrammingError):
        s._conn.execute("SELECT 1")


def test_gossiped_batches_merge_in_one_transaction_and_a_vouched_span_raises_the_watermark(make_store):
    # the writer changes m0 twice between two gossips: its version 1 never travels
    writer = UsageState(KEYS[1])
    writer.apply_local("c", "m0", MONTH, cpu_ms=1)
    writer.apply_local("c", "m0", MONTH, cpu_ms=1)
    writer.apply_local("c", "m1", MONTH, cpu_ms=1)
    latest = writer.delta_since("c", {})
    assert [s.entry.version for s in latest] == [2, 3]
    plain, vouched = make_store("plain.db", KEYS[0]), make_store("vouched.db", KEYS[0])
    assert plain.merge_batches([latest]).accepted == 2
    assert plain.version_vector("c").get(writer.did, 0) == 0  # a gap at version 1: sync would resend
    delta = UsageDelta("c", {writer.did: 0}, {writer.did: 3}, latest)
    assert vouched.merge_batches([delta]).accepted == 2
    assert vouched.version_vector("c")[writer.did] == 3
    assert vouched.digest("c") == plain.digest("c")


def test_a_vouched_span_above_a_gap_or_with_a_refused_entry_raises_nothing(make_store):
    writer = UsageState(KEYS[1])
    for _ in range(3):
        writer.apply_local("c", "m0", MONTH, cpu_ms=1)
    (latest,) = writer.delta_since("c", {})
    store = make_store("a.db", KEYS[0])
    above = UsageDelta("c", {writer.did: 1}, {writer.did: 3}, [latest])  # we never held version 1
    assert store.merge_batches([above]).accepted == 1
    assert store.version_vector("c").get(writer.did, 0) == 0
    forged = latest.to_wire()
    forged["entry"]["cpu_ms"] += 1  # no longer what the writer signed
    other = make_store("b.db", KEYS[0])
    result = other.merge_batches([UsageDelta("c", {writer.did: 0}, {writer.did: 3}, [forged])])
    assert result.accepted == 0 and result.rejected
    assert other.version_vector("c").get(writer.did, 0) == 0
