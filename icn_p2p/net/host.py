"""The node's libp2p host: identity, transports, dialling, bans, RTT.

The peer id comes from the node's Ed25519 key, so peer id and DID name the
same node. Security is Noise only (py-libp2p also accepts plaintext peers by
default) and streams are multiplexed with Yamux.

Dialling is ours, not the library's: py-libp2p's auto-connector redials every
peer it has ever seen, which would undo bans, partitions and chosen
topologies. Instead a node keeps a set of *persistent* peers (bootstrap peers
and the links the operator or harness asked for) and one task per peer keeps
that link up, with exponential backoff and jitter, refusing banned and
blocked peers.

Shutdown is bounded: :meth:`MeshHost.run` closes connections and listeners
under a shielded deadline even when cancelled, so a wedged peer can delay a
node's exit by at most ``shutdown_grace`` seconds.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.io.utils import read_exactly
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

from icn_p2p.identity.keys import NodeKey
from icn_p2p.metrics import PEERS
from icn_p2p.net.peers import did_for_peer, parse_peer_addr, peer_for_did, short

log = logging.getLogger(__name__)

PING_BYTES = 32
STABLE_LINK_SECONDS = 5.0
ConnectionListener = Callable[[ID], Awaitable[None]]


@dataclass
class HostSettings:
    """Tunables of one host (the node config maps onto these)."""

    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    max_connections: int = 64
    dial_timeout: float = 5.0
    backoff_initial: float = 0.25
    backoff_max: float = 30.0
    ping_interval: float = 5.0
    ping_timeout: float = 2.0
    shutdown_grace: float = 2.0
    ban_seconds: float = 600.0


@dataclass
class PeerRtt:
    """Smoothed round-trip time to one peer."""

    rtt_ms: float
    samples: int
    updated: float  # trio clock


class _Events(INotifee):
    """Forwards swarm connect/disconnect notifications into the host's queue.

    Swarm notifications are awaited inline on the connection path, so this
    never blocks: it only drops the peer id into a large channel.
    """

    def __init__(self, send: trio.MemorySendChannel) -> None:
        self._send = send

    def _put(self, kind: str, conn: INetConn) -> None:
        try:
            self._send.send_nowait((kind, conn.muxed_conn.peer_id))
        except trio.WouldBlock:
            log.warning("event=connection_event_dropped kind=%s", kind)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the host is shutting down

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._put("connected", conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._put("disconnected", conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter in [d/2, d] (so peers do not dial in lockstep)."""
    d = min(maximum, initial * math.pow(2.0, max(0, attempt)))
    return rng.uniform(d / 2, d)


