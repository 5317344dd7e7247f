"""Every change we make to py-libp2p 0.8.1 behaviour, in one place.

py-libp2p spends most of a node's CPU on work that does not need doing once
per message: profiles of a 50-node mesh (see ``benchmarks/propagation.py``)
showed more time in Yamux flow-control frames, per-RPC signed peer records
and byte-at-a-time stream reads than in our own validation. Each override
below says what it changes and why. :func:`apply` installs the module-level
ones (idempotent; :class:`~icn_p2p.net.gossip.Gossip` calls it on
construction); :class:`TunedGossipSub` is the router class the node uses.

Every patched or re-implemented library function is pinned by a hash of its
source in :data:`PINNED_SOURCES`; ``tests/net/test_libp2p_tuning.py`` fails
when the installed library differs, so an upgrade gets these patches
re-reviewed instead of silently keeping or losing them.

None of these weakens a check: message signatures (strict signing), our
envelope signatures, peer-record signatures and size limits all still run,
each once per distinct input instead of once per RPC.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import time
import weakref
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import libp2p.stream_muxer.yamux.yamux as _yamux_module
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.utils.varint import decode_uvarint

log = logging.getLogger(__name__)

LIBP2P_VERSION = "0.8.1"

#: A subscription's receive channel (library default 32, drops when full).
SUBSCRIPTION_QUEUE = 4096
#: A peer's outbound RPC queue (library default 32, drops when full).
OUTBOUND_QUEUE = 1024
#: How long our own signed peer record is reused before the library re-checks
#: our listen addresses (it walks every listener and transport to do so).
SENDER_RECORD_REFRESH_S = 5.0
#: How long a peer's verified record is trusted without verifying it again
#: (well under the 2 h address TTL the library stores it with, so the
#: peerstore entry is refreshed long before it expires).
PEER_RECORD_REVERIFY_S = 600.0
#: Bytes asked of a pubsub stream per read (one RPC is ~0.7 KiB here).
STREAM_READ_CHUNK = 64 * 1024

# Library code our overrides replace or depend on, by sha256 of its source.
PINNED_SOURCES: dict[str, str] = {
    # 1: re-implemented without two of its branches
    "libp2p.stream_muxer.yamux.yamux.YamuxStream._auto_tune_and_send_window_update":
        "6ebcbd822fe7f996efbc9efd5dceea1e8d0d729380a807eb7e4aa81cf79ca036",
    # 2, 3, 4: wrapped or replaced
    "libp2p.peer.peerstore.env_to_send_in_RPC":
        "9fea9d702c187d224bec58beb9b09961e93c863bcad8a94baa90a79a287fed36",
    "libp2p.pubsub.utils.maybe_consume_signed_record":
        "11b2181c27d75df4753635abc3ee3c7e9adaf6a0dd7829d8e6c416f161ef0f8b",
    "libp2p.utils.varint.read_varint_prefixed_bytes_limited":
        "75623a1c5c4e2c39cdd128685dd7eb8c510939bf06f957489d4dccc4e7ca47fd",
    # 4: the only reader of an inbound pubsub stream, and the errors it handles
    "libp2p.pubsub.pubsub.Pubsub.continuously_read_stream":
        "ac0c4ad87ca39288d70fcc5a58a842613bc8c47f32c171995a5775bc83fa4430",
    # 6: overridden; 6 relies on publish building one RPC for all peers
    "libp2p.pubsub.gossipsub.GossipSub.send_rpc":
        "9829bb1473a299fb8a54b2541fe8f05c5b7974b84c75eab114680460b0c37257",
    "libp2p.pubsub.gossipsub.GossipSub.publish":
        "b978282af46297f744bd155bcba9818871f8c96d3148c698c7da33b79027c92a",
    # 5, 6: the hello packet (with our record) precedes the peer's queue (RpcQueue)
    "libp2p.pubsub.pubsub.Pubsub._handle_new_peer":
        "305ba4224e6151d750666fb7e2f43b1c58ed44d1b415409d05207065ffbcbc35",
}


def source_hash(obj: Any) -> str:
    """sha256 of an object's source text (what :data:`PINNED_SOURCES` holds)."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def resolve(dotted: str) -> Any:
    """The library object a dotted name in :data:`PINNED_SOURCES` names (the original if patched)."""
    if dotted in _ORIGINALS:
        return _ORIGINALS[dotted]
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


# --- 1. Yamux: credit the sender in batches, not on every read --------------------------

