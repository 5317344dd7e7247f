"""The Node: one trio nursery owning the host, gossip, sync and the stores.

Other layers plug in through :meth:`Node.register_type` (a message type, the
topic it travels on, its schema hook) and :meth:`Node.handle` (an async
handler per message type), and publish with :meth:`Node.publish`. The node
itself handles the replicated state: policy acts and usage entries, received
by gossip or pulled by sync, go into the stores.

Blocking SQLite calls run in worker threads behind one ``CapacityLimiter``.
Shutdown is bounded: :meth:`Node.stop` (or leaving ``async with``) cancels the
nursery, the host closes its connections under a shielded deadline, and the
stores are closed last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from icn_p2p.core.clock import Clock, SystemClock
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.identity.keys import NodeKey, load_or_create_key_file
from icn_p2p.net.direct import DirectChannel
from icn_p2p.net.gossip import TOPIC_POLICY, Delivery, Gossip, GossipSettings, Handler, usage_topic
from icn_p2p.net.host import HostSettings, MeshHost
from icn_p2p.net.penalties import PenaltySettings
from icn_p2p.net.sync import Sync, SyncSettings
from icn_p2p.net.validation import EnvelopeValidator, MessageTypes, SchemaHook
from icn_p2p.node.compute import ComputeService
from icn_p2p.node.config import NodeConfig
from icn_p2p.node.governance import GovernanceService
from icn_p2p.node.peer_views import PeerViews
from icn_p2p.node.sources import (
    MAX_USAGE_BATCH,
    POLICY_ACT,
    USAGE_ENTRIES,
    USAGE_ENTRY,
    PolicySource,
    UsageSource,
    policy_act_schema,
    usage_batch,
    usage_entries_schema,
    usage_entry_schema,
)
from icn_p2p.policy.governance import PolicyAct, make_local_act
from icn_p2p.policy.store import ApplyResult, Head, PolicyStore, PolicyVersion
from icn_p2p.usage.crdt import SignedUsageEntry, UsageDelta
from icn_p2p.usage.store import UsageStore
from icn_p2p.wire import FloorStore, Limits, ReplayGuard, Sealer

log = logging.getLogger(__name__)


class Node:
    """A running icn-p2p node (see the module docstring)."""

    def __init__(self, config: NodeConfig, *, key: NodeKey | None = None, clock: Clock | None = None) -> None:
        self.config = config
        #: Every time this node reads: admission, usage months, envelopes, receipts.
        self.clock = clock or SystemClock()
        self.now_ms = self.clock.now_ms
        self.key = key or load_or_create_key_file(config.key_file)
        self.did = self.key.did
        self.db_limiter = trio.CapacityLimiter(4)
        m = config.mesh
        self.types = MessageTypes()
        self.types.register(POLICY_ACT, TOPIC_POLICY, policy_act_schema)
        self.types.register(USAGE_ENTRY, "icn/usage/1/*", usage_entry_schema)
        self.types.register(USAGE_ENTRIES, "icn/usage/1/*", usage_entries_schema)
        self.sealer = Sealer(self.key, clock=self.clock)
        self.host = MeshHost(self.key, HostSettings(
            listen=list(config.listen),
            bootstrap=list(config.bootstrap),
            max_connections=m.max_connections,
            ping_interval=m.ping_interval_s,
            shutdown_grace=m.shutdown_grace_s,
            ban_seconds=m.ban_seconds,
        ))
        self.policy_store: PolicyStore | None = None
        self.usage_store: UsageStore | None = None
        self.floor_store: FloorStore | None = None
        self.replay: ReplayGuard | None = None
        self.limits = Limits(max_bytes=m.max_message_bytes)
        self.validator = EnvelopeValidator(self.types, None, limits=self.limits, clock_ms=self.now_ms)
        self.gossip = Gossip(self.host, self.validator, GossipSettings(
            degree=m.gossip_degree, degree_low=m.gossip_degree_low, degree_high=m.gossip_degree_high,
            heartbeat_s=m.heartbeat_s, rate_per_s=m.rate_per_s, rate_burst=m.rate_burst,
            penalties=PenaltySettings(ban_threshold=m.ban_threshold), ban_seconds=m.ban_seconds,
        ))
        self.sync = Sync(self.host, self.validator, self.sealer,
                         settings=SyncSettings(interval_s=m.sync_interval_s),
                         limiter=self.db_limiter, on_invalid=self.gossip.penalize)
        self.gossip.handle(POLICY_ACT, self._on_policy_act)
        self.gossip.handle(USAGE_ENTRY, self._on_usage_entry)
        self.gossip.handle(USAGE_ENTRIES, self._on_usage_entries)
        self.direct = DirectChannel(self.host, self.sealer)
        self.compute = ComputeService(self, config.compute)
        self.governance = GovernanceService(self)
        self.peer_views = PeerViews(self)
        self._nursery: trio.Nursery | None = None
        self._cm = None
        self._stopped = trio.Event()
        self.started = trio.Event()
        self.policy_updates = 0
        # Acts received by gossip wait here for the store writer (see _on_policy_act).
        self._acts_send, self._acts_recv = trio.open_memory_channel(10_000)
        # Usage entries received by gossip wait here for the usage writer (see _on_usage_entries).
        self._usage_send, self._usage_recv = trio.open_memory_channel(10_000)

    # --- plug-in seam ----------------------------------------------------------

    def register_type(self, type: str, topic: str, schema: SchemaHook | None = None) -> None:
        """Declare a message type, the topic (family) it travels on, and its schema hook."""
        self.types.register(type, topic, schema)

    def handle(self, type: str, handler: Handler) -> None:
        """Call ``handler(delivery)`` for every valid gossip message of ``type``."""
        self.gossip.handle(type, handler)

    async def subscribe(self, topic: str) -> None:
        await self.gossip.subscribe(topic)

    async def publish(self, topic: str, type: str, payload: Any) -> bytes:
        """Seal ``payload`` as ``type`` and gossip it on ``topic``; returns the message id."""
        data = self.sealer.seal(type, payload)
        return await self.gossip.publish(topic, data)

    async def blocking(self, fn, *args):
        """Run a blocking call (SQLite) in a worker thread behind the node's limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.db_limiter)

    # --- identity and addresses -----------------------------------------------

    @property
    def peer_id(self):
        return self.host.peer_id

    def listen_addrs(self) -> list[str]:
        return self.host.listen_addrs()

    # --- lifecycle ----------------------------------------------------------------

    def _open_stores(self) -> None:
        data = Path(self.config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.floor_store = FloorStore(data / "replay-floors.db")
        m = self.config.mesh
        self.replay = ReplayGuard(skew_ms=int(m.replay_skew_s * 1000),
                                  max_age_ms=int(m.replay_max_age_s * 1000),
                                  floor_store=self.floor_store)
        self.validator.replay = self.replay
        self.policy_store = PolicyStore(data / "policy.db", pinned=self.config.pinned_domains,
                                        coop_domains=self.config.coop_domains, local_did=self.did)
        self.usage_store = UsageStore(data / "usage.db", self.key, clock=self.clock)
        self.compute.open_stores(data)

    def _close_stores(self) -> None:
        for closer in (self._flush_floors, self.compute.close_stores, getattr(self.policy_store, "close", None),
                       getattr(self.usage_store, "close", None), getattr(self.floor_store, "close", None)):
            if closer is None:
                continue
            try:
                closer()
            except Exception as exc:
                log.warning("event=store_close_failed error=%r", exc)

    def _flush_floors(self) -> None:
        if self.replay is not None:
            self.replay.flush()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` or cancellation; ``task_status.started()`` once listening."""
        await self.blocking(self._open_stores)
        assert self.policy_store is not None and self.usage_store is not None
        self.governance.register_sync()  # domains before the acts judged under them
        self.sync.register(PolicySource(self.policy_store, clock_ms=self.now_ms))
        self.sync.register(UsageSource(self.usage_store, self.config.coops))
        await self.gossip.subscribe(TOPIC_POLICY)
        for coop in self.config.coops:
            await self.gossip.subscribe(usage_topic(coop))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Pubsub first: the swarm notifies it inline on every connection.
                await nursery.start(self.gossip.run)
                await nursery.start(self.sync.run)
                await nursery.start(self.host.run)
                await nursery.start(self.compute.run)
                nursery.start_soon(self._maintenance)
                nursery.start_soon(self._policy_writer)
                nursery.start_soon(self._usage_writer)
                log.info("event=node_started did=%s addrs=%s coops=%s", self.did,
                         self.listen_addrs(), self.config.coops)
                self.started.set()
                task_status.started()
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            with trio.move_on_after(self.config.mesh.shutdown_grace_s) as cs:
                cs.shield = True
                await self.blocking(self._close_stores)
            log.info("event=node_stopped did=%s", self.did)

    def stop(self) -> None:
        self._stopped.set()
        self.host.stop()

    async def __aenter__(self) -> "Node":
        self._cm = trio.open_nursery()
        nursery = await self._cm.__aenter__()
        try:
            await nursery.start(self.run)
        except BaseException as exc:
            await self._cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc_info) -> bool | None:
        self.stop()
        return await self._cm.__aexit__(*exc_info)

    async def _maintenance(self) -> None:
        while True:
            await trio.sleep(2.0)
            try:
                await self.blocking(self._flush_floors)
                if self.replay is not None:
                    self.replay.prune(self.now_ms())
            except Exception as exc:
                log.warning("event=floor_flush_failed error=%r", exc)

    # --- policies ----------------------------------------------------------------

    async def _on_policy_act(self, delivery: Delivery) -> None:
        """Hand the act to the store writer: gossip delivery never waits on SQLite.

        (An act still queued when the node stops is not lost for good: sync
        pulls it again from a neighbour.)
        """
        await self._acts_send.send(delivery.envelope.payload)

    async def _policy_writer(self) -> None:
        """Apply received acts in batches: one worker-thread call for all that are waiting."""
        async for act in self._acts_recv:
            batch = [act]
            while len(batch) < 256:
                try:
                    batch.append(self._acts_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            results = await self.blocking(self._apply_acts, batch)
            for result in results:
                if result.accepted:
                    self.policy_updates += 1
                log.debug("event=policy_act_received accepted=%s reason=%s act=%s",
                          result.accepted, result.reason, result.act_id)

    def _apply_acts(self, acts: list) -> list[ApplyResult]:
        now = self.now_ms()
        return [self.policy_store.apply_act(act, now) for act in acts]

    async def apply_and_publish_act(self, act: PolicyAct | dict) -> ApplyResult:
        """Apply an act locally; when accepted, gossip it (sync repairs any loss)."""
        wire = act.to_wire() if isinstance(act, PolicyAct) else act
        result = await self.blocking(self.policy_store.apply_act, wire, self.now_ms())
        if result.accepted:
            await self.publish(TOPIC_POLICY, POLICY_ACT, wire)
        return result

    async def set_local_policy(self, policy: CoopSchedulingPolicy | dict, *, reason: str = "") -> ApplyResult:
        """Development mode: set a coop's policy (no governance domain) with this node's key."""
        body = policy.to_icn_dict() if isinstance(policy, CoopSchedulingPolicy) else dict(policy)
        coop = body["coop_id"]
        head = self.policy_heads().get(coop)
        act = make_local_act(self.key, body, version=(head.version + 1) if head else 1,
                             parent_hash=head.policy_hash if head else None,
                             created_at_ms=self.now_ms(), reason=reason)
        return await self.apply_and_publish_act(act)

    def policy_heads(self) -> dict[str, Head]:
        return self.policy_store.heads() if self.policy_store else {}

    def current_policy(self, coop_id: str) -> PolicyVersion | None:
        return self.policy_store.current(coop_id, self.now_ms()) if self.policy_store else None

    # --- usage ---------------------------------------------------------------------

    async def _on_usage_entry(self, delivery: Delivery) -> None:
        await self._usage_send.send([delivery.envelope.payload])

    async def _on_usage_entries(self, delivery: Delivery) -> None:
        """Hand the entries to the usage writer: gossip delivery never waits on SQLite.

        (Entries still queued when the node stops are pulled again by sync.)
        """
        await self._usage_send.send(usage_batch(delivery.envelope))

    async def _usage_writer(self) -> None:
        """Merge received batches together: one transaction (one fsync) for all that wait."""
        async for first in self._usage_recv:
            batches = [first]
            size = len(_entries_of(first))
            while size < 4 * MAX_USAGE_BATCH:
                try:
                    more = self._usage_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batches.append(more)
                size += len(_entries_of(more))
            try:
                await self.blocking(self.usage_store.merge_batches, batches)
            except Exception as exc:  # sync repairs what these batches would have brought
                log.warning("event=usage_merge_failed entries=%d error=%r", size, exc)

    async def publish_usage(self, coop_id: str, entries: list[SignedUsageEntry], *,
                            since: int | None = None) -> None:
        """Gossip this node's own signed entries on the coop's topic, many to a message.

        Only for a coop this node serves. With ``since``, the caller says these are
        all of its entries changed after its version ``since`` (in version order),
        and each message vouches for the span of versions it completes, so that
        receivers' watermarks keep up although superseded versions never travel.
        A batch that would not fit the mesh's message size is split; anything
        lost on the way is repaired by sync.
        """
        if coop_id not in self.config.coops:
            return
        topic = usage_topic(coop_id)
        chunks = [entries[i:i + MAX_USAGE_BATCH] for i in range(0, len(entries), MAX_USAGE_BATCH)]
        while chunks:
            chunk = chunks.pop(0)
            body: dict[str, Any] = {"coop_id": coop_id, "entries": [e.to_wire() for e in chunk]}
            if since is not None:
                body["since"], body["through"] = since, chunk[-1].entry.version
            data = self.sealer.seal(USAGE_ENTRIES, body)
            if len(data) > self.limits.max_bytes and len(chunk) > 1:
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]
                continue
            await self.gossip.publish(topic, data)
            if since is not None:
                since = chunk[-1].entry.version

    async def record_usage(self, coop_id: str, member: str, **counters: int) -> SignedUsageEntry:
        """Add to this node's usage entry and gossip the signed entry on the coop's topic."""
        entry = await self.blocking(lambda: self.usage_store.increment(coop_id, member, **counters))
        signed = SignedUsageEntry.sign(entry, self.key)
        await self.publish_usage(coop_id, [signed])
        return signed


def _entries_of(batch: list[Any] | UsageDelta) -> list[Any]:
    return batch.entries if isinstance(batch, UsageDelta) else batch
