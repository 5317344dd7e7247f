"""Direct notes between two peers over one long-lived libp2p stream per peer.

Offers, claims, answers and results go straight to the peer they concern
instead of through GossipSub: one hop on an already-open, Noise-authenticated
connection instead of several mesh hops with validation at each, and nobody
else needs to see them. Each note is a length-prefixed signed envelope whose
signer must be the peer at the other end of the stream, so a relay cannot
speak for someone else.

Notes to a peer share one outgoing stream, opened on first use and reopened
if it breaks: opening a stream costs a protocol negotiation (round trips
through Noise and Yamux in Python), which under load took longer than an
offer window. Notes queued for a peer while a write to it is under way go
together in the next write (group commit): each write costs a Yamux frame,
a Noise frame and a system call in Python whatever it carries, so under load
the claims, answers and results of many tasks share one. The receiving side
reads each stream in large chunks, splits the notes out of them and hands
each to the handler registered for its type; a handler must return quickly
(start a task for anything long).
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
READ_CHUNK = 64 * 1024


class ConversationError(Exception):
    """A note that cannot be sent or read: closed, timed out, or a bad frame."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Conversation:
    """Signed frames on one stream, with the DID of the peer at the other end."""

    def __init__(self, stream: Any, peer_did: str, *, frame_limit: int) -> None:
        self.stream = stream
        self.peer_did = peer_did
        self.frame_limit = frame_limit
        self._limits = Limits(max_bytes=frame_limit, max_depth=32, max_items=100_000)
        self._buf = bytearray()

    async def write(self, frames: bytes) -> None:
        """Write sealed frames (one or several, concatenated) to the stream."""
        try:
            await self.stream.write(frames)
        except Exception as exc:
            raise ConversationError("closed", repr(exc)) from None

    async def recv(self) -> Envelope:
        (length,) = struct.unpack(">I", await self._read_exactly(4))
        if length > self.frame_limit:
            raise ConversationError("too_large", f"frame of {length} bytes")
        data = await self._read_exactly(length)
        try:
            env = open_envelope(data, limits=self._limits)
        except WireError as exc:
            raise ConversationError(exc.reason.value, exc.detail) from None
        if env.signer != self.peer_did:
            raise ConversationError("bad_signer", f"frame signed by {env.signer}, stream from {self.peer_did}")
        return env

    async def _read_exactly(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            try:
                chunk = await self.stream.read(max(READ_CHUNK, n - len(buf)))
            except Exception as exc:
                raise ConversationError("closed", repr(exc)) from None
            if not chunk:
                raise ConversationError("closed", "stream ended")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    async def close(self, *, reset: bool = False) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await (self.stream.reset() if reset else self.stream.close())
            except Exception:
                pass


def seal_frame(sealer: Sealer, type: str, payload: Any, frame_limit: int) -> bytes:
    try:
        data = sealer.seal(type, payload)
    except WireError as exc:  # our own payload does not fit the wire: a bug, said plainly
        raise ConversationError(exc.reason.value, exc.detail) from None
    if len(data) > frame_limit:
        raise ConversationError("too_large", f"{len(data)} bytes")
    return struct.pack(">I", len(data)) + data


class _Queued:
    """A frame waiting for its peer's next write, and how that write ended."""

    __slots__ = ("frame", "done", "error")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.done = False
        self.error: ConversationError | None = None


NoteHandler = Callable[[Envelope, Conversation], Awaitable[None]]


class DirectChannel:
    """Sends notes to peers and dispatches the notes they send."""

    def __init__(self, host: Any, sealer: Sealer, *, protocol: str = PROTOCOL_ID,
                 frame_limit: int = DEFAULT_FRAME_LIMIT) -> None:
        self.host = host
        self.sealer = sealer
        self.protocol = protocol
        self.frame_limit = frame_limit
        self._handlers: dict[str, NoteHandler] = {}
        self._outboxes: dict[Any, Conversation] = {}
        self._locks: dict[Any, trio.Lock] = {}
        self._queued: dict[Any, list[_Queued]] = {}
        self.writes = 0  # stream writes made (each carries one or more notes)
        host.libp2p.set_stream_handler(protocol, self._serve)

    def handle(self, type: str, handler: NoteHandler) -> None:
        self._handlers[type] = handler

    async def notify(self, peer_id: Any, type: str, payload: Any, *, timeout: float = 5.0) -> None:
        """Send one note on this peer's shared stream; returns once it is written.

        The note joins the peer's queue; whoever holds the peer's lock next
        writes everything queued in one write, so a note may be written by
        another task's call. The stream is opened once and reopened once if
        it broke.
        """
        await self.send_frame(peer_id, self.seal(type, payload), timeout=timeout)

    def seal(self, type: str, payload: Any) -> bytes:
        """One note as framed for the wire: seal once, ``send_frame`` it to many peers."""
        return seal_frame(self.sealer, type, payload, self.frame_limit)

    async def send_frame(self, peer_id: Any, frame: bytes, *, timeout: float = 5.0) -> None:
        """``notify`` with a note already sealed by ``seal``."""
        item = _Queued(frame)
        self._queued.setdefault(peer_id, []).append(item)
        lock = self._locks.setdefault(peer_id, trio.Lock())
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: the note is not sent
            queued = self._queued.get(peer_id)
            if not item.done and queued is not None and item in queued:
                queued.remove(item)
            raise
        try:
            if not item.done:
                batch = self._queued.pop(peer_id, [])
                try:
                    await self._write(peer_id, b"".join(q.frame for q in batch), timeout)
                except ConversationError as exc:
                    for q in batch:
                        q.error = exc
                    raise
                finally:
                    for q in batch:
                        q.done = True
        finally:
            lock.release()
        if item.error is not None:
            raise item.error

    async def _write(self, peer_id: Any, frames: bytes, timeout: float) -> None:
        for attempt in (0, 1):
            conv = self._outboxes.get(peer_id)
            if conv is None:
                conv = await self._open(peer_id, timeout)
                self._outboxes[peer_id] = conv
            try:
                await conv.write(frames)
                self.writes += 1
                return
            except ConversationError:
                self._outboxes.pop(peer_id, None)
                await conv.close(reset=True)
                if attempt:
                    raise

    async def _open(self, peer_id: Any, timeout: float) -> Conversation:
        with trio.move_on_after(timeout) as scope:
            try:
                stream = await self.host.libp2p.new_stream(peer_id, [self.protocol])
            except Exception as exc:
                raise ConversationError("unreachable", f"{short(peer_id)}: {exc!r}") from None
        if scope.cancelled_caught:
            raise ConversationError("timeout", f"opening a stream to {short(peer_id)}")
        return Conversation(stream, did_for_peer(peer_id), frame_limit=self.frame_limit)

    async def _serve(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id
        if self.host.is_refused(peer):
            await stream.reset()
            return
        conv = Conversation(stream, did_for_peer(peer), frame_limit=self.frame_limit)
        try:
            while True:
                env = await conv.recv()
                handler = self._handlers.get(env.type)
                if handler is None:
                    metrics.MESSAGES_DROPPED.labels("direct", "unknown_type").inc()
                    log.info("event=direct_dropped peer=%s reason=unknown_type type=%s", short(peer), env.type)
                    continue
                try:
                    await handler(env, conv)
                except Exception as exc:  # a handler bug must not end the peer's stream
                    log.exception("event=direct_handler_crashed peer=%s type=%s error=%r", short(peer),
                                  env.type, exc)
        except ConversationError as exc:
            if exc.reason != "closed":
                metrics.MESSAGES_DROPPED.labels("direct", exc.reason).inc()
                log.info("event=direct_stream_dropped peer=%s reason=%s detail=%s", short(peer), exc.reason,
                         exc.detail)
        finally:
            await conv.close()
