"""Group commit of blocking steps: real worker threads, results per step, failure per batch."""

import threading

import pytest
import trio

from icn_p2p.node.batcher import Batcher, BatcherClosed


def _run(fn, *args):
    return trio.to_thread.run_sync(fn, *args)


async def test_steps_that_arrive_together_share_one_call_and_each_gets_its_own_outcome():
    calls = []
    gate = threading.Event()

    def batch(items):
        calls.append(list(items))
        gate.wait(5)  # the first call is still running while the rest arrive
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    batcher = Batcher(batch, _run)
    results = {}

    async def step(i):
        try:
            results[i] = await batcher(i)
        except ValueError as exc:
            results[i] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        nursery.start_soon(step, 0)
        await trio.sleep(0.05)
        for i in range(1, 6):
            nursery.start_soon(step, i)
        await trio.sleep(0.05)
        gate.set()
        with trio.fail_after(5):
            while len(results) < 6:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert calls[0] == [0] and sorted(calls[1]) == [1, 2, 3, 4, 5] and len(calls) == 2
    assert results == {0: 0, 1: "odd 1", 2: 20, 3: "odd 3", 4: 40, 5: "odd 5"}
    assert batcher.batches == 2


async def test_a_step_that_fails_its_batch_fails_alone_and_the_next_batch_runs():
    gate = threading.Event()
    calls = []

    def batch(items):
        calls.append(sorted(items))
        gate.wait(5)
        if "bad" in items:
            raise OSError("disk full")  # all or nothing: the whole call is undone
        return [i.upper() for i in items]

    batcher = Batcher(batch, _run)
    results = {}

    async def step(item):
        try:
            results[item] = await batcher(item)
        except OSError as exc:
            results[item] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        nursery.start_soon(step, "first")
        await trio.sleep(0.05)
        for item in ("a", "bad", "b"):
            nursery.start_soon(step, item)
        await trio.sleep(0.05)
        gate.set()
        with trio.fail_after(5):
            while len(results) < 4:
                await trio.sleep(0.01)
        assert await batcher("later") == "LATER"
        nursery.cancel_scope.cancel()
    assert results == {"first": "FIRST", "a": "A", "b": "B", "bad": "disk full"}
    assert calls[1] == ["a", "b", "bad"] and sorted(calls[2:5]) == [["a"], ["b"], ["bad"]]


async def test_a_cancelled_caller_still_has_its_step_done_and_a_stopped_batcher_refuses():
    done = []

    def batch(items):
        done.extend(items)
        return items

    batcher = Batcher(batch, _run)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        with trio.move_on_after(0) as scope:
            await batcher("slot")  # its caller is cancelled at once: the step commits anyway
        assert done == ["slot"] and not scope.cancelled_caught
        nursery.cancel_scope.cancel()
    with pytest.raises(BatcherClosed):
        await batcher("late")


async def test_steps_queued_when_the_loop_stops_fail_instead_of_waiting_for_ever():
    batcher = Batcher(lambda items: items, _run)
    outcome = []

    async def step():
        try:
            await batcher("x")
        except BatcherClosed as exc:
            outcome.append(str(exc))

    async with trio.open_nursery() as nursery:
        loop = trio.CancelScope()

        async def run_loop():
            with loop:
                await batcher.run()

        nursery.start_soon(step)
        await trio.sleep(0.01)  # queued before the loop ever ran
        loop.cancel()
        nursery.start_soon(run_loop)
    assert outcome == ["the node is stopping"]
