"""Node lifecycle, config and the multi-process harness."""

import json

import pytest
import trio

from icn_p2p.node.config import ConfigError, NodeConfig
from icn_p2p.node.harness import node_config, spawn_process_node, start_nodes, topology_edges
from icn_p2p.node.node import Node


async def wait_until(pred, timeout=10.0, step=0.02):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "node.toml"
    bad.write_text('key_file = "k"\ndata_dir = "d"\nbootstrap = ["/ip4/127.0.0.1/tcp/1"]\n'
                   '[mesh]\ngossip_degree = 99\n')
    with pytest.raises(ConfigError) as err:
        NodeConfig.from_toml(bad)
    text = str(err.value)
    assert "bootstrap" in text and "/p2p/" in text
    assert "mesh" in text and "degree" in text
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "x.toml").write_text("key_file = ")
        NodeConfig.from_toml(tmp_path / "x.toml")
    with pytest.raises(ConfigError, match="file not found"):
        NodeConfig.from_toml(tmp_path / "missing.toml")


def test_config_round_trips_through_toml(tmp_path):
    cfg = node_config(tmp_path, 0, coops=["b", "a"], capabilities={"wasm": "1.0"}, region="eu-central")
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = NodeConfig.from_toml(path)
    assert again == cfg
    assert again.coops == ["a", "b"]


def test_topologies():
    assert topology_edges(4, "line") == [(0, 1), (1, 2), (2, 3)]
    assert len(topology_edges(5, "ring")) == 5
    assert len(topology_edges(5, "full")) == 10
    edges = topology_edges(30, "random", degree=3, seed=1)
    deg = {i: 0 for i in range(30)}
    for a, b in edges:
        deg[a] += 1
        deg[b] += 1
    assert min(deg.values()) >= 3 and max(deg.values()) <= 5


async def test_node_context_manager_and_bounded_shutdown(tmp_path, autojump_clock=None):
    async with start_nodes(8, tmp_path, topology="random", degree=3) as c:
        assert all(n.host.running for n in c.nodes)
        with trio.fail_after(5):  # shutdown of all nodes must not hang
            for n in c.nodes:
                n.stop()
            await wait_until(lambda: not any(n.host.running for n in c.nodes))
    # stores were closed; the same data dir opens again with its state
    async with Node(node_config(tmp_path, 0)) as again:
        assert again.host.running


@pytest.mark.slow
async def test_killed_process_peer_does_not_wedge_its_neighbours(tmp_path, policy=None):
    body = {"coop_id": "after-kill", "default_quota": {"cpu_hours_per_month": 1.0,
            "max_concurrent_tasks": 1, "max_priority": "High"}}
    async with start_nodes(3, tmp_path, topology="line", mesh={"sync_interval_s": 0.5}) as c:
        child, out = await spawn_process_node(9, node_config(tmp_path, 9), tmp_path)
        try:
            for i in (0, 2):  # the child bridges both ends too
                c[i].host.add_persistent_peer(child.addrs[0])
            await wait_until(lambda: c[0].host.is_connected(
                c[0].host.peer_for_did(child.did)), timeout=15)
            for k in range(20):  # traffic in flight while the child dies
                await child.proc.stdin.send_all(
                    json.dumps({"op": "publish_policy", "coop": f"k{k}", "tag": k}).encode() + b"\n")
            await trio.sleep(0.05)
            child.kill()
            await child.proc.wait()
        finally:
            child.kill()
        with trio.fail_after(10):
            assert (await c[0].set_local_policy(body)).accepted
            await wait_until(lambda: all("after-kill" in n.policy_heads() for n in c.nodes))
            assert await c[1].sync.sync_with(c[0].peer_id)
