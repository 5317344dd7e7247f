"""Size limits for one message, checked before and while decoding it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Bounds on one encoded message.

    ``max_bytes`` stays well under libp2p's ~1 MiB frame limit, beyond which
    GossipSub drops a message silently; refusing earlier gives a reason code.
    ``max_depth`` counts nested containers (the envelope body map is level 1,
    so a payload may nest ``max_depth - 1`` levels). ``max_items`` caps the
    entries of all containers of one message together (an array of n counts n,
    a map of n pairs counts n).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=256 * 1024, ge=64, le=16 * 1024 * 1024)
    max_depth: int = Field(default=32, ge=1, le=1024)
    max_items: int = Field(default=10_000, ge=1, le=10_000_000)


DEFAULT_LIMITS = Limits()
