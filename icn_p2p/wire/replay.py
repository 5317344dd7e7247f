"""Replay and freshness guard for verified envelopes.

Per signer the guard keeps a *floor* (every seq at or below it is a replay)
and the last ``window`` accepted seqs above the floor, so a message delivered
out of order (seq below the highest, not yet seen) is accepted exactly once.
The window counts messages, not seq values: a ``Sealer`` seq is a wall clock in
microseconds, so a numeric range of 1024 would cover about a millisecond.
When the window overflows, its lowest seq becomes the floor.

Freshness: ``ts`` more than ``skew_ms`` ahead of ``now_ms`` is ``future``;
older than ``max_age_ms`` is ``stale``. That rule bounds what the seq state
must cover: a signer whose last message was accepted more than
``max_age_ms + skew_ms`` ago can be forgotten (``prune``), since any replay of
its messages is stale.

Memory is bounded: at most ``max_signers`` signers are tracked (LRU). An
evicted signer falls back to its durable floor (``FloorStore``, or the
not-yet-flushed floors in memory) and the stale rule; its floor is then its
highest accepted seq, so late out-of-order messages from it are refused (the
safe side). Without a store, eviction forgets the signer and only the stale
rule protects it.

Durability trade-off: ``flush()`` writes each signer's highest accepted seq in
one transaction, periodically rather than per message. After a crash, messages
accepted since the last flush are protected by the stale rule (they are at
most ``max_age_ms`` old to be accepted at all) together with the seq
monotonicity of the ``Sealer``: honest signers never reuse a seq, so a floor
that lags by one flush interval only matters for replays within ``max_age_ms``.

Threading: ``check``/``accept``/``prune`` run on one thread (the event loop);
``flush`` may run concurrently in a worker thread (``trio.to_thread``). On a
cache miss ``check``/``accept`` read one row from the store (an indexed
SQLite read, a few µs). Only one ``flush`` at a time.
"""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_left, insort
from collections import OrderedDict

from icn_p2p.wire.envelope import Envelope
from icn_p2p.wire.errors import Reason
from icn_p2p.wire.floor_store import FloorStore

log = logging.getLogger(__name__)

__all__ = ["ReplayGuard", "FloorStore"]


class _Signer:
    __slots__ = ("floor", "recent", "last_ms")

    def __init__(self, floor: int, last_ms: int = 0) -> None:
        self.floor = floor
        self.recent = array("q")  # sorted accepted seqs > floor, at most `window`
        self.last_ms = last_ms

    @property
    def highest(self) -> int:
        return self.recent[-1] if self.recent else self.floor

    def seen(self, seq: int) -> bool:
        if seq <= self.floor:
            return True
        i = bisect_left(self.recent, seq)
        return i < len(self.recent) and self.recent[i] == seq


class ReplayGuard:
    """Refuses replayed, stale and future envelopes; see the module docstring."""

    def __init__(
        self,
        window: int = 1024,
        skew_ms: int = 30_000,
        max_age_ms: int = 10 * 60_000,
        floor_store: FloorStore | None = None,
        *,
        max_signers: int = 10_000,
    ) -> None:
        if window < 1 or max_signers < 1 or skew_ms < 0 or max_age_ms < 0:
            raise ValueError("window and max_signers must be >= 1, skew and max age >= 0")
        self.window = window
        self.skew_ms = skew_ms
        self.max_age_ms = max_age_ms
        self.max_signers = max_signers
        self._store = floor_store
        self._signers: OrderedDict[str, _Signer] = OrderedDict()
        self._dirty: dict[str, tuple[int, int]] = {}  # signer -> (highest, now_ms), unflushed
        self._inflight: dict[str, tuple[int, int]] = {}  # being written by flush()
        if floor_store is not None:
            loaded = floor_store.load(max_signers)
            for signer in reversed(list(loaded)):  # most recent last = least likely evicted
                self._signers[signer] = _Signer(loaded[signer])
            log.info("replay floors loaded count=%d", len(loaded))

    # --- queries ---------------------------------------------------------------

    @property
    def tracked_signers(self) -> int:
        return len(self._signers)

    @property
    def pending_floors(self) -> int:
        """Signers whose floor changed since the last flush."""
        return len(self._dirty)

    def floor_of(self, signer: str) -> int:
        """Highest seq known to be used by ``signer`` (-1 if none)."""
        state = self._signers.get(signer)
        return state.highest if state is not None else self._durable_floor(signer)

    def _durable_floor(self, signer: str) -> int:
        best = -1
        for pending in (self._dirty, self._inflight):
            entry = pending.get(signer)
            if entry is not None and entry[0] > best:
                best = entry[0]
        if self._store is not None:
            stored = self._store.get(signer)
            if stored is not None and stored > best:
                best = stored
        return best

    def _freshness(self, ts: int, now_ms: int) -> Reason | None:
        if ts > now_ms + self.skew_ms:
            return Reason.FUTURE
        if ts < now_ms - self.max_age_ms:
            return Reason.STALE
        return None

    def check(self, env: Envelope, now_ms: int) -> Reason | None:
        """Why ``env`` would be refused now, or None. Changes nothing."""
        reason = self._freshness(env.ts, now_ms)
        if reason is not None:
            return reason
        state = self._signers.get(env.signer)
        if state is not None:
            return Reason.REPLAY if state.seen(env.seq) else None
        return Reason.REPLAY if env.seq <= self._durable_floor(env.signer) else None

    # --- updates -----------------------------------------------------------------

    def accept(self, env: Envelope, now_ms: int) -> Reason | None:
        """``check`` and, when it passes, record ``env`` as seen."""
        reason = self._freshness(env.ts, now_ms)
        if reason is not None:
            return reason
        signer, seq = env.signer, env.seq
        state = self._signers.get(signer)
        if state is None:
            floor = self._durable_floor(signer)
            if seq <= floor:
                return Reason.REPLAY
            state = self._signers[signer] = _Signer(floor)
            if len(self._signers) > self.max_signers:
                evicted, _ = self._signers.popitem(last=False)
                log.debug("replay guard evicted signer=%s", evicted)
        else:
            if state.seen(seq):
                return Reason.REPLAY
            self._signers.move_to_end(signer)
        recent = state.recent
        insort(recent, seq)
        if len(recent) > self.window:
            state.floor = recent.pop(0)
        state.last_ms = now_ms
        if self._store is not None:
            self._dirty[signer] = (recent[-1], now_ms)
        return None

    def prune(self, now_ms: int) -> int:
        """Forget signers with nothing accepted for ``max_age_ms + skew_ms``.

        Their messages are all stale by now, so forgetting them loses no
        protection. Returns how many were dropped.
        """
        horizon = now_ms - self.max_age_ms - self.skew_ms
        old = [s for s, state in self._signers.items() if state.last_ms < horizon]
        for signer in old:
            del self._signers[signer]
        return len(old)

    def flush(self) -> int:
        """Write pending floors in one transaction; returns rows written.

        Blocking (SQLite): call it through ``trio.to_thread.run_sync`` from
        async code. On failure the floors stay pending and the error propagates.
        """
        if self._store is None or not self._dirty:
            return 0
        batch, self._dirty = self._dirty, {}
        self._inflight = batch
        try:
            written = self._store.put_many((s, f, t) for s, (f, t) in batch.items())
        except BaseException:
            for signer, entry in batch.items():
                current = self._dirty.get(signer)
                if current is None or current[0] < entry[0]:
                    self._dirty[signer] = entry
            raise
        finally:
            self._inflight = {}
        return written
