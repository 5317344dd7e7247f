"""Anti-entropy sync, protocol ``/icn/sync/1``.

Gossip is fast but lossy (a message dropped at its origin is never repaired,
a node that was down or cut off misses everything sent meanwhile). Sync makes
replicated state converge anyway: on connect, and every few seconds with a
random neighbour, a node compares per-source digests with a peer and pulls
what it lacks.

A *sync source* is anything that can summarise its state per scope and hand
out what a peer lacks: the policy store (one scope, ``""``), the usage store
(one scope per coop). Sources plug in through :class:`SyncSource`; the
network layer knows nothing of their contents.

Session (initiator pulls; both sides initiate on their own schedule)::

    I -> R  {"op": "hello", "v": 1, "sources": {name: {scope: digest}}}
    R -> I  {"op": "hello", "v": 1, "sources": {name: {scope: digest}}}   # scopes both hold
    for each scope whose digests differ:
      I -> R  {"op": "pull", "source": name, "scope": scope, "summary": <source summary>}
      R -> I  {"op": "items", "items": [envelope bytes...], "more": bool}  # repeat while more
    I -> R  {"op": "bye"}

Frames are a 4-byte big-endian length and canonical CBOR, bounded in size.
Items travel as envelopes sealed by the responder (so a peer serving forged
state is accountable for it) and each one passes the same validation as
gossip, except the replay guard: synced items are idempotent merges of
signed records, and an old act is history, not a replay. A scope of usage is
only offered to a peer that serves the same coop (the responder answers only
for scopes both hold), so a coop's usage never leaves the nodes serving it.
"""

from __future__ import annotations

import logging
import random
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import trio
from libp2p.peer.id import ID

from icn_p2p.metrics import MESSAGES_DROPPED, SYNC_ITEMS, SYNC_ROUNDS
from icn_p2p.net.host import MeshHost
from icn_p2p.net.peers import short
from icn_p2p.net.validation import EnvelopeValidator, Rejected
from icn_p2p.wire import Sealer, WireError, dumps, loads

log = logging.getLogger(__name__)

PROTOCOL_ID = "/icn/sync/1"
VERSION = 1


@runtime_checkable
class SyncSource(Protocol):
    """One replicated state that sync keeps converged.

    ``item_type`` is the envelope type its items travel as (its schema hook
    validates them); ``topic`` is the topic family that type belongs to.
    All methods are synchronous (they may hit SQLite): sync calls them in a
    worker thread.
    """

    name: str
    item_type: str
    topic: str

    def scopes(self) -> list[str]: ...

    def digest(self, scope: str) -> bytes: ...

    def summary(self, scope: str) -> Any: ...

    def items_since(self, scope: str, peer_summary: Any) -> list[Any]: ...

    def ingest(self, scope: str, items: list[Any]) -> int: ...


@dataclass
class SyncSettings:
    interval_s: float = 3.0
    peers_per_round: int = 2
    session_timeout_s: float = 10.0
    max_frame_bytes: int = 4 * 1024 * 1024
    max_items_bytes: int = 1024 * 1024
    max_pulls: int = 64


class SyncError(Exception):
    """A sync session that could not complete, and why."""


async def write_frame(stream, obj: Any, max_bytes: int) -> None:
    data = dumps(obj)
    if len(data) > max_bytes:
        raise SyncError(f"frame of {len(data)} bytes exceeds {max_bytes}")
    await stream.write(struct.pack(">I", len(data)) + data)


