"""An executor's offer to run one announced task.

``rtt_ms`` is measured by the submitter (ping) and filled in on receipt; an
offer never vouches for its own round-trip time, so ``from_wire`` drops it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from icn_p2p.core.task import ExecutorInfo


class Offer(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    task_id: str = Field(min_length=1, max_length=512)
    executor: ExecutorInfo
    rtt_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    offered_at_ms: int = Field(ge=0)

    @property
    def did(self) -> str:
        return self.executor.did

    def with_rtt(self, rtt_ms: float | None) -> Offer:
        """The same offer with the submitter's own RTT measurement."""
        return self.model_copy(update={"rtt_ms": None if rtt_ms is None else float(rtt_ms)})

    def with_claims_since(self, claimed_at_ms: list[int]) -> Offer:
        """The same offer with the claims this submitter sent the executor after it was made.

        An offer's queue depth is a snapshot; in a burst, every offer in a
        window predates the claims the window leads to, so without this the
        same executor would win them all. Claims older than the offer are
        already in its queue depth and are not counted again.
        """
        extra = sum(1 for t in claimed_at_ms if t >= self.offered_at_ms)
        if not extra:
            return self
        executor = self.executor.model_copy(update={"queue_depth": self.executor.queue_depth + extra})
        return self.model_copy(update={"executor": executor})

    @classmethod
    def from_wire(cls, data: Any, *, rtt_ms: float | None = None) -> Offer:
        """Validate an offer received from the network, replacing any claimed RTT."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "rtt_ms"}
        offer = cls.model_validate(data, strict=False)
        return offer.with_rtt(rtt_ms) if rtt_ms is not None else offer