class MeshHost:
    """A libp2p host with our dialling, ban and RTT policies."""

    def __init__(self, key: NodeKey, settings: HostSettings | None = None) -> None:
        self.key = key
        self.settings = settings or HostSettings()
        self._listen_addrs: list[str] = []  # known once listening
        key_pair = key.libp2p_key_pair()
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.libp2p = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_preference="YAMUX",
            connection_config=ConnectionConfig(
                max_connections=max(self.settings.max_connections, 1),
                min_connections=0,
                low_watermark=0,
                high_watermark=max(self.settings.max_connections, 1),
                dial_timeout=self.settings.dial_timeout,
            ),
        )
        network = self.libp2p.get_network()
        # The auto-connector dials every peer in the peerstore whenever the
        # connection count is below its watermark: it would undo bans,
        # partitions and chosen topologies. Our dialler replaces it.
        auto = getattr(network, "auto_connector", None)
        if auto is not None:
            async def _disabled() -> None:
                return None

            auto.start = _disabled  # type: ignore[method-assign]
        self.peer_id: ID = self.libp2p.get_id()
        self.did = key.did
        self._events_send, self._events_recv = trio.open_memory_channel(100_000)
        network.register_notifee(_Events(self._events_send))
        self._connected: set[ID] = set()
        self._listeners: list[ConnectionListener] = []
        self._persistent: dict[ID, PeerInfo] = {}
        self._dialers: dict[ID, trio.CancelScope] = {}
        self._banned: dict[ID, float] = {}  # peer -> trio-clock expiry
        self._blocked: set[ID] = set()
        self._changed = trio.Event()
        self._rtt: dict[ID, PeerRtt] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random(secrets.randbits(64))
        self._stopped = trio.Event()
        self.running = False

    # --- identity -------------------------------------------------------------

    @staticmethod
    def did_for_peer(peer_id: ID) -> str:
        return did_for_peer(peer_id)

    @staticmethod
    def peer_for_did(did: str) -> ID:
        return peer_for_did(did)

    def listen_addrs(self) -> list[str]:
        """Full dialable addresses, each ending in ``/p2p/<peer id>``.

        Asking the library walks every listener and transport (milliseconds);
        every announcement carries these, so they are kept once known.
        """
        if self._listen_addrs:
            return list(self._listen_addrs)
        suffix = f"/p2p/{self.peer_id.to_base58()}"
        out = []
        for addr in self.libp2p.get_addrs():
            text = str(addr)
            out.append(text if "/p2p/" in text else text + suffix)
        if self.running:
            self._listen_addrs = out
        return list(out)

    # --- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial bootstrap peers, ping; return when stopped or cancelled."""
        listen = [Multiaddr(a) for a in self.settings.listen]
        try:
            async with self.libp2p.run(listen_addrs=listen):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._event_loop)
                    nursery.start_soon(self._ping_loop)
                    nursery.start_soon(self._ban_expiry_loop)
                    for addr in self.settings.bootstrap:
                        self.add_persistent_peer(addr)
                    for peer_id in list(self._persistent):
                        if peer_id not in self._dialers:
                            nursery.start_soon(self._keep_linked, peer_id)
                    self.running = True
                    log.info("event=host_started did=%s addrs=%s", self.did, self.listen_addrs())
                    task_status.started()
                    await self._stopped.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self.running = False
            self._listen_addrs = []
            self._nursery = None
            await self._close_network()
            PEERS.set(0)

    def stop(self) -> None:
        """Ask :meth:`run` to return (idempotent, callable from any task)."""
        self._stopped.set()

    async def _close_network(self) -> None:
        """Close connections and listeners under a shielded deadline."""
        with trio.move_on_after(self.settings.shutdown_grace) as scope:
            scope.shield = True
            try:
                await self.libp2p.close()
            except Exception as exc:  # teardown of a half-dead swarm
                log.debug("event=host_close_error error=%r", exc)
        if scope.cancelled_caught:
            log.warning("event=host_close_timeout did=%s", self.did)

    # --- connections ----------------------------------------------------------

    def on_connection(self, listener: ConnectionListener) -> None:
        """Call ``listener(peer_id)`` (in its own task) whenever a peer connects."""
        self._listeners.append(listener)

    def connected_peers(self) -> list[ID]:
        return [p for p in self._connected if self.is_connected(p)]

    def is_connected(self, peer_id: ID) -> bool:
        return bool(self.libp2p.get_network().get_connections(peer_id))

    async def connect(self, addr: str | PeerInfo, *, timeout: float | None = None) -> ID:
        """Dial one peer once (no retry). Raises ``ConnectionError`` on failure."""
        info = addr if isinstance(addr, PeerInfo) else parse_peer_addr(addr)
        if info.peer_id == self.peer_id:
            raise ConnectionError("refusing to dial ourselves")
        if self.is_refused(info.peer_id):
            raise ConnectionError(f"peer {short(info.peer_id)} is banned or blocked")
        with trio.move_on_after(timeout or self.settings.dial_timeout) as scope:
            try:
                await self.libp2p.connect(info)
            except Exception as exc:
                raise ConnectionError(f"dial {short(info.peer_id)} failed: {exc}") from None
        if scope.cancelled_caught:
            raise ConnectionError(f"dial {short(info.peer_id)} timed out")
        return info.peer_id

    async def disconnect(self, peer_id: ID) -> None:
        with trio.move_on_after(self.settings.shutdown_grace):
            try:
                await self.libp2p.disconnect(peer_id)
            except Exception as exc:
                log.debug("event=disconnect_error peer=%s error=%r", short(peer_id), exc)

    def add_persistent_peer(self, addr: str | PeerInfo) -> ID:
        """Keep a link to this peer up: dial now, redial with backoff when it drops."""
        info = addr if isinstance(addr, PeerInfo) else parse_peer_addr(addr)
        if info.peer_id == self.peer_id:
            return info.peer_id
        self._persistent[info.peer_id] = info
        if self._nursery is not None and info.peer_id not in self._dialers:
            self._nursery.start_soon(self._keep_linked, info.peer_id)
        return info.peer_id

    def remove_persistent_peer(self, peer_id: ID) -> None:
        self._persistent.pop(peer_id, None)
        scope = self._dialers.pop(peer_id, None)
        if scope is not None:
            scope.cancel()

    async def _keep_linked(self, peer_id: ID) -> None:
        """Keep one persistent link up.

        A link that drops within ``STABLE_LINK_SECONDS`` counts as a failed
        attempt, so a peer that accepts and immediately closes (it banned us)
        is redialled with growing backoff, not in a tight loop.
        """
        scope = trio.CancelScope()
        self._dialers[peer_id] = scope
        attempt = 0
        linked_since: float | None = None
        with scope:
            while peer_id in self._persistent:
                changed = self._changed
                if self.is_refused(peer_id):
                    await changed.wait()
                    continue
                if self.is_connected(peer_id):
                    if linked_since is None:
                        linked_since = trio.current_time()
                    await changed.wait()
                    continue
                if linked_since is not None:
                    if trio.current_time() - linked_since >= STABLE_LINK_SECONDS:
                        attempt = 0
                    linked_since = None
                if attempt > 0:
                    delay = backoff_delay(attempt - 1, self.settings.backoff_initial,
                                          self.settings.backoff_max, self._rng)
                    log.debug("event=redial_backoff peer=%s attempt=%d delay=%.2f",
                              short(peer_id), attempt, delay)
                    await trio.sleep(delay)
                    if self.is_refused(peer_id) or self.is_connected(peer_id):
                        continue
                attempt += 1
                try:
                    await self.connect(self._persistent[peer_id])
                    linked_since = trio.current_time()
                except ConnectionError as exc:
                    log.debug("event=dial_failed peer=%s attempt=%d error=%s",
                              short(peer_id), attempt, exc)
        if self._dialers.get(peer_id) is scope:
            del self._dialers[peer_id]

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _event_loop(self) -> None:
        async with self._events_recv:
            async for kind, peer_id in self._events_recv:
                if kind == "connected":
                    if self.is_refused(peer_id):
                        log.info("event=refused_connection peer=%s", short(peer_id))
                        self._nursery.start_soon(self.disconnect, peer_id)
                        continue
                    if peer_id not in self._connected:
                        self._connected.add(peer_id)
                        log.debug("event=peer_connected peer=%s", short(peer_id))
                        for listener in self._listeners:
                            self._nursery.start_soon(self._call_listener, listener, peer_id)
                        self._nursery.start_soon(self._ping_one, peer_id)
                elif not self.is_connected(peer_id):
                    if peer_id in self._connected:
                        log.debug("event=peer_disconnected peer=%s", short(peer_id))
                    self._connected.discard(peer_id)
                    self._rtt.pop(peer_id, None)
                PEERS.set(len(self._connected))
                self._signal()

    @staticmethod
    async def _call_listener(listener: ConnectionListener, peer_id: ID) -> None:
        try:
            await listener(peer_id)
        except Exception:
            log.exception("event=connection_listener_failed peer=%s", short(peer_id))

    # --- bans and blocks -------------------------------------------------------

    def is_refused(self, peer_id: ID) -> bool:
        return peer_id in self._blocked or self.is_banned(peer_id)

    def is_banned(self, peer_id: ID) -> bool:
        expiry = self._banned.get(peer_id)
        return expiry is not None and expiry > trio.current_time()

    def banned_peers(self) -> list[ID]:
        now = trio.current_time()
        return [p for p, t in self._banned.items() if t > now]

    async def ban(self, peer_id: ID, seconds: float | None = None, *, reason: str = "") -> None:
        """Disconnect ``peer_id`` and refuse it (both directions) until the ban expires."""
        if peer_id == self.peer_id:
            return
        seconds = self.settings.ban_seconds if seconds is None else seconds
        self._banned[peer_id] = trio.current_time() + seconds
        log.warning("event=peer_banned peer=%s did=%s seconds=%.0f reason=%s",
                    short(peer_id), did_for_peer(peer_id), seconds, reason)
        self._signal()
        await self.disconnect(peer_id)

    def unban(self, peer_id: ID) -> None:
        self._banned.pop(peer_id, None)
        self._signal()

    async def block(self, peer_id: ID) -> None:
        """Cut the link to ``peer_id`` and refuse it until :meth:`unblock` (partitions)."""
        self._blocked.add(peer_id)
        self._signal()
        await self.disconnect(peer_id)

    def unblock(self, peer_id: ID) -> None:
        self._blocked.discard(peer_id)
        self._signal()

    async def _ban_expiry_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            expired = [p for p, t in self._banned.items() if t <= now]
            for p in expired:
                del self._banned[p]
                log.info("event=ban_expired peer=%s", short(p))
            if expired:
                self._signal()

    # --- RTT ------------------------------------------------------------------

    def rtt_ms(self, peer_id: ID) -> float | None:
        entry = self._rtt.get(peer_id)
        return entry.rtt_ms if entry else None

    def rtt_table(self) -> dict[str, float]:
        """Smoothed RTT in milliseconds by peer DID (used by placement)."""
        return {did_for_peer(p): e.rtt_ms for p, e in self._rtt.items()}

    async def ping(self, peer_id: ID) -> float:
        """One ping round trip in milliseconds (float, unlike the library's int)."""
        with trio.fail_after(self.settings.ping_timeout):
            stream = await self.libp2p.new_stream(peer_id, [PING_PROTOCOL])
            try:
                payload = secrets.token_bytes(PING_BYTES)
                start = time.perf_counter()
                await stream.write(payload)
                echo = await read_exactly(stream, PING_BYTES)
                rtt = (time.perf_counter() - start) * 1000.0
            finally:
                with trio.move_on_after(0.5) as cs:
                    cs.shield = True
                    try:
                        await stream.close()
                    except Exception:
                        pass
        if echo != payload:
            raise ConnectionError("ping payload mismatch")
        return rtt

    async def _ping_one(self, peer_id: ID) -> None:
        try:
            rtt = await self.ping(peer_id)
        except (Exception, trio.TooSlowError) as exc:
            log.debug("event=ping_failed peer=%s error=%r", short(peer_id), exc)
            return
        prev = self._rtt.get(peer_id)
        if prev is None:
            self._rtt[peer_id] = PeerRtt(rtt, 1, trio.current_time())
        else:  # EWMA, alpha 0.3: steady but follows a route change within a few rounds
            prev.rtt_ms = 0.7 * prev.rtt_ms + 0.3 * rtt
            prev.samples += 1
            prev.updated = trio.current_time()

    async def _ping_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.ping_interval * self._rng.uniform(0.8, 1.2))
            async with trio.open_nursery() as nursery:
                for peer_id in self.connected_peers():
                    nursery.start_soon(self._ping_one, peer_id)

    # --- misc -----------------------------------------------------------------

    def persistent_peers(self) -> Iterable[ID]:
        return list(self._persistent)
