"""Generic validation of everything the network carries.

The network layer knows no business rules: it checks that a message is a
well-formed signed envelope within the size limits, that its type is one the
node registered, that the type travels on the topic it arrived on, that the
type's own schema hook accepts the payload, and (for gossip) that it is not a
replay. Anything else is the receiving handler's business.

The checks run cheapest first and the replay guard runs last, so it records
only messages that passed everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icn_p2p.wire import DEFAULT_LIMITS, Envelope, Limits, Reason, ReplayGuard, WireError, open_envelope

log = logging.getLogger(__name__)

#: A per-type schema hook: returns why the payload is refused, or None.
SchemaHook = Callable[[Envelope, str], "Reason | str | None"]


@dataclass(frozen=True)
class MessageKind:
    """One message type: the topic family it travels on and its schema hook.

    ``topic`` is an exact topic (``icn/policy/1``) or a family ending in
    ``/*`` (``icn/usage/1/*``: any one more path segment).
    """

    type: str
    topic: str
    schema: SchemaHook | None = None

    def matches_topic(self, topic: str) -> bool:
        if self.topic.endswith("/*"):
            prefix = self.topic[:-1]
            rest = topic[len(prefix):]
            return topic.startswith(prefix) and bool(rest) and "/" not in rest
        return topic == self.topic


class Rejected(Exception):
    """A message refused by validation (carries the reason label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = str(reason)
        self.detail = detail


@dataclass
class MessageTypes:
    """The registry of message types a node understands."""

    kinds: dict[str, MessageKind] = field(default_factory=dict)

    def register(self, type: str, topic: str, schema: SchemaHook | None = None) -> MessageKind:
        kind = MessageKind(type, topic, schema)
        self.kinds[type] = kind
        return kind

    def get(self, type: str) -> MessageKind | None:
        return self.kinds.get(type)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EnvelopeValidator:
    """Decode, verify and check one message; raises :class:`Rejected`.

    ``check_replay=False`` is for state pulled by sync: those items are
    idempotent merges of signed records (an old act is history, not a replay),
    so only the per-message checks apply.
    """

    def __init__(
        self,
        types: MessageTypes,
        replay: ReplayGuard | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.types = types
        self.replay = replay
        self.limits = limits
        self.clock_ms = clock_ms

    def validate(self, data: bytes, topic: str | None, *, check_replay: bool = True,
                 expect_type: str | None = None) -> Envelope:
        if len(data) > self.limits.max_bytes:
            raise Rejected(Reason.TOO_LARGE.value, f"{len(data)} bytes > {self.limits.max_bytes}")
        try:
            env = open_envelope(data, limits=self.limits)
        except WireError as exc:
            raise Rejected(exc.reason.value, exc.detail) from None
        except Exception as exc:  # never let odd input escape as a crash
            raise Rejected(Reason.MALFORMED.value, repr(exc)) from None
        kind = self.types.get(env.type)
        if kind is None:
            raise Rejected(Reason.UNKNOWN_TYPE.value, env.type)
        if expect_type is not None and env.type != expect_type:
            raise Rejected(Reason.WRONG_TOPIC.value, f"{env.type} where {expect_type} was expected")
        if topic is not None and not kind.matches_topic(topic):
            raise Rejected(Reason.WRONG_TOPIC.value, f"{env.type} does not travel on {topic}")
        if kind.schema is not None:
            try:
                reason = kind.schema(env, topic or "")
            except Exception as exc:
                raise Rejected(Reason.BAD_SCHEMA.value, repr(exc)) from None
            if reason is not None:
                raise Rejected(str(getattr(reason, "value", reason)), f"schema hook for {env.type}")
        if check_replay and self.replay is not None:
            reason = self.replay.accept(env, self.clock_ms())
            if reason is not None:
                raise Rejected(reason.value, f"{env.signer} seq {env.seq}")
        return env


def describe(value: Any) -> str:
    """A short printable form of untrusted input for log lines."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
