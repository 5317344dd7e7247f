"""GossipSub dissemination with validation before forwarding.

Topics carry their version in the name: ``icn/policy/1`` (policy acts and
votes), ``icn/compute/1`` (task announcements), ``icn/executors/1`` (executor
announcements and offers), and one usage topic per coop,
``icn/usage/1/<coop_id>``, which only the nodes serving that coop join.

Every message is a signed envelope. A topic validator runs *inside* the
router before a message is delivered or forwarded (size, decode + signature,
type registered, type on its topic, the type's schema hook, replay guard); a
refused message goes nowhere, increments ``icn_messages_dropped{topic,
reason}`` and counts against the peer that forwarded it, which is banned once
its score crosses the threshold.

Honest duplicates never reach the replay guard: the router checks its
seen-cache (keyed by our content-addressed message id) before validating, and
because our validator is synchronous, check-validate-mark runs without a trio
checkpoint in between, so two copies arriving at once cannot both be
validated. The seen-cache outlives the replay guard's freshness window, and
the library's validation-result cache is disabled (it would let a cached
"valid" bypass the replay guard and a cached "rate limited" poison an honest
copy from another peer).

Silent losses in py-libp2p 0.8.1 and what we do about them:
- a subscription channel of 32 messages drops when its reader lags: raised to
  ``SUBSCRIPTION_QUEUE`` and drained by a dedicated task per topic into our
  own bounded channel, which counts ``queue_full`` drops;
- a peer's outbound queue of 32 RPCs drops when full: raised to
  ``OUTBOUND_QUEUE`` and our publisher task paces itself on the fullest peer
  queue;
- meshsub 1.2 queues an IDONTWANT per message per mesh peer, doubling queue
  pressure for our small messages: we speak meshsub 1.1 (and 1.0);
- the built-in spam protection rate-limits our *own* publishes: disabled, and
  replaced by a per-peer rate budget in the validator.

Nothing here is relied on for completeness: state that must arrive (policies,
usage) is also repaired by the anti-entropy sync protocol.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_11
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12 as MESHSUB_12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from icn_p2p.metrics import GOSSIP_MESSAGES_IN, GOSSIP_MESSAGES_OUT, MESH_SIZE, MESSAGES_DROPPED
from icn_p2p.net import libp2p_tuning
from icn_p2p.net.host import MeshHost
from icn_p2p.net.libp2p_tuning import TunedGossipSub
from icn_p2p.net.peers import did_for_peer, short
from icn_p2p.net.penalties import QUEUE_FULL, RATE_LIMITED, PenaltyBook, PenaltySettings, RateBudget
from icn_p2p.net.validation import EnvelopeValidator, Rejected
from icn_p2p.wire import Envelope, WireError, message_id

log = logging.getLogger(__name__)

TOPIC_POLICY = "icn/policy/1"
TOPIC_COMPUTE = "icn/compute/1"
TOPIC_EXECUTORS = "icn/executors/1"
USAGE_TOPIC_PREFIX = "icn/usage/1/"
USAGE_TOPIC_FAMILY = "icn/usage/1/*"

SUBSCRIPTION_QUEUE = libp2p_tuning.SUBSCRIPTION_QUEUE
OUTBOUND_QUEUE = libp2p_tuning.OUTBOUND_QUEUE


def usage_topic(coop_id: str) -> str:
    if not coop_id or "/" in coop_id:
        raise ValueError(f"coop id {coop_id!r} cannot name a topic")
    return USAGE_TOPIC_PREFIX + coop_id


def topic_label(topic: str) -> str:
    """Metric label for a topic: per-coop usage topics fold into their family."""
    return "icn/usage/1" if topic.startswith(USAGE_TOPIC_PREFIX) else topic


def gossip_message_id(msg: rpc_pb2.Message) -> bytes:
    """Content-addressed id: the envelope's id, so one message has one id on every path.

    Must never raise (the router calls it on untrusted input before
    validation); data that is not an envelope is hashed whole.
    """
    try:
        return message_id(msg.data)
    except (WireError, Exception):
        return hashlib.sha256(b"raw\0" + msg.data).digest()


class MessageIds:
    """:func:`gossip_message_id` with a memory of recent data (one per node).

    The router asks for a message's id six to eight times (seen check,
    validation, seen mark, message cache, forwarding, our validator and
    dispatch), and each time the envelope's CBOR would be split again. The
    id is a pure function of the bytes, so recent ones are remembered.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._ids: dict[bytes, bytes] = {}

    def __call__(self, msg: rpc_pb2.Message) -> bytes:
        data = msg.data
        mid = self._ids.get(data)
        if mid is None:
            mid = gossip_message_id(msg)
            if len(self._ids) >= self.size:
                del self._ids[next(iter(self._ids))]  # oldest first
            self._ids[data] = mid
        return mid


