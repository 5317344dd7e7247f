"""Durable replay floors: per signer, the highest seq this node has accepted.

Synchronous SQLite (WAL). Async callers run it through
``trio.to_thread.run_sync``; a lock makes one store safe to share between the
event-loop thread and worker threads.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

__all__ = ["FloorStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_floors (
    signer TEXT PRIMARY KEY,
    floor INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_floors_updated ON replay_floors (updated_ms);
"""


class FloorStore:
    """signer -> floor seq, written in batches; a floor only ever rises."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def get(self, signer: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT floor FROM replay_floors WHERE signer = ?", (signer,)
            ).fetchone()
        return None if row is None else row[0]

    def load(self, limit: int, since_ms: int | None = None) -> dict[str, int]:
        """The ``limit`` most recently updated floors (updated at or after ``since_ms``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT signer, floor FROM replay_floors WHERE updated_ms >= ?"
                " ORDER BY updated_ms DESC LIMIT ?",
                (since_ms if since_ms is not None else -(2**63), limit),
            ).fetchall()
        return dict(rows)

    def put_many(self, floors: Iterable[tuple[str, int, int]]) -> int:
        """Upsert (signer, floor, updated_ms) rows in one transaction; floors never go down."""
        rows = list(floors)
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO replay_floors (signer, floor, updated_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT (signer) DO UPDATE SET"
                    " floor = max(floor, excluded.floor),"
                    " updated_ms = max(updated_ms, excluded.updated_ms)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        log.debug("replay floors flushed count=%d path=%s", len(rows), self.path)
        return len(rows)

    def prune(self, before_ms: int) -> int:
        """Delete floors last updated before ``before_ms`` (the stale rule covers them)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM replay_floors WHERE updated_ms < ?", (before_ms,))
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "FloorStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
