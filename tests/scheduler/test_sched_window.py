import pytest
import trio

from icn_p2p.core.clock import SystemClock
from icn_p2p.scheduler.window import DEFAULT_WINDOW_MS, AddResult, OfferWindow, collect

from .factories import offer


def test_closes_on_count():
    w = OfferWindow("t1", want=2, deadline_ms=1_150, opened_at_ms=1_000)
    assert not w.closed(1_000)
    assert w.add(offer("a", offered_at_ms=1_001), 1_001) is AddResult.ACCEPTED
    assert not w.closed(1_002)
    assert w.add(offer("b", offered_at_ms=1_003), 1_003) is AddResult.ACCEPTED
    assert w.closed(1_003) and w.remaining_ms(1_003) == 0
    assert w.add(offer("c"), 1_004) is AddResult.CLOSED
    assert [o.did for o in w.offers] == ["a", "b"]


def test_closes_on_deadline():
    w = OfferWindow.open("t1", now_ms=1_000, want=5)
    assert w.deadline_ms == 1_000 + DEFAULT_WINDOW_MS
    w.add(offer("a"), 1_010)
    assert not w.closed(1_149) and w.remaining_ms(1_149) == 1
    assert w.closed(1_150)
    assert w.add(offer("b"), 1_151) is AddResult.CLOSED
    assert w.closed(1_000)  # once closed it stays closed


def test_only_feasible_offers_count():
    w = OfferWindow("t1", want=1, deadline_ms=100, opened_at_ms=0, feasible=lambda o: o.executor.region == "eu")
    assert w.add(offer("a", region="us"), 1) is AddResult.INFEASIBLE
    assert not w.closed(2) and w.feasible_count == 0
    assert w.add(offer("b", region="eu"), 3) is AddResult.ACCEPTED
    assert w.closed(3)
    assert len(w.offers) == 2  # the infeasible one is kept for the decision's explanation


def test_duplicates_wrong_task_and_replacement():
    w = OfferWindow("t1", want=2, deadline_ms=100, opened_at_ms=0, feasible=lambda o: o.executor.queue_depth < 5)
    assert w.add(offer("a", task_id="t2"), 1) is AddResult.WRONG_TASK
    assert w.add(offer("a", offered_at_ms=5), 1) is AddResult.ACCEPTED
    assert w.add(offer("a", offered_at_ms=5), 2) is AddResult.STALE
    assert w.add(offer("a", offered_at_ms=4), 2) is AddResult.STALE
    assert w.feasible_count == 1
    assert w.add(offer("a", offered_at_ms=6, queue_depth=9), 3) is AddResult.REPLACED
    assert w.feasible_count == 0 and w.offers[0].executor.queue_depth == 9


def test_bad_windows_are_refused():
    with pytest.raises(ValueError):
        OfferWindow("t1", want=0, deadline_ms=10, opened_at_ms=0)
    with pytest.raises(ValueError):
        OfferWindow("t1", want=1, deadline_ms=10, opened_at_ms=20)
    with pytest.raises(ValueError):
        OfferWindow.open("t1", now_ms=0, window_ms=-1)


async def test_collect_returns_when_enough_offers_arrive():
    clock = SystemClock()
    w = OfferWindow.open("t1", now_ms=clock.now_ms(), want=2, window_ms=10_000)
    send, recv = trio.open_memory_channel(10)
    await send.send(offer("a"))
    await send.send(offer("b"))
    await send.send(offer("c"))
    start = trio.current_time()
    got = await collect(w, recv, clock)
    assert [o.did for o in got] == ["a", "b"]
    assert trio.current_time() - start < 1.0
    assert recv.receive_nowait().did == "c"  # not consumed


async def test_collect_stops_at_the_deadline():
    clock = SystemClock()
    w = OfferWindow.open("t1", now_ms=clock.now_ms(), want=3, window_ms=60)
    send, recv = trio.open_memory_channel(10)

    async def trickle():
        await send.send(offer("a"))
        await trio.sleep(5)
        await send.send(offer("late"))

    start = trio.current_time()
    async with trio.open_nursery() as n:
        n.start_soon(trickle)
        got = await collect(w, recv, clock)
        n.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    assert [o.did for o in got] == ["a"]
    assert 0.04 <= elapsed < 1.0
    assert w.closed(clock.now_ms())


async def test_collect_stops_when_the_channel_ends():
    clock = SystemClock()
    w = OfferWindow.open("t1", now_ms=clock.now_ms(), want=3, window_ms=10_000)
    send, recv = trio.open_memory_channel(10)
    async with send:
        await send.send(offer("a"))
    got = await collect(w, recv, clock)
    assert [o.did for o in got] == ["a"]
