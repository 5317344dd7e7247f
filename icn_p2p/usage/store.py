"""The usage CRDT made durable in SQLite, with the in-memory merged view for reads.

Durability. The database runs in WAL mode with ``synchronous=FULL``: every
commit fsyncs the WAL, so an acknowledged update survives power loss, not only
a killed process (``NORMAL`` would survive ``kill -9`` - the OS holds the pages -
but may lose the last commits on power loss). ``FULL`` still meets the
throughput target because bulk writers use ``batch()``: one transaction, one
fsync, for many updates. A call that changes state returns only after COMMIT.

Concurrency. The store is synchronous and thread-safe: one re-entrant lock
guards the connection and the in-memory view (the node calls it from
``trio.to_thread.run_sync`` worker threads, behind a CapacityLimiter).

Signing. Own entries are signed lazily, when a delta first reads them (one
signature per version, cached in memory); peers' signatures are stored with
their entries, so deltas are served after a restart without re-signing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icn_p2p.core.clock import Clock, SystemClock, month_key
from icn_p2p.core.usage import MemberUsage
from icn_p2p.identity import NodeKey

from .crdt import (
    MS_PER_DAY,
    MergeResult,
    SignedUsageEntry,
    UsageDelta,
    UsageEntry,
    UsageRejection,
    UsageState,
    month_is_stale,
    precheck,
)
from .metrics import ENTRIES_MERGED, ENTRIES_REJECTED

log = logging.getLogger(__name__)

DB_FILENAME = "usage.sqlite3"


class StoreError(RuntimeError):
    """The database cannot be used (e.g. written by a newer version)."""


# --- schema and migrations ---------------------------------------------------------


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE entries (
            coop TEXT NOT NULL, member TEXT NOT NULL, month TEXT NOT NULL, writer TEXT NOT NULL,
            version INTEGER NOT NULL,
            cpu_ms INTEGER NOT NULL, fuel INTEGER NOT NULL, tasks_completed INTEGER NOT NULL,
            credits_spent INTEGER NOT NULL, credits_earned INTEGER NOT NULL,
            claimed INTEGER NOT NULL, released INTEGER NOT NULL,
            sig BLOB,
            PRIMARY KEY (coop, member, month, writer)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        """CREATE TABLE marks (coop TEXT NOT NULL, writer TEXT NOT NULL, wm INTEGER NOT NULL,
            PRIMARY KEY (coop, writer)) WITHOUT ROWID"""
    )
    conn.execute("CREATE TABLE own_seq (coop TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID")


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    # receipts, claims and credits already counted: what makes the tracker idempotent
    conn.execute(
        """CREATE TABLE processed (coop TEXT NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL,
            month TEXT NOT NULL, at_ms INTEGER NOT NULL,
            PRIMARY KEY (coop, kind, ref)) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX processed_month ON processed (coop, month)")
    conn.execute("CREATE INDEX entries_writer_version ON entries (coop, writer, version)")


# MIGRATIONS[n] upgrades a database at user_version n to n + 1, in one transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _v0_to_v1, 1: _v1_to_v2}
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to ``target``; each step is its own transaction."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"usage database schema v{current} is newer than this program (v{SCHEMA_VERSION})"
        )
    while current < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[current](conn)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("usage_schema_migrated from=%d to=%d", current, current + 1)
        current += 1
    return current


_ENTRY_COLS = ("coop, member, month, writer, version, cpu_ms, fuel, tasks_completed, "
               "credits_spent, credits_earned, claimed, released, sig")
_UPSERT = f"INSERT OR REPLACE INTO entries ({_ENTRY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"


def _row(e: UsageEntry) -> tuple[Any, ...]:
    # own entries keep no signature on disk: it is made again lazily after a restart
    return (e.coop_id, e.member, e.month, e.writer, e.version, e.cpu_ms, e.fuel,
            e.tasks_completed, e.credits_spent, e.credits_earned, e.claimed, e.released,
            None if e.sig is None else e.sig)


