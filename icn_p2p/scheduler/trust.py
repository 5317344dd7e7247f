"""Executor trust learned from observed outcomes.

An executor's effective trust is a Beta-style blend of a prior (the trust an
operator configured for it, else the trust it claims in its offer) and what
this node has seen it do::

    effective = (successes + prior * k) / (attempts + k)

With ``k = 10`` a new executor sits at its prior, ten observed outcomes weigh
as much as the prior, and a long record dominates it. Optionally the record
decays with a half-life so an old record fades back towards the prior.

Pure state: no I/O, time passed in. ``to_dict``/``from_dict`` let the node
persist it wherever it likes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PRIOR_WEIGHT = 10.0


@dataclass
class _Record:
    successes: float = 0.0
    failures: float = 0.0
    updated_ms: int = 0


class TrustBook:
    def __init__(
        self,
        *,
        prior_weight: float = DEFAULT_PRIOR_WEIGHT,
        configured: Mapping[str, float] | None = None,
        half_life_ms: int | None = None,
    ) -> None:
        if not (prior_weight > 0 and math.isfinite(prior_weight)):
            raise ValueError("prior_weight must be a positive finite number")
        if half_life_ms is not None and half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive")
        self.prior_weight = float(prior_weight)
        self.half_life_ms = half_life_ms
        self._configured: dict[str, float] = {}
        for did, t in (configured or {}).items():
            self.configure(did, t)
        self._records: dict[str, _Record] = {}

    # --- configuration -------------------------------------------------------

    def configure(self, did: str, trust: float) -> None:
        """Set the operator's prior for ``did``; it overrides what the executor claims."""
        if not (0.0 <= trust <= 1.0):
            raise ValueError(f"trust for {did} must be within [0, 1], got {trust!r}")
        self._configured[did] = float(trust)

    def prior(self, did: str, claimed: float | None = None) -> float:
        if did in self._configured:
            return self._configured[did]
        if claimed is None:
            return 0.5
        return min(1.0, max(0.0, float(claimed)))

    # --- observations --------------------------------------------------------

    def _decayed(self, rec: _Record, now_ms: int | None) -> tuple[float, float]:
        if self.half_life_ms is None or now_ms is None or now_ms <= rec.updated_ms:
            return rec.successes, rec.failures
        f = 0.5 ** ((now_ms - rec.updated_ms) / self.half_life_ms)
        return rec.successes * f, rec.failures * f

    def _record(self, did: str, now_ms: int, success: bool) -> None:
        rec = self._records.get(did) or _Record(updated_ms=now_ms)
        s, f = self._decayed(rec, now_ms)
        if success:
            s += 1.0
        else:
            f += 1.0
        self._records[did] = _Record(s, f, max(now_ms, rec.updated_ms))

    def record_success(self, did: str, now_ms: int) -> None:
        self._record(did, now_ms, True)

    def record_failure(self, did: str, now_ms: int) -> None:
        self._record(did, now_ms, False)

    def observed(self, did: str, now_ms: int | None = None) -> tuple[float, float]:
        """(successes, failures) as they weigh at ``now_ms`` (after decay)."""
        rec = self._records.get(did)
        return (0.0, 0.0) if rec is None else self._decayed(rec, now_ms)

    def effective(self, did: str, claimed: float | None = None, now_ms: int | None = None) -> float:
        """The trust placement uses: prior blended with the observed record, in [0, 1]."""
        p = self.prior(did, claimed)
        rec = self._records.get(did)
        if rec is None:
            return p
        s, f = self._decayed(rec, now_ms)
        k = self.prior_weight
        return min(1.0, max(0.0, (s + p * k) / (s + f + k)))

    # --- persistence ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "prior_weight": self.prior_weight,
            "half_life_ms": self.half_life_ms,
            "configured": dict(self._configured),
            "records": {
                did: {"successes": r.successes, "failures": r.failures, "updated_ms": r.updated_ms}
                for did, r in self._records.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustBook:
        try:
            book = cls(
                prior_weight=float(data.get("prior_weight", DEFAULT_PRIOR_WEIGHT)),
                configured=data.get("configured") or {},
                half_life_ms=data.get("half_life_ms"),
            )
            for did, r in (data.get("records") or {}).items():
                s, f = float(r["successes"]), float(r["failures"])
                if s < 0 or f < 0 or not (math.isfinite(s) and math.isfinite(f)):
                    raise ValueError(f"record for {did} has invalid counts")
                book._records[str(did)] = _Record(s, f, int(r.get("updated_ms", 0)))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed trust book: {e}") from None
        return book