async def _batched_window_update(self: Any, *, bytes_read: int = 0) -> None:
    """Replacement for ``YamuxStream._auto_tune_and_send_window_update``.

    The library sends a WINDOW_UPDATE frame after nearly *every* read: its
    "release on read" and "partial slack" branches top the window up as soon
    as anything was consumed, and pubsub reads each RPC in two or three reads
    (varint bytes, then body). Each update is a Noise-encrypted frame and a
    ``send()`` system call here and a read, decrypt and dispatch at the peer,
    per message per hop: 18% of a 50-node mesh's CPU. This version keeps only
    the library's go-yamux branches: credit the sender once half the receive
    window has been consumed (``GrowTo`` with hysteresis, with the library's
    auto-tuning of the window size). A sender never stalls while its reader
    keeps reading: it always has at least half a window (128 KiB) of credit.
    With ``PY_YAMUX_RELEASE_ON_READ`` set, the library's own logic runs.
    """
    if "PY_YAMUX_RELEASE_ON_READ" in os.environ:
        await _ORIGINALS[_YAMUX_UPDATE](self, bytes_read=bytes_read)
        return
    total_delta = 0
    async with self.window_lock:
        if bytes_read > 0:
            self._pending_recv_release += bytes_read
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        threshold = self._grow_threshold()
        if delta >= threshold and delta > 0:
            self._window_update_full_grow += 1
            total_delta = self._grow_to_delta(buffered)
            total_delta += self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        elif self._pending_recv_release >= threshold:
            pending = self._pending_recv_release
            self.recv_window += pending
            total_delta = pending
            self._pending_recv_release = 0
            self._window_update_pending_flush += 1
            total_delta += self._apply_autotune_epoch(buffered)
    if total_delta > 0:
        await self.send_window_update(total_delta, skip_lock=True)


_YAMUX_UPDATE = "libp2p.stream_muxer.yamux.yamux.YamuxStream._auto_tune_and_send_window_update"


# --- 2. Our signed peer record: build once, not per RPC ---------------------------------

_sent_records: "weakref.WeakKeyDictionary[Any, tuple[bytes, float, tuple[str, ...]]]" = \
    weakref.WeakKeyDictionary()


def _listener_key(host: Any) -> tuple[str, ...]:
    try:
        return tuple(host.get_network().listeners)
    except Exception:
        return ()


def _cached_env_to_send_in_RPC(host: Any) -> tuple[bytes, bool]:
    """Replacement for ``env_to_send_in_RPC`` in the pubsub modules.

    The library attaches our signed peer record to every RPC and, to do so,
    lists the host's listen addresses (it walks every listener and parses
    multiaddrs) and compares them with the cached record, per RPC. We reuse
    the serialized record while the set of listeners is the same, for at most
    ``SENDER_RECORD_REFRESH_S`` (observed addresses can change too), and then
    let the library check the addresses again (and re-sign if they changed).
    """
    now = time.monotonic()
    key = _listener_key(host)
    hit = _sent_records.get(host)
    if hit is not None and hit[2] == key and now - hit[1] < SENDER_RECORD_REFRESH_S:
        return hit[0], False
    record, created = _ORIGINALS["libp2p.peer.peerstore.env_to_send_in_RPC"](host)
    _sent_records[host] = (record, now, key)
    return record, created


# --- 3. A peer's signed record: verify once per peer, not per RPC -----------------------

_seen_records: "weakref.WeakKeyDictionary[Any, dict[Any, tuple[bytes, float]]]" = weakref.WeakKeyDictionary()
_MAX_RECORDS_PER_HOST = 4096


def _cached_maybe_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    """Replacement for ``maybe_consume_signed_record`` in the pubsub modules.

    The library parses the record envelope, verifies its Ed25519 signature,
    and rewrites the peer's address book for every RPC that carries one (and
    twice for RPCs with control messages: pubsub and the router each do it).
    Bytes identical to a record we verified and stored for the same peer
    within ``PEER_RECORD_REVERIFY_S`` are accepted without that work; any
    other record goes through the library's checks.
    """
    if not msg.HasField("senderRecord"):
        return True
    raw = msg.senderRecord
    now = time.monotonic()
    per_host = _seen_records.get(host)
    if per_host is None:
        per_host = _seen_records[host] = {}
    hit = per_host.get(peer_id)
    if hit is not None and hit[0] == raw and now - hit[1] < PEER_RECORD_REVERIFY_S:
        return True
    ok = _ORIGINALS["libp2p.pubsub.utils.maybe_consume_signed_record"](msg, host, peer_id)
    if ok:
        if len(per_host) >= _MAX_RECORDS_PER_HOST:
            per_host.clear()
        per_host[peer_id] = (raw, now)
    return ok


# --- 4. Pubsub streams: read in chunks, not a byte at a time ----------------------------

_read_buffers: "weakref.WeakKeyDictionary[Any, bytearray]" = weakref.WeakKeyDictionary()