async def _read_exactly(stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise SyncError("stream closed mid-frame")
        buf += chunk
    return bytes(buf)


async def read_frame(stream, max_bytes: int) -> Any:
    (length,) = struct.unpack(">I", await _read_exactly(stream, 4))
    if length > max_bytes:
        raise SyncError(f"frame of {length} bytes exceeds {max_bytes}")
    data = await _read_exactly(stream, length)
    try:
        return loads(data, max_bytes=max_bytes, max_depth=64, max_items=1_000_000, canonical=True)
    except WireError as exc:
        raise SyncError(f"undecodable frame: {exc}") from None


def _expect(frame: Any, op: str) -> dict:
    if not isinstance(frame, dict) or frame.get("op") != op:
        raise SyncError(f"expected {op!r}, got {str(frame)[:60]}")
    return frame


class Sync:
    """Runs the sync protocol for one node: serves peers and pulls from them."""

    def __init__(
        self,
        host: MeshHost,
        validator: EnvelopeValidator,
        sealer: Sealer,
        *,
        settings: SyncSettings | None = None,
        limiter: trio.CapacityLimiter | None = None,
        on_invalid: Callable[[ID, str], None] | None = None,
    ) -> None:
        self.host = host
        self.validator = validator
        self.sealer = sealer
        self.settings = settings or SyncSettings()
        self.limiter = limiter or trio.CapacityLimiter(4)
        self.on_invalid = on_invalid
        self.sources: dict[str, SyncSource] = {}
        self._rng = random.Random(secrets.randbits(64))
        self._nursery: trio.Nursery | None = None
        self._inflight: dict[ID, trio.Event] = {}
        self._last_ok: dict[ID, bool] = {}
        self.rounds_ok = 0
        host.libp2p.set_stream_handler(PROTOCOL_ID, self._serve)
        host.on_connection(self._on_connect)

    def register(self, source: SyncSource) -> None:
        self.sources[source.name] = source

    async def _blocking(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # --- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.settings.interval_s * self._rng.uniform(0.7, 1.3))
                    peers = self.host.connected_peers()
                    self._rng.shuffle(peers)
                    for peer in peers[: self.settings.peers_per_round]:
                        nursery.start_soon(self.sync_with, peer)
            finally:
                self._nursery = None

    async def _on_connect(self, peer: ID) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.sync_with, peer)

    async def sync_all(self) -> int:
        """One round with every connected peer; returns how many sessions succeeded."""
        ok = 0

        async def one(peer: ID) -> None:
            nonlocal ok
            if await self.sync_with(peer):
                ok += 1

        async with trio.open_nursery() as nursery:
            for peer in self.host.connected_peers():
                nursery.start_soon(one, peer)
        return ok

    # --- initiator ------------------------------------------------------------

    async def _local_digests(self) -> dict[str, dict[str, bytes]]:
        def collect() -> dict[str, dict[str, bytes]]:
            return {name: {scope: src.digest(scope) for scope in src.scopes()}
                    for name, src in self.sources.items()}

        return await self._blocking(collect)

    async def sync_with(self, peer: ID) -> bool:
        """One pull session with ``peer``. Never raises; returns success.

        When a session with ``peer`` is already running, waits for it and
        returns its outcome instead of opening a second one."""
        if not self.sources:
            return False
        running = self._inflight.get(peer)
        if running is not None:
            await running.wait()
            return self._last_ok.get(peer, False)
        done = self._inflight[peer] = trio.Event()
        self._last_ok[peer] = False
        stream = None
        try:
            with trio.move_on_after(self.settings.session_timeout_s) as scope:
                stream = await self.host.libp2p.new_stream(peer, [PROTOCOL_ID])
                pulled = await self._pull_session(stream, peer)
            if scope.cancelled_caught:
                raise SyncError("session timed out")
            SYNC_ROUNDS.labels(outcome="ok").inc()
            self.rounds_ok += 1
            self._last_ok[peer] = True
            if pulled:
                log.info("event=sync_pulled peer=%s items=%d", short(peer), pulled)
            return True
        except (SyncError, Exception) as exc:
            SYNC_ROUNDS.labels(outcome="error").inc()
            log.debug("event=sync_failed peer=%s error=%r", short(peer), exc)
            return False
        finally:
            del self._inflight[peer]
            done.set()
            if stream is not None:
                await self._close(stream)
            if len(self._last_ok) > 4096:
                self._last_ok.clear()

    @staticmethod
    async def _close(stream) -> None:
        with trio.move_on_after(1.0) as cs:
            cs.shield = True
            try:
                await stream.close()
            except Exception:
                pass

    async def _pull_session(self, stream, peer: ID) -> int:
        limit = self.settings.max_frame_bytes
        mine = await self._local_digests()
        await write_frame(stream, {"op": "hello", "v": VERSION, "sources": mine}, limit)
        theirs = _expect(await read_frame(stream, limit), "hello").get("sources")
        if not isinstance(theirs, dict):
            raise SyncError("hello without sources")
        pulled = 0
        pulls = 0
        for name, scopes in theirs.items():
            source = self.sources.get(name)
            if source is None or not isinstance(scopes, dict):
                continue
            for scope_name, digest in scopes.items():
                if not isinstance(scope_name, str) or scope_name not in mine.get(name, {}):
                    continue  # never pull a scope we do not serve
                if digest == mine[name][scope_name]:
                    continue
                more = True
                while more and pulls < self.settings.max_pulls:
                    pulls += 1
                    summary = await self._blocking(source.summary, scope_name)
                    await write_frame(stream, {"op": "pull", "source": name, "scope": scope_name,
                                               "summary": summary}, limit)
                    reply = _expect(await read_frame(stream, limit), "items")
                    items = reply.get("items")
                    if not isinstance(items, list):
                        raise SyncError("items is not a list")
                    more = bool(reply.get("more")) and bool(items)
                    payloads = self._validate_items(peer, source, items)
                    if payloads:
                        took = await self._blocking(source.ingest, scope_name, payloads)
                        SYNC_ITEMS.labels(kind=name).inc(len(payloads))
                        pulled += int(took or 0)
        await write_frame(stream, {"op": "bye"}, limit)
        return pulled

    def _validate_items(self, peer: ID, source: SyncSource, items: list) -> list[Any]:
        out = []
        for item in items:
            try:
                if not isinstance(item, bytes):
                    raise Rejected("malformed", "item is not bytes")
                env = self.validator.validate(item, None, check_replay=False, expect_type=source.item_type)
            except Rejected as rej:
                MESSAGES_DROPPED.labels(topic=f"sync:{source.name}", reason=rej.reason).inc()
                if self.on_invalid is not None:
                    self.on_invalid(peer, rej.reason)
                continue
            out.append(env.payload)
        return out

    # --- responder ------------------------------------------------------------

    async def _serve(self, stream) -> None:
        peer = stream.muxed_conn.peer_id
        if self.host.is_refused(peer):
            await stream.reset()
            return
        limit = self.settings.max_frame_bytes
        try:
            with trio.move_on_after(self.settings.session_timeout_s):
                hello = _expect(await read_frame(stream, limit), "hello")
                theirs = hello.get("sources")
                if not isinstance(theirs, dict):
                    raise SyncError("hello without sources")
                mine = await self._local_digests()
                common = {
                    name: {s: d for s, d in scopes.items() if s in (theirs.get(name) or {})}
                    for name, scopes in mine.items()
                    if isinstance(theirs.get(name), dict)
                }
                await write_frame(stream, {"op": "hello", "v": VERSION, "sources": common}, limit)
                for _ in range(self.settings.max_pulls + 1):
                    frame = await read_frame(stream, limit)
                    if isinstance(frame, dict) and frame.get("op") == "bye":
                        break
                    pull = _expect(frame, "pull")
                    name, scope = pull.get("source"), pull.get("scope")
                    source = self.sources.get(name) if isinstance(name, str) else None
                    if source is None or scope not in common.get(name, {}):
                        await write_frame(stream, {"op": "items", "items": [], "more": False}, limit)
                        continue
                    items, more = await self._items_for(source, scope, pull.get("summary"))
                    await write_frame(stream, {"op": "items", "items": items, "more": more}, limit)
        except (SyncError, Exception) as exc:
            log.debug("event=sync_serve_failed peer=%s error=%r", short(peer), exc)
        finally:
            await self._close(stream)

    async def _items_for(self, source: SyncSource, scope: str, summary: Any) -> tuple[list[bytes], bool]:
        try:
            payloads = await self._blocking(source.items_since, scope, summary)
        except Exception as exc:
            log.debug("event=sync_items_failed source=%s error=%r", source.name, exc)
            return [], False
        out: list[bytes] = []
        size = 0
        for payload in payloads:
            data = self.sealer.seal(source.item_type, payload)
            if out and size + len(data) > self.settings.max_items_bytes:
                return out, True
            out.append(data)
            size += len(data)
        return out, False


def scopes_in_common(a: Sequence[str], b: Sequence[str]) -> list[str]:
    return sorted(set(a) & set(b))
