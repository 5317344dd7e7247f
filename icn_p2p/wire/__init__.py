"""The wire layer: canonical CBOR, signed envelopes, limits, reason codes, replay guard."""

from icn_p2p.wire.canonical import check_value, dumps, loads
from icn_p2p.wire.envelope import MAX_SEQ, SIG_BYTES, Envelope, message_id, open_envelope, seal
from icn_p2p.wire.errors import Reason, WireError
from icn_p2p.wire.floor_store import FloorStore
from icn_p2p.wire.limits import DEFAULT_LIMITS, Limits
from icn_p2p.wire.replay import ReplayGuard
from icn_p2p.wire.sealer import Sealer

__all__ = [
    "DEFAULT_LIMITS",
    "Envelope",
    "FloorStore",
    "Limits",
    "MAX_SEQ",
    "Reason",
    "ReplayGuard",
    "SIG_BYTES",
    "Sealer",
    "WireError",
    "check_value",
    "dumps",
    "loads",
    "message_id",
    "open_envelope",
    "seal",
]
