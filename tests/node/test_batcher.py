"""Group commit of blocking steps: real worker threads, results per step, failure per batch."""

import threading

import pytest
import trio

from icn_p2p.node.batcher import Batcher, BatcherClosed


def _run(fn, *args):
    return trio.to_thread.run_sync(fn, *args)


async def _first_then_together(batch_fn, first, rest):
    """Run ``first`` alone, and ``rest`` while its call is held (they queue meanwhile);
    returns each item's result or the text of its exception, and the batcher."""
    gate = threading.Event()
    batcher = Batcher(lambda items: (gate.wait(5), batch_fn(items))[1], _run)
    results = {}

    async def step(item):
        try:
            results[item] = await batcher(item)
        except Exception as exc:
            results[item] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        nursery.start_soon(step, first)
        await trio.sleep(0.05)
        for item in rest:
            nursery.start_soon(step, item)
        await trio.sleep(0.05)
        gate.set()
        with trio.fail_after(5):
            while len(results) < 1 + len(rest):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return results, batcher


async def test_steps_that_arrive_together_share_one_call_and_each_gets_its_own_outcome():
    calls = []

    def batch(items):
        calls.append(sorted(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    results, batcher = await _first_then_together(batch, 0, range(1, 6))
    assert calls == [[0], [1, 2, 3, 4, 5]] and batcher.batches == 2
    assert results == {0: 0, 1: "odd 1", 2: 20, 3: "odd 3", 4: 40, 5: "odd 5"}


async def test_a_step_that_fails_its_batch_fails_alone():
    calls = []

    def batch(items):
        calls.append(sorted(items))
        if "bad" in items:
            raise OSError("disk full")  # all or nothing: the whole call is undone
        return [i.upper() for i in items]

    results, _ = await _first_then_together(batch, "first", ("a", "bad", "b"))
    assert results == {"first": "FIRST", "a": "A", "b": "B", "bad": "disk full"}
    assert calls[1] == ["a", "b", "bad"] and sorted(calls[2:]) == [["a"], ["b"], ["bad"]]


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
