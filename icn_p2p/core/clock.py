"""Time as a value passed in, never read inside a decision.

The domain core takes ``now`` as an argument. Edges read it from a ``Clock``;
tests and simulations use ``FakeClock`` to move time on purpose.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a clock does not go backwards")
        self._now += ms

    def set(self, ms: int) -> None:
        self._now = ms


class OffsetClock:
    """The system clock shifted by an offset that can only grow.

    Simulations share one between their nodes to jump ahead (a month, for the
    monthly reset) while time keeps flowing, so deadlines and timeouts behave.
    """

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a clock does not go backwards")
        self.offset_ms += ms


def utc_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def ms_from_datetime(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def month_key(ms: int) -> str:
    """The UTC calendar month holding ``ms``, as ``YYYY-MM``: the usage reset key."""
    dt = utc_datetime(ms)
    return f"{dt.year:04d}-{dt.month:02d}"


def month_start_ms(month: str) -> int:
    year, mon = (int(p) for p in month.split("-"))
    return ms_from_datetime(datetime(year, mon, 1, tzinfo=timezone.utc))


def weekday_from_sunday(ms: int) -> int:
    """0 = Sunday .. 6 = Saturday, as ICN's ``TimeWindow.allowed_days``."""
    return (utc_datetime(ms).weekday() + 1) % 7


def utc_hour(ms: int) -> int:
    return utc_datetime(ms).hour