class _NoValidationCache:
    """Replaces the library's validation-result cache (see the module docstring)."""

    def get(self, msg_id: bytes) -> None:
        return None

    def put(self, msg_id: bytes, result: object) -> None:
        return None

    def clear_expired(self) -> None:
        return None


def tune_libp2p() -> None:
    """Install our py-libp2p overrides (see :mod:`icn_p2p.net.libp2p_tuning`)."""
    libp2p_tuning.apply()


@dataclass
class GossipSettings:
    """Router tuning for a cooperative mesh of 3-100 peers.

    D=6 / D_lo=4 / D_hi=12: with 3-4 links per node (our random topologies)
    every link is in the mesh; in denser meshes each message still reaches a
    node over ~6 paths, which keeps p99 latency low without flooding. D_hi must
    be at least the node's maximum connection count, otherwise the heartbeat
    prunes peers that immediately try to re-graft during their back-off and
    the mesh sits under D_lo for tens of seconds ("GRAFT flood"); the node
    raises it to ``max_connections`` when that is larger. A 0.5 s heartbeat
    (the library's default is 120 s; go-libp2p's is 1 s) repairs the mesh and
    emits IHAVE gossip quickly without the idle cost of a faster one (0.3 s
    cost ~14% of a 50-node mesh's network CPU); the message cache keeps 10
    heartbeats (5 s) for IWANT. Delivery itself is pushed, not heartbeat-paced.
    """

    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_s: float = 0.5
    gossip_window: int = 3
    gossip_history: int = 10
    prune_backoff_s: int = 10
    meshsub_12: bool = False
    seen_ttl_s: int = 700  # > replay guard max age + skew (10 min + 30 s)
    publish_queue: int = 10_000
    delivery_queue: int = 10_000
    outbound_high_water: int = OUTBOUND_QUEUE // 2
    rate_per_s: float = 1000.0
    rate_burst: float = 5000.0
    penalties: PenaltySettings = field(default_factory=PenaltySettings)
    ban_seconds: float = 600.0


@dataclass(frozen=True)
class Delivery:
    """A validated gossip message handed to a handler."""

    topic: str
    envelope: Envelope
    data: bytes
    message_id: bytes
    source: ID | None  # the peer that forwarded it to us (None: our own)


Handler = Callable[[Delivery], Awaitable[None]]


