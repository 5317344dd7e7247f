"""Durable task records on the submitting node (SQLite, WAL).

Each change is committed before ``save`` returns, so a restarted node knows
every task it admitted, where it was placed and how it ended. WAL with
``synchronous=NORMAL``: a committed record survives the process being killed
(the OS holds the pages); only a power cut can take the last transitions,
which the submitter would then see as a task that failed at restart. The
replicated usage and the credit ledger, which must survive even that, sync
every commit. Synchronous and thread-safe: the node calls it through
``trio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from .lifecycle import FINAL_STATES, TaskRecord, TaskState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    coop_id TEXT NOT NULL,
    submitter TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_by_coop ON tasks(coop_id, updated_at_ms);
"""


# A final record is never written over: records reach the store on more than one
# path (the record writer's batches, a finished task's own commit), so a batch
# that left with an older state of a task must not undo its end.
_FINAL = ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATES, key=lambda s: s.value))
_UPSERT = ("INSERT INTO tasks(task_id, coop_id, submitter, state, updated_at_ms, record)"
           " VALUES (?,?,?,?,?,?) ON CONFLICT(task_id) DO UPDATE SET state=excluded.state,"
           " updated_at_ms=excluded.updated_at_ms, record=excluded.record"
           f" WHERE tasks.state NOT IN ({_FINAL})")


class TaskStore:
    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"task store schema {version} is newer than this program ({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, record: TaskRecord) -> None:
        self.save_many([record])

    def save_many(self, records: list[TaskRecord]) -> None:
        """Write records in one transaction (each replaces the task's earlier record)."""
        rows = [(r.task_id, r.coop_id, r.submitter, r.state.value, r.updated_at_ms, r.model_dump_json())
                for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return TaskRecord.model_validate_json(row[0]) if row else None

    def known(self, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` have a record (one query for a whole batch of submissions)."""
        if not task_ids:
            return set()
        marks = ",".join("?" * len(task_ids))
        with self._lock:
            rows = self._db.execute(f"SELECT task_id FROM tasks WHERE task_id IN ({marks})", task_ids).fetchall()
        return {r[0] for r in rows}

    def list(self, *, coop_id: str | None = None, state: TaskState | None = None,
             limit: int = 100) -> list[TaskRecord]:
        sql, args = "SELECT record FROM tasks WHERE 1=1", []
        if coop_id is not None:
            sql += " AND coop_id=?"
            args.append(coop_id)
        if state is not None:
            sql += " AND state=?"
            args.append(state.value)
        sql += " ORDER BY updated_at_ms DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [TaskRecord.model_validate_json(r[0]) for r in rows]

    def unfinished(self) -> list[TaskRecord]:
        """Tasks a restarted node must pick up again."""
        finals = tuple(s.value for s in FINAL_STATES)
        marks = ",".join("?" * len(finals))
        with self._lock:
            rows = self._db.execute(
                f"SELECT record FROM tasks WHERE state NOT IN ({marks}) ORDER BY updated_at_ms", finals
            ).fetchall()
        return [TaskRecord.model_validate_json(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {state: n for state, n in rows}


def record_json(record: TaskRecord) -> dict:
    return json.loads(record.model_dump_json())
