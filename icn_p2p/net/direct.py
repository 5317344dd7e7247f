"""Direct conversations between two peers over one libp2p stream.

Offers, claims and results go straight to the peer they concern instead of
through GossipSub: one hop on an already-open, Noise-authenticated connection
instead of several mesh hops with validation at each, and nobody else needs to
see them. A conversation is a sequence of length-prefixed frames, each a
signed envelope; the signer must be the peer at the other end of the stream,
so a relay cannot speak for someone else.

Handlers are registered per first message type. A handler gets the opening
envelope and the conversation, and may keep the conversation open (a claim
stays open until its result is sent).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from icn_p2p import metrics
from icn_p2p.wire import Envelope, Limits, Sealer, WireError, open_envelope

from .peers import did_for_peer, short

log = logging.getLogger(__name__)

PROTOCOL_ID = "/icn/task/1"
DEFAULT_FRAME_LIMIT = 16 * 1024 * 1024  # a claim carries the WebAssembly module


class ConversationError(Exception):
    """The conversation cannot go on: closed, timed out, or a bad frame."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Conversation:
    """Signed frames in both directions on one stream."""

    def __init__(self, stream: Any, sealer: Sealer, peer_did: str, *, frame_limit: int) -> None:
        self.stream = stream
        self.sealer = sealer
        self.peer_did = peer_did
        self.frame_limit = frame_limit
        self._limits = Limits(max_bytes=frame_limit, max_depth=32, max_items=100_000)
        self._send_lock = trio.Lock()

    async def send(self, type: str, payload: Any) -> None:
        data = self.sealer.seal(type, payload)
        if len(data) > self.frame_limit:
            raise ConversationError("too_large", f"{len(data)} bytes")
        async with self._send_lock:
            try:
                await self.stream.write(struct.pack(">I", len(data)) + data)
            except Exception as exc:
                raise ConversationError("closed", repr(exc)) from None

    async def recv(self, timeout: float | None = None) -> Envelope:
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            header = await self._read_exactly(4)
            (length,) = struct.unpack(">I", header)
            if length > self.frame_limit:
                raise ConversationError("too_large", f"frame of {length} bytes")
            data = await self._read_exactly(length)
        if scope.cancelled_caught:
            raise ConversationError("timeout", f"no frame from {self.peer_did} in {timeout}s")
        try:
            env = open_envelope(data, limits=self._limits)
        except WireError as exc:
            metrics.MESSAGES_DROPPED.labels("direct", exc.reason.value).inc()
            raise ConversationError(exc.reason.value, exc.detail) from None
        if env.signer != self.peer_did:
            metrics.MESSAGES_DROPPED.labels("direct", "bad_signer").inc()
            raise ConversationError("bad_signer", f"frame signed by {env.signer}, stream from {self.peer_did}")
        return env

    async def _read_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = await self.stream.read(n - len(buf))
            except Exception as exc:
                raise ConversationError("closed", repr(exc)) from None
            if not chunk:
                raise ConversationError("closed", "stream ended")
            buf += chunk
        return bytes(buf)

    async def close(self) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self.stream.close()
            except Exception:
                pass

    async def reset(self) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self.stream.reset()
            except Exception:
                pass


ConversationHandler = Callable[[Envelope, Conversation], Awaitable[None]]


class DirectChannel:
    """Opens conversations with peers and dispatches the ones they open."""

    def __init__(self, host: Any, sealer: Sealer, *, protocol: str = PROTOCOL_ID,
                 frame_limit: int = DEFAULT_FRAME_LIMIT, first_frame_timeout: float = 5.0) -> None:
        self.host = host
        self.sealer = sealer
        self.protocol = protocol
        self.frame_limit = frame_limit
        self.first_frame_timeout = first_frame_timeout
        self._handlers: dict[str, ConversationHandler] = {}
        host.libp2p.set_stream_handler(protocol, self._serve)

    def handle(self, type: str, handler: ConversationHandler) -> None:
        self._handlers[type] = handler

    async def open(self, peer_id: Any, *, timeout: float = 5.0) -> Conversation:
        """A new conversation with a connected peer."""
        with trio.move_on_after(timeout) as scope:
            try:
                stream = await self.host.libp2p.new_stream(peer_id, [self.protocol])
            except Exception as exc:
                raise ConversationError("unreachable", f"{short(peer_id)}: {exc!r}") from None
        if scope.cancelled_caught:
            raise ConversationError("timeout", f"opening a stream to {short(peer_id)}")
        return Conversation(stream, self.sealer, did_for_peer(peer_id), frame_limit=self.frame_limit)

    async def _serve(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id
        if self.host.is_refused(peer):
            await stream.reset()
            return
        conv = Conversation(stream, self.sealer, did_for_peer(peer), frame_limit=self.frame_limit)
        try:
            env = await conv.recv(self.first_frame_timeout)
            handler = self._handlers.get(env.type)
            if handler is None:
                metrics.MESSAGES_DROPPED.labels("direct", "unknown_type").inc()
                log.info("event=direct_dropped peer=%s reason=unknown_type type=%s", short(peer), env.type)
                return
            await handler(env, conv)
        except ConversationError as exc:
            log.info("event=direct_failed peer=%s reason=%s detail=%s", short(peer), exc.reason, exc.detail)
        except Exception as exc:  # a handler bug must not take the node down
            log.exception("event=direct_handler_crashed peer=%s error=%r", short(peer), exc)
        finally:
            await conv.close()
