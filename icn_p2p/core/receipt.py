"""What an executor signs after running a task: the execution receipt.

The receipt is the evidence usage accounting and credit settlement rest on, so
it names the task (id and hash), whose work it was (coop, member), who ran it
(the executor's ``did:key``), how it ended and what it cost. Signing and
verification live in ``icn_p2p.executor.receipts``; this module only holds
the model, so every layer can read a receipt without the signing machinery.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

RECEIPT_TYPE = "icn.receipt.v1"

_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Text = Annotated[str, Field(min_length=1, max_length=512)]
_U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]


class Outcome(str, Enum):
    """How a run ended. Only ``completed`` produced a result."""

    COMPLETED = "completed"
    TRAPPED = "trapped"
    OUT_OF_FUEL = "out_of_fuel"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    INVALID_MODULE = "invalid_module"
    IMPORTS_NOT_ALLOWED = "imports_not_allowed"
    NO_ENTRY = "no_entry"
    BAD_ARGS = "bad_args"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def ran(self) -> bool:
        """True when guest code ran (the executor spent resources on it)."""
        return self in _RAN


_RAN = frozenset(
    {Outcome.COMPLETED, Outcome.TRAPPED, Outcome.OUT_OF_FUEL, Outcome.TIMEOUT,
     Outcome.MEMORY_LIMIT, Outcome.CANCELLED}
)


class Receipt(BaseModel):
    """A signed statement by ``executor`` of how a task's run ended and what it cost."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    task_id: _Text
    task_hash: _Hex64
    coop_id: _Text
    member: _Text
    executor: _Text
    outcome: Annotated[Outcome, Strict(False)]
    fuel_used: _U64
    cpu_ms: _U64
    wall_ms: _U64
    completed_at_ms: _U64
    result_digest: _Hex64
    signature: bytes = Field(default=b"", max_length=64)

    def body(self) -> dict[str, Any]:
        """The signed part: every field but the signature, plus the receipt type."""
        data = self.model_dump(mode="python", exclude={"signature"})
        data["outcome"] = self.outcome.value
        data["type"] = RECEIPT_TYPE
        return data

    def to_wire(self) -> dict[str, Any]:
        """A CBOR-safe dict (str, int, bytes only)."""
        data = self.model_dump(mode="python")
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_wire(cls, data: Any) -> "Receipt":
        """Parse a wire dict; raises ``pydantic.ValidationError`` on anything malformed."""
        return cls.model_validate(data)
