"""The offer window: how long a submitter waits for offers before ranking them.

``OfferWindow`` is pure state (time passed in): it closes when ``want``
feasible offers have arrived or when its deadline passes, whichever is first.
ICN waited a fixed 1.5 s; here the window is configurable and short by default
(``DEFAULT_WINDOW_MS``), because on a healthy mesh offers arrive within a few
milliseconds and waiting longer only adds latency.

``collect`` is the small trio loop that feeds a window from a channel.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import trio

from icn_p2p.core.clock import Clock

from .offer import Offer

DEFAULT_WINDOW_MS = 150
DEFAULT_WANT = 3


class AddResult(str, Enum):
    ACCEPTED = "accepted"      # counted, feasible
    INFEASIBLE = "infeasible"  # kept for the decision's explanation, not counted towards ``want``
    REPLACED = "replaced"      # a newer offer from an executor already heard from
    STALE = "stale"            # an older offer from an executor already heard from: ignored
    WRONG_TASK = "wrong_task"
    CLOSED = "closed"          # arrived after the window closed: ignored


class OfferWindow:
    def __init__(
        self,
        task_id: str,
        *,
        want: int,
        deadline_ms: int,
        opened_at_ms: int,
        feasible: Callable[[Offer], bool] | None = None,
    ) -> None:
        """``deadline_ms`` is the absolute time (epoch ms) the window closes at.

        ``feasible`` decides whether an offer counts towards ``want`` (e.g.
        ``placement.feasibility_check(...)``); by default every offer counts.
        """
        if want < 1:
            raise ValueError("want must be at least 1")
        if deadline_ms < opened_at_ms:
            raise ValueError("deadline_ms is before opened_at_ms")
        self.task_id = task_id
        self.want = want
        self.deadline_ms = deadline_ms
        self.opened_at_ms = opened_at_ms
        self._feasible = feasible
        self._offers: dict[str, Offer] = {}
        self._counted: set[str] = set()
        self._closed_at: int | None = None

    @classmethod
    def open(
        cls,
        task_id: str,
        *,
        now_ms: int,
        want: int = DEFAULT_WANT,
        window_ms: int = DEFAULT_WINDOW_MS,
        feasible: Callable[[Offer], bool] | None = None,
    ) -> OfferWindow:
        if window_ms < 0:
            raise ValueError("window_ms must not be negative")
        return cls(task_id, want=want, deadline_ms=now_ms + window_ms, opened_at_ms=now_ms, feasible=feasible)

    @property
    def offers(self) -> list[Offer]:
        """Every offer kept (one per executor, the latest), in arrival order."""
        return list(self._offers.values())

    @property
    def feasible_count(self) -> int:
        return len(self._counted)

    def closed(self, now_ms: int) -> bool:
        if self._closed_at is not None:
            return True
        if len(self._counted) >= self.want or now_ms >= self.deadline_ms:
            self._closed_at = now_ms
            return True
        return False

    def remaining_ms(self, now_ms: int) -> int:
        return 0 if self.closed(now_ms) else self.deadline_ms - now_ms

    def add(self, offer: Offer, now_ms: int) -> AddResult:
        if self.closed(now_ms):
            return AddResult.CLOSED
        if offer.task_id != self.task_id:
            return AddResult.WRONG_TASK
        did = offer.executor.did
        prev = self._offers.get(did)
        if prev is not None and offer.offered_at_ms <= prev.offered_at_ms:
            return AddResult.STALE
        self._offers[did] = offer
        ok = self._feasible is None or self._feasible(offer)
        if ok:
            self._counted.add(did)
        else:
            self._counted.discard(did)
        self.closed(now_ms)  # latch the close time as soon as the count is reached
        if prev is not None:
            return AddResult.REPLACED
        return AddResult.ACCEPTED if ok else AddResult.INFEASIBLE


async def collect(window: OfferWindow, receive: trio.abc.ReceiveChannel[Offer], clock: Clock) -> list[Offer]:
    """Feed ``window`` from ``receive`` until it closes (count, deadline or channel end)."""
    remaining_s = window.remaining_ms(clock.now_ms()) / 1000
    with trio.move_on_at(trio.current_time() + remaining_s):
        while not window.closed(clock.now_ms()):
            try:
                offer = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            window.add(offer, clock.now_ms())
    return window.offers
