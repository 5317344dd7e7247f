"""Reason codes for dropped messages, and the one error the wire layer raises.

Every code lives here, including the ones only the network layer uses
(``unknown_type``, ``wrong_topic``), so the ``reason`` label of
``icn_messages_dropped`` has one small, stable vocabulary.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a message was refused. Values are short, stable metric labels."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    TOO_DEEP = "too_deep"
    BAD_SCHEMA = "bad_schema"
    BAD_SIGNER = "bad_signer"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    STALE = "stale"
    FUTURE = "future"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_TOPIC = "wrong_topic"

    def __str__(self) -> str:
        return self.value


class WireError(ValueError):
    """Bytes or values refused by the wire layer: a ``Reason`` and a human detail."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)

    def __reduce__(self):  # keep pickling (e.g. across threads/processes) intact
        return (type(self), (self.reason, self.detail))
