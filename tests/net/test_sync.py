"""Anti-entropy: late joiners and healed partitions converge through sync alone."""

import struct

import trio
from libp2p.network.stream.exceptions import StreamEOF

from icn_p2p.net.gossip import TOPIC_POLICY, usage_topic
from icn_p2p.net.sync import PROTOCOL_ID
from icn_p2p.node.harness import node_config, partition, start_nodes


async def wait_until(pred, timeout=10.0, step=0.02):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


def gossip_window_empty(c, topic=TOPIC_POLICY):
    """The routers can no longer replay recent messages to a new peer."""
    return all(not n.gossip.router.mcache.window(topic) for n in c.nodes if n.host.running)


async def test_late_joiner_catches_up_through_sync_alone(tmp_path, policy):
    async with start_nodes(4, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        assert (await c[0].set_local_policy(policy("coop-a", 1.0))).accepted
        assert (await c[0].set_local_policy(policy("coop-a", 2.0))).accepted
        await wait_until(lambda: all(n.policy_heads().get("coop-a", (0,))[0] == 2 for n in c.nodes))
        await wait_until(lambda: gossip_window_empty(c))
        late = await c.add_node(node_config(tmp_path, 4, mesh={"sync_interval_s": 3600}))
        c.edges.append((3, 4))
        await c.link(4, 3)  # on connect, both sides run a sync session
        await wait_until(lambda: late.policy_heads().get("coop-a", (0,))[0] == 2)
        assert late.policy_updates == 0  # nothing came by gossip
        assert late.current_policy("coop-a").policy.default_quota.cpu_hours_per_month == 2.0
        assert late.policy_store.digest() == c[0].policy_store.digest()


async def test_partition_heal_converges_through_sync_alone(tmp_path, policy):
    coops = ["coop-x"]
    async with start_nodes(6, tmp_path, topology="line", coops=coops,
                           mesh={"sync_interval_s": 0.5}) as c:
        cut = await partition(c, [0, 1, 2], [3, 4, 5])
        assert (await c[0].set_local_policy(policy("left", 1.0))).accepted
        assert (await c[5].set_local_policy(policy("right", 2.0))).accepted
        await c[1].record_usage("coop-x", "did:icn:alice", cpu_ms=1000, tasks_completed=1)
        await c[4].record_usage("coop-x", "did:icn:bob", cpu_ms=500)
        await wait_until(lambda: all("left" in c[i].policy_heads() for i in (0, 1, 2)))
        await wait_until(lambda: all("right" in c[i].policy_heads() for i in (3, 4, 5)))
        assert all("right" not in c[i].policy_heads() for i in (0, 1, 2))
        await wait_until(lambda: gossip_window_empty(c) and gossip_window_empty(c, usage_topic("coop-x")))
        updates = [n.policy_updates for n in c.nodes]
        await cut.heal()
        await wait_until(lambda: len({n.policy_store.digest() for n in c.nodes}) == 1
                         and len({n.usage_store.digest("coop-x") for n in c.nodes}) == 1)
        assert [n.policy_updates for n in c.nodes] == updates  # no gossip involved
        for n in c.nodes:
            assert {"left", "right"} <= set(n.policy_heads())
            assert n.usage_store.member_usage("coop-x", "did:icn:alice").tasks_completed_this_month == 1
            assert set(n.usage_store.members("coop-x")) == {"did:icn:alice", "did:icn:bob"}


async def test_usage_syncs_only_between_nodes_serving_the_coop(tmp_path):
    async with start_nodes(3, tmp_path, topology="line", mesh={"sync_interval_s": 0.3}) as c:
        # node 0 and 2 serve coop-p; node 1 (in the middle) does not.
        for i in (0, 2):
            c[i].config.coops.append("coop-p")
            c[i].sync.sources["usage"].coops.append("coop-p")
        await c[0].blocking(lambda: c[0].usage_store.increment("coop-p", "did:icn:m", cpu_ms=7))
        # node 1 never receives it, however many sync rounds run
        for _ in range(3):
            await c[1].sync.sync_all()
            await c[0].sync.sync_all()
        assert c[1].usage_store.coops() == []
        # a direct link between the two serving nodes carries it
        c.edges.append((0, 2))
        await c.link(2, 0)
        await wait_until(lambda: c[2].usage_store.digest("coop-p") == c[0].usage_store.digest("coop-p"))
        assert c[1].usage_store.coops() == []


async def test_half_frame_then_silence_does_not_wedge_the_server(tmp_path, policy):
    async with start_nodes(2, tmp_path, topology="line",
                           mesh={"sync_interval_s": 3600}) as c:
        c[0].sync.settings.session_timeout_s = 0.5
        stream = await c[1].host.libp2p.new_stream(c[0].peer_id, [PROTOCOL_ID])
        await stream.write(struct.pack(">I", 1000) + b"\xa1")  # promises 1000 bytes, sends 1
        # the server gives up on its own; a normal session still works right after
        assert await c[1].sync.sync_with(c[0].peer_id)
        await trio.sleep(0.7)
        await stream.reset()
        assert (await c[0].set_local_policy(policy("still-fine"))).accepted
        await wait_until(lambda: "still-fine" in c[1].policy_heads())


async def test_oversized_frame_is_refused(tmp_path):
    async with start_nodes(2, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        stream = await c[1].host.libp2p.new_stream(c[0].peer_id, [PROTOCOL_ID])
        await stream.write(struct.pack(">I", 2**31))
        with trio.fail_after(5):
            try:
                data = await stream.read(10)
            except StreamEOF:
                data = b""
        assert data == b""  # closed by the server, nothing read
