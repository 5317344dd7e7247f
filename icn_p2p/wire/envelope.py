"""Signed envelopes: everything that crosses the network is one of these.

Wire layout (canonical CBOR, nothing else accepted)::

    {"body": bstr, "sig": bstr(64)}
    body = canonical CBOR of {"type": str, "payload": any, "signer": did:key,
                              "seq": uint, "ts": uint}

The signature is Ed25519 over the exact ``body`` bytes, and the message id is
SHA-256 of those bytes. Carrying the body as a byte string means the verifier
checks the bytes it received (no re-encoding before verifying), and because
both the body and the outer map must be canonical, one logical message has
exactly one wire form: an id cannot be changed by re-encoding it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from icn_p2p.identity.keys import NodeKey, is_key_did, verify
from icn_p2p.wire.canonical import check_value, dumps, loads
from icn_p2p.wire.errors import Reason, WireError
from icn_p2p.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["Envelope", "seal", "open_envelope", "message_id", "SIG_BYTES", "MAX_SEQ"]

SIG_BYTES = 64
MAX_SEQ = 2**63  # exclusive: seq and ts fit a signed 64-bit integer (SQLite INTEGER)
_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"
_BODY_KEYS = frozenset(("type", "payload", "signer", "seq", "ts"))
_WIRE_KEYS = frozenset(("body", "sig"))
_type_re = re.compile(_TYPE_PATTERN)


class Envelope(BaseModel):
    """A verified (or about to be signed) message.

    ``type`` is a short dotted name (``policy.act``); ``seq`` orders one
    signer's messages (the replay guard needs it strictly increasing per
    signer); ``ts`` is milliseconds since the Unix epoch, UTC.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    type: str = Field(pattern=_TYPE_PATTERN)
    payload: Any
    signer: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0, lt=MAX_SEQ)
    ts: int = Field(ge=0, lt=MAX_SEQ)
    sig: bytes = Field(min_length=SIG_BYTES, max_length=SIG_BYTES)

    _body: bytes | None = PrivateAttr(default=None)

    @field_validator("payload")
    @classmethod
    def _cbor_safe(cls, value: Any) -> Any:
        check_value(value)
        return value

    @property
    def signed_bytes(self) -> bytes:
        """The canonical body the signature covers."""
        if self._body is None:
            self._body = _body_bytes(self.type, self.payload, self.signer, self.seq, self.ts)
        return self._body

    @property
    def message_id(self) -> bytes:
        """SHA-256 of the signed bytes (32 bytes)."""
        return hashlib.sha256(self.signed_bytes).digest()

    def to_wire(self) -> bytes:
        """The envelope's one wire form."""
        return dumps({"body": self.signed_bytes, "sig": self.sig})

    def verify(self) -> bool:
        """True when ``sig`` is the signer's signature over the body."""
        return verify(self.signer, self.signed_bytes, self.sig)


def _body_bytes(type: str, payload: Any, signer: str, seq: int, ts: int) -> bytes:
    return dumps({"type": type, "payload": payload, "signer": signer, "seq": seq, "ts": ts})


def seal(key: NodeKey, type: str, payload: Any, *, seq: int, ts: int) -> bytes:
    """Sign ``payload`` as ``key`` and return the wire bytes.

    Raises ``WireError(bad_schema)`` for a bad type name, seq, ts or a payload
    outside the CBOR data model. The caller checks the size against its
    ``Limits`` if it wants a refusal before publishing (``open_envelope`` on
    the receiving side enforces them).
    """
    if not isinstance(type, str) or not _type_re.match(type):
        raise WireError(Reason.BAD_SCHEMA, f"type {type!r} does not match {_TYPE_PATTERN}")
    for name, value in (("seq", seq), ("ts", ts)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEQ:
            raise WireError(Reason.BAD_SCHEMA, f"{name} must be an int in [0, 2^63), got {value!r}")
    body = _body_bytes(type, payload, key.did, seq, ts)
    return dumps({"body": body, "sig": key.sign(body)})


def _split(data: bytes, limits: Limits) -> tuple[bytes, bytes]:
    """The (body, sig) byte strings of an encoded envelope."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(Reason.MALFORMED, f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise WireError(Reason.TOO_LARGE, f"{len(data)} bytes > {limits.max_bytes}")
    outer = loads(data, max_bytes=limits.max_bytes, max_depth=1, max_items=8, canonical=True)
    if not isinstance(outer, dict) or outer.keys() != _WIRE_KEYS:
        raise WireError(Reason.BAD_SCHEMA, 'an envelope is a map {"body": bytes, "sig": bytes}')
    body, sig = outer["body"], outer["sig"]
    if not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise WireError(Reason.BAD_SCHEMA, "envelope body and sig must be byte strings")
    if len(sig) != SIG_BYTES:
        raise WireError(Reason.BAD_SCHEMA, f"sig is {len(sig)} bytes, not {SIG_BYTES}")
    return body, sig


def message_id(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """SHA-256 of the signed bytes inside wire ``data`` (no signature check).

    Safe and cheap on untrusted input (usable as a GossipSub message-id
    function); raises ``WireError`` if ``data`` is not an envelope.
    """
    body, _ = _split(data, limits)
    return hashlib.sha256(body).digest()


def open_envelope(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Decode and verify wire bytes; raises ``WireError`` with a ``Reason``.

    Checks, cheapest first: size (``too_large``), well-formed canonical CBOR
    within depth/entry limits (``malformed``, ``too_deep``, ``too_large``),
    layout and field types (``bad_schema``), signer is a did:key
    (``bad_signer``), then the Ed25519 signature (``bad_signature``).
    Replay and freshness are the ``ReplayGuard``'s job.
    """
    body_bytes, sig = _split(data, limits)
    body = loads(
        body_bytes,
        max_bytes=limits.max_bytes,
        max_depth=limits.max_depth,
        max_items=limits.max_items,
        canonical=True,
    )
    if not isinstance(body, dict) or body.keys() != _BODY_KEYS:
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise WireError(Reason.BAD_SCHEMA, f"body must have exactly {sorted(_BODY_KEYS)}, got {got}")
    payload = body["payload"]  # already inside the data model: loads scanned it
    try:
        env = Envelope.model_validate({**body, "payload": None, "sig": sig})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise WireError(Reason.BAD_SCHEMA, f"{where}: {err['msg']}") from None
    if not is_key_did(env.signer):
        raise WireError(Reason.BAD_SIGNER, f"signer {env.signer!r} is not an Ed25519 did:key")
    if not verify(env.signer, body_bytes, sig):
        raise WireError(Reason.BAD_SIGNATURE, f"signature does not verify for {env.signer}")
    env = env.model_copy(update={"payload": payload})
    env._body = body_bytes
    return env
