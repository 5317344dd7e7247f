"""The executor's run queue: priority order, bounded concurrency, cancellation.

Order: a Critical job (as submitted or as adjusted by a coop's
``MemberPriority``) first, then by adjusted priority (higher rank first), then
by age (first in, first out). At most ``concurrency`` jobs run at once; each
runs ``run_module`` in a worker thread through ``trio.to_thread.run_sync``
with a ``CapacityLimiter``, so wasmtime never blocks the event loop.

The next job is chosen when a slot frees, not when it is submitted, so a late
Critical job overtakes everything still queued.

Cancelling a queued job removes it; cancelling a running job sets its
``RunControl``, which the run's epoch callback sees within one tick, so the
worker thread returns promptly with outcome ``cancelled``. If the queue's own
task is cancelled (node shutdown), running jobs are stopped the same way.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from icn_p2p.core.enums import TaskPriority
from icn_p2p.core.receipt import Outcome

from .wasm import ExecutionResult, RunControl, run_module

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_WALL_MS = 10_000
DEFAULT_MAX_QUEUED = 10_000


class QueueFull(Exception):
    """The queue holds ``max_queued`` jobs already; offer less, or retry later."""


@dataclass(frozen=True)
class Job:
    """One run: the module, the call, its limits and its place in the order."""

    module: bytes | str
    entry: str
    args: tuple[int | float, ...] | list[int | float]
    fuel: int
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
    wall_ms: int = DEFAULT_WALL_MS
    priority: TaskPriority = TaskPriority.NORMAL
    adjusted_priority: TaskPriority | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.fuel < 0 or self.memory_limit_bytes < 0 or self.wall_ms < 0:
            raise ValueError("fuel, memory and wall-clock limits must be non-negative")

    @property
    def effective_priority(self) -> TaskPriority:
        return self.adjusted_priority if self.adjusted_priority is not None else self.priority

    def order_key(self) -> tuple[int, int]:
        critical = TaskPriority.CRITICAL in (self.priority, self.effective_priority)
        return (0 if critical else 1, -self.effective_priority.rank)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class JobHandle:
    """A submitted job: await ``wait()`` for its result; ``cancel()`` to stop it."""

    job: Job
    seq: int
    _queue: "ExecutorQueue"
    state: JobState = JobState.QUEUED
    control: RunControl = field(default_factory=RunControl)
    result: ExecutionResult | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> ExecutionResult:
        await self._done.wait()
        assert self.result is not None
        return self.result

    def cancel(self) -> bool:
        return self._queue.cancel(self)

    def _finish(self, result: ExecutionResult, state: JobState) -> None:
        if self._done.is_set():
            return
        self.result = result
        self.state = state
        self._done.set()


Runner = Callable[..., ExecutionResult]


class ExecutorQueue:
    """Priority queue of wasm runs with at most ``concurrency`` running at once."""

    def __init__(
        self,
        concurrency: int,
        limiter: trio.CapacityLimiter | None = None,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        runner: Runner = run_module,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._concurrency = concurrency
        self._limiter = limiter or trio.CapacityLimiter(concurrency)
        self._max_queued = max_queued
        self._runner = runner
        self._heap: list[tuple[tuple[int, int], int, JobHandle]] = []
        self._seq = itertools.count()
        self._queued = 0
        self._running: set[JobHandle] = set()
        self._wake = trio.Event()

    # --- figures for offers -----------------------------------------------------------

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to start (cancelled ones excluded)."""
        return self._queued

    @property
    def running(self) -> int:
        return len(self._running)

    # --- submit and cancel --------------------------------------------------------------

    def submit(self, job: Job) -> JobHandle:
        """Queue ``job``; raises ``QueueFull`` when ``max_queued`` jobs are waiting."""
        if self._queued >= self._max_queued:
            raise QueueFull(f"{self._queued} jobs queued (limit {self._max_queued})")
        seq = next(self._seq)
        handle = JobHandle(job=job, seq=seq, _queue=self)
        heapq.heappush(self._heap, (job.order_key(), seq, handle))
        self._queued += 1
        log.debug("job queued label=%s priority=%s seq=%d", job.label, job.effective_priority, seq)
        self._notify()
        return handle

    def cancel(self, handle: JobHandle) -> bool:
        """Cancel a queued or running job. False when it had already finished."""
        if handle.state is JobState.QUEUED:
            self._queued -= 1  # its heap entry is skipped when popped
            handle.control.cancel()
            handle._finish(
                ExecutionResult(outcome=Outcome.CANCELLED, error="cancelled while queued"),
                JobState.CANCELLED,
            )
            self._notify()
            return True
        if handle.state is JobState.RUNNING:
            handle.control.cancel()
            return True
        return False

    # --- the loop -----------------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()

    def _pop_ready(self) -> JobHandle | None:
        if len(self._running) >= self._concurrency:
            return None
        while self._heap:
            _, _, handle = heapq.heappop(self._heap)
            if handle.state is JobState.QUEUED:
                self._queued -= 1
                return handle
        return None

    async def run(self) -> None:
        """Dispatch jobs until cancelled; start it in the node's nursery."""
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    self._wake = trio.Event()
                    handle = self._pop_ready()
                    if handle is None:
                        await self._wake.wait()
                        continue
                    handle.state = JobState.RUNNING
                    self._running.add(handle)
                    nursery.start_soon(self._work, handle)
        finally:
            self._abandon_queued()

    def _abandon_queued(self) -> None:
        for _, _, handle in self._heap:
            if handle.state is JobState.QUEUED:
                handle._finish(
                    ExecutionResult(outcome=Outcome.CANCELLED, error="executor queue stopped"),
                    JobState.CANCELLED,
                )
        self._heap.clear()
        self._queued = 0

    async def _work(self, handle: JobHandle) -> None:
        job = handle.job
        call = functools.partial(
            self._runner,
            job.module,
            job.entry,
            list(job.args),
            fuel=job.fuel,
            memory_limit_bytes=job.memory_limit_bytes,
            wall_ms=job.wall_ms,
            control=handle.control,
        )
        try:
            result = await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            # The thread is abandoned but told to stop: it returns within a tick
            # and only then gives its limiter token back.
            handle.control.cancel()
            handle._finish(
                ExecutionResult(outcome=Outcome.CANCELLED, error="executor queue stopped"),
                JobState.CANCELLED,
            )
            raise
        except Exception as e:  # a runner bug must not lose the job or kill the queue
            log.exception("job failed label=%s", job.label)
            result = ExecutionResult(outcome=Outcome.TRAPPED, error=f"executor error: {e}")
        finally:
            self._running.discard(handle)
            self._notify()
        state = JobState.CANCELLED if result.outcome is Outcome.CANCELLED else JobState.DONE
        handle._finish(result, state)
