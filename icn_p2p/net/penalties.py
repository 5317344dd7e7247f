"""Per-peer misbehaviour accounting: rate budgets and penalty scores.

A peer earns a penalty for each invalid message it *forwards to us*. Faults a
peer cannot cause honestly (garbage, bad signatures, unknown types, wrong
topics) weigh heavily; faults an honest peer can cause through timing (a
message that went stale in flight, a replay that raced an out-of-order
delivery, a burst over the rate budget) weigh lightly. Scores decay
exponentially, so an honest peer's occasional light fault never adds up to a
ban, while a peer sending garbage crosses the threshold within a few messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from icn_p2p.wire import Reason

RATE_LIMITED = "rate_limited"
QUEUE_FULL = "queue_full"

#: Reasons an honest forwarder can trigger through timing or reordering.
SOFT_REASONS = frozenset({Reason.REPLAY.value, Reason.STALE.value, Reason.FUTURE.value})


@dataclass
class PenaltySettings:
    hard_weight: float = 25.0
    soft_weight: float = 2.0
    rate_weight: float = 0.5
    ban_threshold: float = 100.0
    half_life_s: float = 60.0


def weight_of(reason: str, settings: PenaltySettings) -> float:
    if reason == RATE_LIMITED:
        return settings.rate_weight
    if reason == QUEUE_FULL:
        return 0.0  # our own backlog, not the peer's fault
    if reason in SOFT_REASONS:
        return settings.soft_weight
    return settings.hard_weight


@dataclass
class _Score:
    value: float = 0.0
    at: float = 0.0


@dataclass
class PenaltyBook:
    """Decaying penalty scores by peer (any hashable peer key)."""

    settings: PenaltySettings = field(default_factory=PenaltySettings)
    _scores: dict = field(default_factory=dict)

    def _decayed(self, score: _Score, now: float) -> float:
        if score.value == 0.0:
            return 0.0
        dt = max(0.0, now - score.at)
        return score.value * math.pow(0.5, dt / self.settings.half_life_s)

    def add(self, peer, reason: str, now: float) -> float:
        """Record one fault; returns the peer's new score."""
        score = self._scores.setdefault(peer, _Score())
        score.value = self._decayed(score, now) + weight_of(reason, self.settings)
        score.at = now
        return score.value

    def score(self, peer, now: float) -> float:
        score = self._scores.get(peer)
        return 0.0 if score is None else self._decayed(score, now)

    def over_threshold(self, peer, now: float) -> bool:
        return self.score(peer, now) >= self.settings.ban_threshold

    def forget(self, peer) -> None:
        self._scores.pop(peer, None)

    def prune(self, now: float, floor: float = 0.5) -> None:
        """Drop scores that have decayed to nothing (bounded memory)."""
        for peer in [p for p, s in self._scores.items() if self._decayed(s, now) < floor]:
            del self._scores[peer]


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float, n: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass
class RateBudget:
    """A token bucket per peer: ``rate`` messages per second, bursts up to ``burst``."""

    rate: float = 1000.0
    burst: float = 5000.0
    _buckets: dict = field(default_factory=dict)

    def allow(self, peer, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now)

    def forget(self, peer) -> None:
        self._buckets.pop(peer, None)
