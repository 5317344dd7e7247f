"""The run queue with real wasmtime: order, concurrency, cancellation, shutdown."""

from __future__ import annotations

import threading

import pytest
import trio

from icn_p2p.core.enums import TaskPriority as P
from icn_p2p.core.receipt import Outcome
from icn_p2p.executor.queue import ExecutorQueue, Job, JobState, QueueFull
from icn_p2p.executor.wasm import run_module

from . import wat

GATE = dict(module=wat.LOOP_FOREVER, entry="spin", args=(), fuel=10**18, wall_ms=10_000)


def add_job(tag: int, priority=P.NORMAL, adjusted=None) -> Job:
    return Job(module=wat.ADD, entry="add", args=(tag, 0), fuel=10_000, priority=priority,
               adjusted_priority=adjusted, label=f"job-{tag}")


class Recorder:
    """A runner that records which job started (by its first argument) and how many overlap."""

    def __init__(self) -> None:
        self.started: list = []
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, module, entry, args, **kw):
        with self._lock:
            self.started.append(args[0] if args else entry)
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return run_module(module, entry, args, **kw)
        finally:
            with self._lock:
                self.now -= 1


async def wait_state(handle, state):
    with trio.fail_after(5):
        while handle.state is not state:
            await trio.sleep(0.001)


@pytest.fixture
async def started():
    """Start queues in a nursery; everything is torn down at the end of the test."""
    async with trio.open_nursery() as nursery:
        def start(queue: ExecutorQueue) -> ExecutorQueue:
            nursery.start_soon(queue.run)
            return queue
        yield start
        nursery.cancel_scope.cancel()


async def test_priority_order_critical_high_normal_fifo(started):
    rec = Recorder()
    q = started(ExecutorQueue(1, runner=rec))
    gate = q.submit(Job(**GATE))
    await wait_state(gate, JobState.RUNNING)
    handles = [
        q.submit(add_job(1, P.NORMAL)),
        q.submit(add_job(2, P.HIGH)),
        q.submit(add_job(3, P.LOW)),
        q.submit(add_job(4, P.CRITICAL)),
        q.submit(add_job(5, P.NORMAL)),
        q.submit(add_job(6, P.HIGH)),
        q.submit(add_job(7, P.CRITICAL)),
    ]
    assert q.queue_depth == 7 and q.running == 1
    gate.cancel()
    results = [await h.wait() for h in handles]
    assert [r.values for r in results] == [[1], [2], [3], [4], [5], [6], [7]]
    assert rec.started == ["spin", 4, 7, 2, 6, 1, 5, 3]
    assert (await gate.wait()).outcome is Outcome.CANCELLED
    assert q.queue_depth == 0 and q.running == 0


async def test_adjusted_priority_orders_and_adjusted_critical_goes_first(started):
    rec = Recorder()
    q = started(ExecutorQueue(1, runner=rec))
    gate = q.submit(Job(**GATE))
    await wait_state(gate, JobState.RUNNING)
    hs = [
        q.submit(add_job(1, P.HIGH)),
        q.submit(add_job(2, P.LOW, adjusted=P.HIGH)),  # same adjusted rank: FIFO after 1
        q.submit(add_job(3, P.NORMAL, adjusted=P.CRITICAL)),
        q.submit(add_job(4, P.HIGH, adjusted=P.LOW)),
    ]
    gate.cancel()
    for h in hs:
        await h.wait()
    assert rec.started[1:] == [3, 1, 2, 4]


async def test_concurrency_limit_respected(started):
    rec = Recorder()
    q = started(ExecutorQueue(2, runner=rec))
    hs = [q.submit(Job(**{**GATE, "wall_ms": 80})) for _ in range(5)]
    seen = 0
    while not all(h.done for h in hs):
        seen = max(seen, q.running)
        assert q.running <= 2
        await trio.sleep(0.005)
    assert [h.result.outcome for h in hs] == [Outcome.TIMEOUT] * 5
    assert rec.peak == 2 and seen == 2


async def test_shared_limiter_bounds_threads(started):
    limiter = trio.CapacityLimiter(1)
    rec = Recorder()
    q = started(ExecutorQueue(3, limiter, runner=rec))
    hs = [q.submit(Job(**{**GATE, "wall_ms": 50})) for _ in range(3)]
    for h in hs:
        await h.wait()
    assert rec.peak == 1 and q.concurrency == 3


async def test_cancel_queued_job_removes_it(started):
    rec = Recorder()
    q = started(ExecutorQueue(1, runner=rec))
    gate = q.submit(Job(**GATE))
    await wait_state(gate, JobState.RUNNING)
    a, b = q.submit(add_job(1)), q.submit(add_job(2))
    assert q.queue_depth == 2
    assert a.cancel()
    assert q.queue_depth == 1
    assert a.state is JobState.CANCELLED and (await a.wait()).outcome is Outcome.CANCELLED
    assert not a.cancel()  # already finished
    gate.cancel()
    assert (await b.wait()).values == [2]
    assert 1 not in rec.started


async def test_cancel_running_job_stops_it_promptly_and_frees_the_worker(started):
    limiter = trio.CapacityLimiter(1)
    q = started(ExecutorQueue(1, limiter))
    h = q.submit(Job(**GATE))
    await wait_state(h, JobState.RUNNING)
    with trio.fail_after(2):  # the wall limit is 10 s: only cancellation ends it this soon
        assert h.cancel()
        r = await h.wait()
    assert r.outcome is Outcome.CANCELLED and h.state is JobState.CANCELLED
    assert limiter.borrowed_tokens == 0
    after = q.submit(add_job(9))
    assert (await after.wait()).values == [9]


async def test_stopping_the_queue_stops_running_and_queued_jobs():
    limiter = trio.CapacityLimiter(1)
    q = ExecutorQueue(1, limiter)
    running = q.submit(Job(**GATE))
    queued = q.submit(add_job(1))
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(q.run)
            await wait_state(running, JobState.RUNNING)
            nursery.cancel_scope.cancel()
        assert (await running.wait()).outcome is Outcome.CANCELLED
        assert (await queued.wait()).outcome is Outcome.CANCELLED
        assert running.control.cancelled
        while limiter.borrowed_tokens:  # the abandoned thread stops within a tick
            await trio.sleep(0.005)
    assert q.queue_depth == 0


async def test_queue_full():
    q = ExecutorQueue(1, max_queued=2)
    q.submit(add_job(1))
    q.submit(add_job(2))
    with pytest.raises(QueueFull):
        q.submit(add_job(3))


async def test_runner_error_is_a_result_not_a_crash(started):
    def broken(*a, **kw):
        raise RuntimeError("boom")

    q = started(ExecutorQueue(1, runner=broken))
    r = await q.submit(add_job(1)).wait()
    assert r.outcome is Outcome.TRAPPED and "boom" in r.error
    # the queue keeps going
    assert (await q.submit(add_job(2)).wait()).outcome is Outcome.TRAPPED


def test_invalid_construction():
    with pytest.raises(ValueError):
        ExecutorQueue(0)
    with pytest.raises(ValueError):
        add_job(1).__class__(module=wat.ADD, entry="add", args=(), fuel=-1)