async def _buffered_read_varint_prefixed_bytes_limited(reader: Any, max_length: int) -> bytes:
    """Replacement for ``read_varint_prefixed_bytes_limited`` in ``pubsub.pubsub``.

    Pubsub reads each inbound RPC as one read per varint byte and one for the
    body, each through the stream's locks, Yamux's buffer bookkeeping and its
    flow-control accounting. The pubsub read loop is the only reader of its
    stream, so we read what is available (up to ``STREAM_READ_CHUNK``) into a
    per-stream buffer and cut RPCs out of it: usually one read per RPC, or
    fewer when several arrive together. Same contract as the library:
    ``ParseError`` for a bad prefix, ``MessageTooLarge`` before the body is
    read, ``IncompleteReadError`` when the stream ends mid-RPC.
    """
    if max_length <= 0:
        raise ValueError("max_length must be greater than 0")
    buf = _read_buffers.get(reader)
    if buf is None:
        buf = _read_buffers[reader] = bytearray()
    while True:  # the length prefix
        end = -1
        for i in range(min(len(buf), 10)):
            if not buf[i] & 0x80:
                end = i + 1
                break
        if end > 0:
            break
        if len(buf) >= 10:
            raise ParseError("Varint decoding error: integer exceeds maximum size of 64 bits")
        chunk = await reader.read(STREAM_READ_CHUNK)
        if not chunk:
            raise IncompleteReadError("Stream ended while reading varint length prefix",
                                      expected_bytes=1, received_bytes=0)
        buf += chunk
    length = decode_uvarint(bytes(buf[:end]))
    if length > max_length:
        raise MessageTooLarge(f"Message length {length} exceeds maximum allowed {max_length}")
    total = end + length
    while len(buf) < total:
        chunk = await reader.read(max(STREAM_READ_CHUNK, total - len(buf)))
        if not chunk:
            raise IncompleteReadError(f"Stream ended after {len(buf) - end} of {length} bytes",
                                      expected_bytes=length, received_bytes=len(buf) - end)
        buf += chunk
    out = bytes(buf[end:total])
    del buf[:total]
    return out


# --- 5. Queue sizes that drop silently ---------------------------------------------------

class _LargeRpcQueue(RpcQueue):
    """A peer's outbound queue of ``OUTBOUND_QUEUE`` RPCs (library: 32, drops when full)."""

    def __init__(self, max_size: int = OUTBOUND_QUEUE, max_message_size: int | None = None) -> None:
        if max_message_size is None:
            super().__init__(max_size)
        else:
            super().__init__(max_size, max_message_size)


# --- 6. The router ------------------------------------------------------------------------

class TunedGossipSub(GossipSub):
    """GossipSub without the peer scorer, that does not repeat our peer record in message RPCs.

    The library attaches our signed peer record (~170 bytes, a quarter of a
    policy act) to every RPC, including every forwarded message. A peer
    already has it: it arrives in the hello packet that opens each pubsub
    stream (written before the peer gets an outbound queue) and in the
    router's control RPCs. Message RPCs go out without it; control RPCs are
    untouched. Peers that ignore the field (go, js) see no difference.
    """

    _stripped: tuple[rpc_pb2.RPC, rpc_pb2.RPC] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The library's peer scorer runs with zero weights here (our validator keeps
        # its own penalties and bans) yet is consulted on every forwarded message;
        # the router checks ``scorer is not None`` at each use.
        self.scorer = None

    def send_rpc(self, peer_id, rpc: rpc_pb2.RPC, priority: bool = False) -> None:
        if rpc.publish and rpc.HasField("senderRecord"):
            cached = self._stripped
            if cached is None or cached[0] is not rpc:  # one copy per message, not per peer
                lean = rpc_pb2.RPC()
                lean.CopyFrom(rpc)
                lean.ClearField("senderRecord")
                cached = self._stripped = (rpc, lean)
            rpc = cached[1]
        super().send_rpc(peer_id, rpc, priority)


# --- installation ---------------------------------------------------------------------------

_ORIGINALS: dict[str, Any] = {}
_applied = False


def _remember(name: str, obj: Any) -> None:
    _ORIGINALS.setdefault(name, obj)


def apply() -> None:
    """Install the module-level overrides (idempotent)."""
    global _applied
    if _applied:
        return
    import libp2p.peer.peerstore as peerstore
    import libp2p.pubsub.utils as pubsub_utils
    import libp2p.utils.varint as varint

    _remember(_YAMUX_UPDATE, _yamux_module.YamuxStream._auto_tune_and_send_window_update)
    _remember("libp2p.peer.peerstore.env_to_send_in_RPC", peerstore.env_to_send_in_RPC)
    _remember("libp2p.pubsub.utils.maybe_consume_signed_record", pubsub_utils.maybe_consume_signed_record)
    _remember("libp2p.utils.varint.read_varint_prefixed_bytes_limited", varint.read_varint_prefixed_bytes_limited)

    _yamux_module.YamuxStream._auto_tune_and_send_window_update = _batched_window_update
    for module in (_pubsub_module, _gossipsub_module):
        module.env_to_send_in_RPC = _cached_env_to_send_in_RPC
        module.maybe_consume_signed_record = _cached_maybe_consume_signed_record
    _pubsub_module.read_varint_prefixed_bytes_limited = _buffered_read_varint_prefixed_bytes_limited
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(_pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, SUBSCRIPTION_QUEUE)
    _pubsub_module.RpcQueue = _LargeRpcQueue
    _applied = True
    log.debug("event=libp2p_tuning_applied version=%s", LIBP2P_VERSION)
