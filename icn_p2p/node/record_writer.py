"""Task records written behind the lifecycle, many to a transaction.

A task passes through five or six states in a few milliseconds; writing each
as its own worker-thread call would cost the submitter more than placing the
task. The writer keeps the latest record of each task and writes whatever
has gathered in one transaction while the previous one commits (group
commit). :meth:`put` queues a record and returns at once (placement details,
intermediate states: a restart fails unfinished tasks anyway);
:meth:`save` returns once the record is committed (final states).

Every record of a task goes through the writer, so an older state can never
be written over a newer one; the exception is a final record, which the
compute service commits together with the task's books (one worker-thread
call for both), and which the store never writes over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .lifecycle import TaskRecord
from .task_store import TaskStore

log = logging.getLogger(__name__)

RETRY_S = 1.0


class RecordWriter:
    def __init__(self, store: TaskStore, blocking: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self._blocking = blocking
        self._queued: dict[str, TaskRecord] = {}
        self._wake = trio.Event()
        self._next = 1  # the batch a record queued now will be written in
        self._written = 0  # the last batch committed
        self._committed = trio.Event()

    def put(self, record: TaskRecord) -> int:
        """Queue ``record`` (replacing any queued record of its task); returns its batch."""
        self._queued[record.task_id] = record
        self._wake.set()
        return self._next

    def forget(self, task_id: str) -> None:
        """Drop the task's queued record: its final record is committed elsewhere."""
        self._queued.pop(task_id, None)

    async def save(self, record: TaskRecord) -> None:
        """Queue ``record`` and wait until it is committed."""
        await self._wait(self.put(record))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._queued:
            await self._wait(self._next)

    async def _wait(self, batch: int) -> None:
        while self._written < batch:
            await self._committed.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            records, self._queued = self._queued, {}
            batch, self._next = self._next, self._next + 1
            try:
                while True:
                    try:
                        await self._blocking(self.store.save_many, list(records.values()))
                        break
                    except Exception as exc:  # disk full, I/O error: keep them and try again
                        log.error("event=task_records_not_written records=%d error=%r", len(records), exc)
                        await trio.sleep(RETRY_S)
                        records.update(self._queued)  # newer records of the same tasks win
                        self._queued = {}
            except BaseException:  # cancelled (shutdown): ``drain`` writes them
                self._queued = {**records, **self._queued}
                raise
            self._written = batch
            self._committed.set()
            self._committed = trio.Event()

    def drain(self) -> None:
        """Blocking: write what is still queued (at shutdown, from a worker thread)."""
        records, self._queued = self._queued, {}
        if records:
            self.store.save_many(list(records.values()))
