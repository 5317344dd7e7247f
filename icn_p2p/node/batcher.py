"""Many callers' blocking steps in one worker-thread call (group commit).

Admitting a task and closing its books are each a short SQLite transaction
that must commit before the caller goes on. Run one worker-thread call per
task, and under load the calls queue for the node's database threads:
each waits for a thread, for the GIL after every SQLite statement and for
its own fsync, and a millisecond of work took tens of milliseconds of wall
time. A :class:`Batcher` gathers the steps that arrive while its previous
call runs and hands them to one call, which does them in order in one
transaction: one thread hand-off and one commit for all of them.

Each step still gets its own outcome: the batch function returns one result
(or exception) per item, in order. A batch function must be all-or-nothing
(one transaction, rolled back when it raises) and safe to run again for the
same items; when it raises for a batch of several steps, each step is run
again on its own, so a step that cannot be done fails alone instead of
taking its batch mates with it.

A caller that is cancelled while its step is queued or running still has the
step done and waits for it, as ``trio.to_thread.run_sync`` does: the step
commits state (a concurrency slot, a credit reservation) that its caller
must go on to account for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")

#: Steps in one call at most (one transaction; keeps a call's latency bounded).
MAX_BATCH = 128


class BatcherClosed(RuntimeError):
    """A step offered to (or still queued in) a batcher whose loop has stopped."""


class _Step(Generic[T]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Batcher(Generic[T, R]):
    """Runs ``batch_fn(items) -> [result or exception, ...]`` in worker threads for many callers."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R | BaseException]],
        blocking: Callable[..., Awaitable[Any]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._batch_fn = batch_fn
        self._blocking = blocking
        self._max_batch = max_batch
        self._queue: list[_Step[T]] = []
        self._wake = trio.Event()
        self._closed = False
        self.batches = 0  # calls made (for tests and metrics)

    async def __call__(self, item: T) -> R:
        """Queue ``item``, wait for its batch, return its result or raise its exception."""
        if self._closed:
            raise BatcherClosed("the node is stopping")
        step = _Step(item)
        self._queue.append(step)
        self._wake.set()
        with trio.CancelScope(shield=True):
            await step.done.wait()
        if step.error is not None:
            raise step.error
        return step.result

    async def run(self) -> None:
        """The loop that makes the calls; run it in the owner's nursery.

        When it stops (the node is stopping), steps still queued fail with
        :class:`BatcherClosed` instead of waiting for ever."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._queue:
                    steps, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                    await self._run(steps)
        finally:
            self._closed = True
            left, self._queue = self._queue, []
            for step in left:
                step.error = BatcherClosed("the node is stopping")
                step.done.set()

    async def _run(self, steps: list[_Step[T]]) -> None:
        with trio.CancelScope(shield=True):  # a batch started is a batch finished
            outcomes = await self._call([s.item for s in steps])
            if isinstance(outcomes, Exception):  # nothing was done: find the step that cannot be
                outcomes = [outcomes] if len(steps) == 1 else [await self._alone(s.item) for s in steps]
        for step, outcome in zip(steps, outcomes):
            if isinstance(outcome, BaseException):
                step.error = outcome
            else:
                step.result = outcome
            step.done.set()

    async def _alone(self, item: T) -> R | BaseException:
        outcomes = await self._call([item])
        return outcomes if isinstance(outcomes, Exception) else outcomes[0]

    async def _call(self, items: list[T]) -> Sequence[R | BaseException] | Exception:
        """One worker-thread call: its outcomes, or the exception that escaped it."""
        self.batches += 1
        try:
            outcomes = await self._blocking(self._batch_fn, items)
        except Exception as exc:
            return exc
        if len(outcomes) != len(items):
            return RuntimeError(f"batch returned {len(outcomes)} outcomes for {len(items)} steps")
        return outcomes
