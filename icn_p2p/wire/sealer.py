"""A node's outgoing envelopes, with a seq that never repeats, even across restarts.

``seq = max(last + 1, now_us)``: strictly increasing within a process, and
after a restart it starts at the wall clock in microseconds, above anything
sent before (unless the clock went backwards, or the node sent more than a
million messages per second before it stopped). So nothing needs to be written
to disk per message, and receivers' replay floors stay valid.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from icn_p2p.core.clock import Clock
from icn_p2p.identity.keys import NodeKey
from icn_p2p.wire.envelope import MAX_SEQ, seal
from icn_p2p.wire.errors import Reason, WireError

__all__ = ["Sealer"]


def _system_us() -> int:
    return time.time_ns() // 1_000


class Sealer:
    """Seals envelopes for one key. Not thread-safe: use it from one thread (the trio loop).

    ``clock`` (ms, e.g. ``FakeClock``) gives ``ts``; ``now_us`` (a callable
    returning µs since the epoch) gives the seq floor. When only one is given
    the other is derived from it; with neither, the system clock is used.
    """

    def __init__(
        self,
        key: NodeKey,
        *,
        clock: Clock | None = None,
        now_us: Callable[[], int] | None = None,
        last_seq: int = -1,
    ) -> None:
        self.key = key
        if now_us is None:
            now_us = (lambda: clock.now_ms() * 1_000) if clock is not None else _system_us
        self._now_us = now_us
        self._now_ms: Callable[[], int] = clock.now_ms if clock is not None else (lambda: now_us() // 1_000)
        self._last = last_seq

    @property
    def did(self) -> str:
        return self.key.did

    @property
    def last_seq(self) -> int:
        """The seq of the last envelope sealed (-1 before the first)."""
        return self._last

    def next_seq(self) -> int:
        seq = max(self._last + 1, self._now_us())
        if seq >= MAX_SEQ:
            raise WireError(Reason.BAD_SCHEMA, "seq space exhausted")
        return seq

    def seal(self, type: str, payload: Any) -> bytes:
        """Wire bytes of a new envelope; the seq is used up only if sealing succeeds."""
        seq = self.next_seq()
        data = seal(self.key, type, payload, seq=seq, ts=self._now_ms())
        self._last = seq
        return data
