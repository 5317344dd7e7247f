"""Many nodes on 127.0.0.1, for tests, simulations and benchmarks.

:func:`start_nodes` runs N nodes in this trio process and links them in a
chosen topology; links are *persistent* (the dialling side redials a dropped
link with backoff), so :func:`partition` cuts a set of links by blocking them
on both sides and :meth:`Partition.heal` lifts the block and lets the
dialers restore them. :func:`spawn_process_nodes` starts nodes as separate OS
processes (``python -m icn_p2p.node.harness_child <config.toml>``) that
report their multiaddrs back on stdout.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

from icn_p2p.identity.keys import NodeKey, write_key_file
from icn_p2p.net.gossip import TOPIC_POLICY
from icn_p2p.node.config import NodeConfig
from icn_p2p.node.node import Node

Topology = Literal["line", "ring", "random", "full", "none"]


def topology_edges(n: int, kind: Topology, *, degree: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """Undirected edges (i < j) of a topology over nodes 0..n-1.

    ``random`` is a connected random graph where every node has at least
    ``degree`` neighbours (a ring for connectivity plus random chords).
    """
    if n < 2 or kind == "none":
        return []
    if kind == "line":
        return [(i, i + 1) for i in range(n - 1)]
    if kind == "ring":
        return sorted({tuple(sorted((i, (i + 1) % n))) for i in range(n)})  # type: ignore[misc]
    if kind == "full":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if kind == "random":
        rng = random.Random(seed)
        edges = {tuple(sorted((i, (i + 1) % n))) for i in range(n)}
        adj = {i: set() for i in range(n)}
        for a, b in edges:
            adj[a].add(b)
            adj[b].add(a)
        target = min(degree, n - 1)
        for i in rng.sample(range(n), n):
            tries = 0
            while len(adj[i]) < target and tries < 10 * n:
                tries += 1
                j = rng.randrange(n)
                if j != i and j not in adj[i] and len(adj[j]) < target + 1:
                    adj[i].add(j)
                    adj[j].add(i)
                    edges.add(tuple(sorted((i, j))))
        return sorted(edges)  # type: ignore[arg-type]
    raise ValueError(f"unknown topology {kind!r}")


def node_config(base: Path, index: int, **overrides: Any) -> NodeConfig:
    """A config for node ``index`` under ``base`` (its key file is created once)."""
    home = Path(base) / f"node{index}"
    home.mkdir(parents=True, exist_ok=True)
    key_file = home / "node.key"
    if not key_file.exists():
        write_key_file(key_file)
    data = {"key_file": key_file, "data_dir": home / "data", "rpc_port": 0}
    mesh = overrides.pop("mesh", None)
    data.update(overrides)
    if mesh:
        data["mesh"] = mesh
    return NodeConfig.from_mapping(data)


@dataclass
class Cluster:
    """Handles to nodes running in this process."""

    nodes: list[Node]
    edges: list[tuple[int, int]]
    nursery: trio.Nursery

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def __len__(self) -> int:
        return len(self.nodes)

    def neighbours(self, i: int) -> set[int]:
        return {b if a == i else a for a, b in self.edges if i in (a, b)}

    async def link(self, i: int, j: int) -> None:
        """Persistent link i -> j (i dials); waits until it is up."""
        a, b = self.nodes[i], self.nodes[j]
        a.host.add_persistent_peer(b.listen_addrs()[0])
        with trio.fail_after(10):
            while not a.host.is_connected(b.peer_id):
                await trio.sleep(0.01)

    async def add_node(self, config: NodeConfig) -> Node:
        node = Node(config)
        await self.nursery.start(node.run)
        self.nodes.append(node)
        return node

    async def stop_node(self, i: int) -> None:
        self.nodes[i].stop()
        with trio.fail_after(10):
            while self.nodes[i].host.running:
                await trio.sleep(0.01)

    async def wait_mesh(self, topic: str = TOPIC_POLICY, timeout: float = 10.0,
                        nodes: Iterable[int] | None = None) -> None:
        """Wait until every node's gossip mesh on ``topic`` holds its live neighbours
        (up to the mesh degree)."""
        idx = list(range(len(self.nodes))) if nodes is None else list(nodes)
        with trio.fail_after(timeout):
            while True:
                ready = True
                for i in idx:
                    node = self.nodes[i]
                    if not node.host.running:
                        continue
                    want = {self.nodes[j].peer_id for j in self.neighbours(i)
                            if self.nodes[j].host.running and node.host.is_connected(self.nodes[j].peer_id)}
                    mesh = node.gossip.mesh_peers(topic)
                    need = min(len(want), node.gossip.settings.degree_low)
                    if len(mesh & want) < need:
                        ready = False
                        break
                if ready:
                    return
                await trio.sleep(0.02)


@asynccontextmanager
async def start_nodes(
    n: int,
    base: Path,
    *,
    topology: Topology = "line",
    degree: int = 3,
    seed: int = 0,
    coops: list[str] | None = None,
    wait_mesh: bool = True,
    per_node: list[dict[str, Any]] | None = None,
    clock: Any = None,
    **config: Any,
) -> AsyncIterator[Cluster]:
    """Start ``n`` nodes in this process, linked in ``topology``; stop them all on exit.

    ``config`` applies to every node; ``per_node[i]`` adds to or overrides it for node i.
    """
    per_node = per_node or [{} for _ in range(n)]
    configs = [node_config(base, i, coops=list(coops or []), **{**dict(config), **per_node[i]})
               for i in range(n)]
    edges = topology_edges(n, topology, degree=degree, seed=seed)
    async with trio.open_nursery() as nursery:
        cluster = Cluster([Node(c, clock=clock) for c in configs], edges, nursery)
        try:
            async with trio.open_nursery() as starter:
                for node in cluster.nodes:
                    starter.start_soon(nursery.start, node.run)
            async with trio.open_nursery() as linker:  # dials in parallel (~250 ms each)
                for a, b in edges:
                    linker.start_soon(cluster.link, b, a)
            if wait_mesh and edges:
                await cluster.wait_mesh()
            yield cluster
        finally:
            for node in cluster.nodes:
                node.stop()


@dataclass
class Partition:
    """A cut between two groups of nodes; :meth:`heal` restores the links."""

    cluster: Cluster
    a: list[int]
    b: list[int]
    healed: bool = field(default=False)

    async def heal(self) -> None:
        for i in self.a:
            for j in self.b:
                self.cluster[i].host.unblock(self.cluster[j].peer_id)
                self.cluster[j].host.unblock(self.cluster[i].peer_id)
        self.healed = True


async def partition(cluster: Cluster, a: Iterable[int], b: Iterable[int]) -> Partition:
    """Cut every link between groups ``a`` and ``b`` and block redials while cut."""
    a, b = list(a), list(b)
    async with trio.open_nursery() as nursery:
        for i in a:
            for j in b:
                nursery.start_soon(cluster[i].host.block, cluster[j].peer_id)
                nursery.start_soon(cluster[j].host.block, cluster[i].peer_id)
    with trio.fail_after(5):
        while any(cluster[i].host.is_connected(cluster[j].peer_id) for i in a for j in b):
            await trio.sleep(0.01)
    return Partition(cluster, a, b)


# --- separate processes ----------------------------------------------------------------


@dataclass
class ProcessNode:
    """A node running in a child process."""

    index: int
    proc: trio.Process
    did: str
    addrs: list[str]
    config_path: Path

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()


async def spawn_process_node(index: int, config: NodeConfig, base: Path, *,
                             extra_args: list[str] | None = None,
                             timeout: float = 30.0) -> tuple[ProcessNode, trio.abc.ReceiveStream]:
    """Start ``python -m icn_p2p.node.harness_child`` and wait for its ready line."""
    path = Path(base) / f"node{index}.toml"
    path.write_text(config.to_toml())
    cmd = [sys.executable, "-m", "icn_p2p.node.harness_child", str(path), *(extra_args or [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env)
    buf = b""
    with trio.fail_after(timeout):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"node {index} exited before reporting its addresses")
            buf += chunk
    line, _, rest = buf.partition(b"\n")
    ready = json.loads(line)
    node = ProcessNode(index, proc, ready["did"], ready["addrs"], path)
    node._rest = rest  # type: ignore[attr-defined]
    return node, proc.stdout