class Gossip:
    """Pubsub + GossipSub for one host, with our validation, pacing and bans."""

    def __init__(self, host: MeshHost, validator: EnvelopeValidator,
                 settings: GossipSettings | None = None) -> None:
        tune_libp2p()
        self.host = host
        self.validator = validator
        self.settings = s = settings or GossipSettings()
        protocols = [MESHSUB_12, MESHSUB_11, MESHSUB_10] if s.meshsub_12 else [MESHSUB_11, MESHSUB_10]
        self.router = TunedGossipSub(
            protocols=protocols,
            degree=s.degree,
            degree_low=s.degree_low,
            degree_high=max(s.degree_high, host.settings.max_connections),
            heartbeat_initial_delay=0.05,
            heartbeat_interval=s.heartbeat_s,  # type: ignore[arg-type]
            gossip_window=s.gossip_window,
            gossip_history=s.gossip_history,
            prune_back_off=s.prune_backoff_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,  # every test peer shares 127.0.0.1
        )
        self.message_id = MessageIds()
        self.pubsub = Pubsub(
            host.libp2p,
            self.router,
            strict_signing=True,
            msg_id_constructor=self.message_id,
            seen_ttl=s.seen_ttl_s,
        )
        self.pubsub.validation_cache = _NoValidationCache()  # type: ignore[assignment]
        # 8-byte seqnos without leading zeros (js-libp2p floodsub strips them).
        self.pubsub.counter = time.time_ns()
        self.penalties = PenaltyBook(s.penalties)
        self.budget = RateBudget(s.rate_per_s, s.rate_burst)
        self._handlers: dict[str, list[Handler]] = {}
        self._any_handlers: list[Handler] = []
        self._decoded: OrderedDict[bytes, tuple[Envelope, ID]] = OrderedDict()
        self._logged: set[tuple[ID, str]] = set()
        self.dropped: Counter[tuple[str, str]] = Counter()  # (topic label, reason), this node only
        self.delivered: Counter[str] = Counter()  # topic label -> valid messages delivered
        self._subs: dict[str, trio.CancelScope] = {}
        self._publish_send, self._publish_recv = trio.open_memory_channel(s.publish_queue)
        self._ban_send, self._ban_recv = trio.open_memory_channel(1024)
        self._nursery: trio.Nursery | None = None
        self._pending_topics: list[str] = []
        self.published = 0
        host.on_connection(self._on_connect)

    # --- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with background_trio_service(self.pubsub), background_trio_service(self.router):
                await self.pubsub.wait_until_ready()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._publisher)
                    nursery.start_soon(self._banner)
                    nursery.start_soon(self._housekeeping)
                    for topic in self._pending_topics:
                        await self.subscribe(topic)
                    self._pending_topics.clear()
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._shutdown_pubsub()

    def _shutdown_pubsub(self) -> None:
        # A swarm notifying a stopped pubsub would block forever on its
        # zero-capacity peer channels: close them so the sends fail fast.
        for channel in (self.pubsub.peer_receive_channel, self.pubsub.dead_peer_receive_channel):
            try:
                channel.close()
            except Exception:
                pass
        try:
            self.pubsub.seen_messages.stop()  # a background thread per pubsub
        except Exception:
            pass

    # --- subscriptions --------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Join ``topic``; validated messages go to the registered handlers."""
        if topic in self._subs:
            return
        if self._nursery is None:
            if topic not in self._pending_topics:
                self._pending_topics.append(topic)
            return
        self.pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        sub = await self.pubsub.subscribe(topic)
        scope = trio.CancelScope()
        self._subs[topic] = scope
        self._nursery.start_soon(self._topic_tasks, topic, sub, scope)

    async def unsubscribe(self, topic: str) -> None:
        scope = self._subs.pop(topic, None)
        if scope is None:
            return
        scope.cancel()
        await self.pubsub.unsubscribe(topic)
        self.pubsub.remove_topic_validator(topic)

    def topics(self) -> list[str]:
        return list(self._subs)

    async def _topic_tasks(self, topic: str, sub, scope: trio.CancelScope) -> None:
        send, recv = trio.open_memory_channel(self.settings.delivery_queue)
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, topic, sub, send)
                nursery.start_soon(self._dispatch, topic, recv)

    async def _drain(self, topic: str, sub, send: trio.MemorySendChannel) -> None:
        """Empty the library's subscription channel as fast as it fills."""
        label = topic_label(topic)
        async with send:
            while True:
                msg = await sub.get()
                try:
                    send.send_nowait(msg)
                except trio.WouldBlock:
                    MESSAGES_DROPPED.labels(topic=label, reason=QUEUE_FULL).inc()
                    self.dropped[(label, QUEUE_FULL)] += 1
                    log.warning("event=delivery_queue_full topic=%s", topic)

    async def _dispatch(self, topic: str, recv: trio.MemoryReceiveChannel) -> None:
        label = topic_label(topic)
        async with recv:
            async for msg in recv:
                mid = self.message_id(msg)
                cached = self._decoded.pop(mid, None)
                if cached is None:  # evicted from the small cache: decode again
                    try:
                        env = self.validator.validate(msg.data, topic, check_replay=False)
                    except Rejected:
                        continue
                    source = None
                else:
                    env, source = cached
                GOSSIP_MESSAGES_IN.labels(topic=label).inc()
                self.delivered[label] += 1
                delivery = Delivery(topic, env, msg.data, mid,
                                    None if source == self.host.peer_id else source)
                for handler in [*self._handlers.get(env.type, ()), *self._any_handlers]:
                    try:
                        await handler(delivery)
                    except Exception:
                        log.exception("event=handler_failed type=%s topic=%s", env.type, topic)

    # --- handlers -------------------------------------------------------------

    def handle(self, type: str | None, handler: Handler) -> None:
        """Call ``handler(delivery)`` for each valid message of ``type`` (None: all)."""
        if type is None:
            self._any_handlers.append(handler)
        else:
            self._handlers.setdefault(type, []).append(handler)

    # --- validation -----------------------------------------------------------

    def _make_validator(self, topic: str):
        label = topic_label(topic)

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            own = forwarder == self.host.peer_id
            try:
                if not own and not self.budget.allow(forwarder, trio.current_time()):
                    raise Rejected(RATE_LIMITED, "over the per-peer rate budget")
                env = self.validator.validate(msg.data, topic)
            except Rejected as rej:
                self._record_drop(forwarder, label, rej, own)
                return False
            mid = self.message_id(msg)
            self._decoded[mid] = (env, forwarder)
            if len(self._decoded) > 8192:
                self._decoded.popitem(last=False)
            return True

        return validate

    def _record_drop(self, peer: ID, label: str, rej: Rejected, own: bool) -> None:
        MESSAGES_DROPPED.labels(topic=label, reason=rej.reason).inc()
        self.dropped[(label, rej.reason)] += 1
        if own:
            log.error("event=own_message_refused topic=%s reason=%s detail=%s", label, rej.reason, rej.detail)
            return
        key = (peer, rej.reason)
        if key not in self._logged:  # once per (peer, reason), not per message
            self._logged.add(key)
            log.warning("event=message_dropped peer=%s topic=%s reason=%s detail=%s",
                        short(peer), label, rej.reason, rej.detail)
        now = trio.current_time()
        score = self.penalties.add(peer, rej.reason, now)
        if score >= self.settings.penalties.ban_threshold and not self.host.is_banned(peer):
            try:
                self._ban_send.send_nowait((peer, rej.reason, score))
            except trio.WouldBlock:
                pass

    def penalize(self, peer: ID, reason: str, label: str = "sync") -> None:
        """Count a fault found outside gossip (e.g. an invalid item pulled by sync)."""
        self._record_drop(peer, label, Rejected(reason), peer == self.host.peer_id)

    async def _banner(self) -> None:
        async for peer, reason, score in self._ban_recv:
            if self.host.is_banned(peer):
                continue
            log.warning("event=ban peer=%s did=%s reason=%s score=%.1f",
                        short(peer), did_for_peer(peer), reason, score)
            self.pubsub.add_to_blacklist(peer)
            await self.host.ban(peer, self.settings.ban_seconds, reason=reason)

    async def _on_connect(self, peer: ID) -> None:
        # A peer whose ban expired is welcome again in pubsub.
        if peer in self.pubsub.blacklisted_peers and not self.host.is_banned(peer):
            self.pubsub.remove_from_blacklist(peer)
            self.penalties.forget(peer)
            self._logged = {k for k in self._logged if k[0] != peer}

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            self.penalties.prune(now)
            for peer in list(self.pubsub.blacklisted_peers):
                if not self.host.is_banned(peer):
                    self.pubsub.remove_from_blacklist(peer)
            for topic, peers in self.router.mesh.items():
                MESH_SIZE.labels(topic=topic_label(topic)).set(len(peers))

    # --- publishing -----------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Queue ``data`` for ``topic``; returns its message id.

        Waits only when the publish queue is full (backpressure, never a drop).
        """
        msg_id = gossip_message_id(rpc_pb2.Message(data=data))
        await self._publish_send.send((topic, data))
        return msg_id

    def _fullest_queue(self) -> int:
        queues = self.pubsub.peer_queues.values()
        return max((len(q) for q in queues), default=0)

    async def _publisher(self) -> None:
        """Hand messages to the router, pacing on the fullest peer queue."""
        async for topic, data in self._publish_recv:
            while self._fullest_queue() >= self.settings.outbound_high_water:
                await trio.sleep(0.002)
            try:
                await self.pubsub.publish(topic, data)
                self.published += 1
                GOSSIP_MESSAGES_OUT.labels(topic=topic_label(topic)).inc()
            except Exception:
                log.exception("event=publish_failed topic=%s", topic)
            await trio.lowlevel.checkpoint()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the publish queue and the peers' outbound queues are empty."""
        with trio.move_on_after(timeout):
            while self._publish_recv.statistics().current_buffer_used or self._fullest_queue():
                await trio.sleep(0.005)
            return True
        return False

    # --- introspection ---------------------------------------------------------

    def mesh_peers(self, topic: str) -> set[ID]:
        return set(self.router.mesh.get(topic, set()))

    def topic_peers(self, topic: str) -> set[ID]:
        return set(self.pubsub.peer_topics.get(topic, set()))