class UsageStore:
    """Durable replicated usage of every coop this node serves."""

    def __init__(
        self,
        path: str | Path,
        key: NodeKey,
        *,
        retention_days: float = 90,
        clock: Clock | None = None,
        synchronous: str = "FULL",
    ) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / DB_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous is FULL, EXTRA or NORMAL")
        self.path = path
        self.key = key
        self.did = key.did
        self.clock: Clock = clock or SystemClock()
        self.retention_days = retention_days
        self.retention_ms = int(retention_days * MS_PER_DAY)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA busy_timeout=5000")
        migrate(self._conn)
        self.state = UsageState(key, journal=True)
        self._load()

    # -- lifecycle --

    def _load(self) -> None:
        state = UsageState(self.key, journal=True)
        n = 0
        for row in self._conn.execute(f"SELECT {_ENTRY_COLS} FROM entries"):
            e = UsageEntry(*row[:12], sig=row[12])
            state.load_entry(e)
            n += 1
        seqs = dict(self._conn.execute("SELECT coop, seq FROM own_seq"))
        wms: dict[str, dict[str, int]] = {}
        for coop, writer, wm in self._conn.execute("SELECT coop, writer, wm FROM marks"):
            wms.setdefault(coop, {})[writer] = wm
        for coop in set(seqs) | set(wms):
            state.load_marks(coop, seqs.get(coop, 0), wms.get(coop, {}))
        self.state = state
        log.info("usage_store_opened path=%s entries=%d coops=%d", self.path, n, len(state.coops()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "UsageStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --

    @contextmanager
    def batch(self) -> Iterator["UsageStore"]:
        """Many updates in one transaction; returns only after COMMIT. Nestable.

        If anything inside raises, the transaction rolls back and the in-memory
        view is reloaded from the database, so nothing half-done stays visible.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
                self._flush()
                self._conn.execute("COMMIT")
            except BaseException:
                self._depth = 0
                try:
                    self._conn.execute("ROLLBACK")
                finally:
                    self.state.drop_changes()
                    self._load()
                raise
            finally:
                self._depth = 0

    def _flush(self) -> None:
        entries, seqs, marks = self.state.take_changes()
        if entries:
            self._conn.executemany(_UPSERT, [_row(e) for e in entries])
        if seqs:
            self._conn.executemany(
                "INSERT OR REPLACE INTO own_seq (coop, seq) VALUES (?, ?)",
                [(c, self.state.own_seq(c)) for c in seqs],
            )
        if marks:
            rows = []
            for coop, writer in marks:
                wm = self.state.version_vector(coop).get(writer)
                if wm is not None:
                    rows.append((coop, writer, wm))
            self._conn.executemany(
                "INSERT OR REPLACE INTO marks (coop, writer, wm) VALUES (?, ?, ?)", rows
            )

    # -- local writes --

    def increment(
        self, coop_id: str, member: str, *, month: str | None = None, now_ms: int | None = None,
        cpu_ms: int = 0, fuel: int = 0, tasks_completed: int = 0, credits_spent: int = 0,
        credits_earned: int = 0, claimed: int = 0, released: int = 0,
    ) -> UsageEntry:
        """Add to this node's entry for (coop, member, month); committed on return."""
        if month is None:
            month = month_key(self.clock.now_ms() if now_ms is None else now_ms)
        with self.batch():
            e = self.state.apply_local(
                coop_id, member, month, cpu_ms=cpu_ms, fuel=fuel, tasks_completed=tasks_completed,
                credits_spent=credits_spent, credits_earned=credits_earned, claimed=claimed,
                released=released,
            )
            return e.copy()

    def apply_local_many(self, updates: Iterable[Mapping[str, Any]]) -> int:
        """Apply many ``increment`` keyword sets in one transaction; returns how many."""
        n = 0
        with self.batch():
            for u in updates:
                self.increment(**u)
                n += 1
        return n

    def mark_processed(self, coop_id: str, kind: str, ref: str, month: str, now_ms: int) -> bool:
        """Remember (coop, kind, ref) once; False if it was already there. Use inside
        ``batch()`` together with the update it guards, so both commit or neither."""
        with self.batch():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO processed (coop, kind, ref, month, at_ms) VALUES (?,?,?,?,?)",
                (coop_id, kind, ref, month, now_ms),
            )
            return cur.rowcount == 1

    def processed_month(self, coop_id: str, kind: str, ref: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT month FROM processed WHERE coop=? AND kind=? AND ref=?", (coop_id, kind, ref)
            ).fetchone()
            return row[0] if row else None

    # -- replication --

    def own_signed(self, coop_id: str, member: str, month: str) -> SignedUsageEntry | None:
        """This node's entry for (coop, member, month), signed as it travels."""
        with self._lock:
            return self.state.own_signed(coop_id, member, month)

    def version_vector(self, coop_id: str) -> dict[str, int]:
        with self._lock:
            return self.state.version_vector(coop_id)

    def delta_since(self, coop_id: str, vv: Mapping[str, int]) -> list[SignedUsageEntry]:
        with self._lock:
            return self.state.delta_since(coop_id, vv)

    def delta(self, coop_id: str, vv: Mapping[str, int]) -> UsageDelta:
        """``delta_since`` plus the vectors that let the receiver raise its watermarks."""
        with self._lock:
            return self.state.delta(coop_id, vv)

    def digest(self, coop_id: str) -> bytes:
        with self._lock:
            return self.state.digest(coop_id)

    def coops(self) -> list[str]:
        with self._lock:
            return self.state.coops()

    def merge(self, entries: Iterable[Any]) -> MergeResult:
        """Merge signed entries (objects or wire dicts); bad ones are refused with a reason."""
        return self.merge_batches([list(entries)])

    def merge_delta(self, delta: UsageDelta | Mapping[str, Any]) -> MergeResult:
        if not isinstance(delta, UsageDelta):
            try:
                delta = UsageDelta.from_wire(delta)
            except UsageRejection as exc:
                result = MergeResult(rejected=[(exc.reason, exc.detail)])
                self._count(result)
                return result
        return self.merge_batches([delta])

    def merge_batches(self, batches: Iterable[list[Any] | UsageDelta]) -> MergeResult:
        """Merge batches in one transaction: lists of entries, and deltas whose
        watermarks rise once their entries are in (see ``UsageState.merge_delta``).

        Parsing and signature checks run before the lock is taken, so a large
        merge does not hold up local writes for its verification time.
        """
        checked: list[list[Any] | UsageDelta] = []
        for batch in batches:
            if isinstance(batch, UsageDelta):
                checked.append(UsageDelta(batch.coop_id, batch.since, batch.through,
                                          [precheck(item, self.state) for item in batch.entries]))
            else:
                checked.append([precheck(item, self.state) for item in batch])
        result = MergeResult()
        with self.batch():
            now_ms = self.clock.now_ms()
            for batch in checked:
                if isinstance(batch, UsageDelta):
                    part = self.state.merge_delta(batch, now_ms=now_ms, retention_ms=self.retention_ms)
                else:
                    part = self.state.merge(batch, now_ms=now_ms, retention_ms=self.retention_ms)
                result.accepted += part.accepted
                result.unchanged += part.unchanged
                result.rejected.extend(part.rejected)
        self._count(result)
        return result

    def _count(self, result: MergeResult) -> None:
        if result.accepted:
            ENTRIES_MERGED.labels("accepted").inc(result.accepted)
        if result.unchanged:
            ENTRIES_MERGED.labels("unchanged").inc(result.unchanged)
        for reason, detail in result.rejected:
            ENTRIES_REJECTED.labels(reason).inc()
            log.warning("usage_entry_rejected reason=%s detail=%s", reason, detail)

    # -- reads --

    def member_usage(self, coop_id: str, member: str, now_ms: int | None = None) -> MemberUsage:
        month = month_key(self.clock.now_ms() if now_ms is None else now_ms)
        with self._lock:
            return self.state.member_usage(coop_id, member, month)

    def members(self, coop_id: str, now_ms: int | None = None) -> list[str]:
        month = month_key(self.clock.now_ms() if now_ms is None else now_ms)
        with self._lock:
            return self.state.members(coop_id, month)

    def entries(self, coop_id: str) -> list[UsageEntry]:
        with self._lock:
            return [e.copy() for e in self.state.entries(coop_id)]

    # -- retention --

    def prune(self, now_ms: int | None = None) -> list[tuple[str, str]]:
        """Drop months past retention, never the current month; returns (coop, month)."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        with self.batch():
            dropped = self.state.prune(now, self.retention_ms)
            self._conn.executemany("DELETE FROM entries WHERE coop=? AND month=?", dropped)
            old = [
                (c, m) for c, m in self._conn.execute("SELECT DISTINCT coop, month FROM processed")
                if month_is_stale(m, now, self.retention_ms)
            ]
            self._conn.executemany("DELETE FROM processed WHERE coop=? AND month=?", old)
        if dropped:
            log.info("usage_pruned months=%d now=%s", len(dropped), month_key(now))
        return dropped
