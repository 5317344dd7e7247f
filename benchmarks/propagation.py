"""Policy propagation on a localhost mesh: publish -> last node latency, throughput, bytes.

    python benchmarks/propagation.py                      # 10 and 50 nodes, in-process and processes
    python benchmarks/propagation.py --sizes 10 --messages 50 --no-processes --json

Random topology, every node with 3-4 neighbours. Each message is a signed
local policy act (a real ``policy.act`` envelope) published by node 0 and
paced by ``--interval-ms``; latency is measured from the publish call to the
arrival (valid, delivered to the handler) at the *last* node to get it.
``--burst`` messages are then published back to back to measure how many per
second one publisher can push to every node.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from icn_p2p.net.gossip import Delivery
from icn_p2p.node.harness import node_config, spawn_process_node, start_nodes, topology_edges
from icn_p2p.node.sources import POLICY_ACT


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def policy(coop: str, tag: int) -> dict:
    return {"coop_id": coop, "default_quota": {"cpu_hours_per_month": float(tag + 1),
                                               "max_concurrent_tasks": 1, "max_priority": "High"}}


async def in_process(n: int, messages: int, interval_ms: float, burst: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        arrivals: dict[str, dict[int, int]] = {}
        sizes: list[int] = []
        async with start_nodes(n, Path(tmp), topology="random", degree=3, seed=n,
                               mesh={"sync_interval_s": 3600, "ping_interval_s": 3600}) as c:
            for i, node in enumerate(c.nodes):
                async def on_act(d: Delivery, i=i) -> None:
                    tag = d.envelope.payload["proposal"]["reason"]
                    arrivals.setdefault(tag, {})[i] = time.perf_counter_ns()
                    if i == 1:
                        sizes.append(len(d.data))
                node.handle(POLICY_ACT, on_act)
            sent: dict[str, int] = {}
            for k in range(messages):
                tag = f"m{k}"
                sent[tag] = time.perf_counter_ns()
                await c[0].set_local_policy(policy(f"bench-{k}", k), reason=tag)
                await trio.sleep(interval_ms / 1000)
            with trio.move_on_after(10):
                while sum(len(arrivals.get(t, {})) for t in sent) < messages * n:
                    await trio.sleep(0.01)
            lat = [(max(arrivals[t].values()) - sent[t]) / 1e6 for t in sent
                   if len(arrivals.get(t, {})) == n]
            delivered = sum(len(arrivals.get(t, {})) for t in sent) / (messages * n)
            # throughput: a back-to-back burst
            t0 = time.perf_counter_ns()
            btags = [f"b{k}" for k in range(burst)]
            for k, tag in enumerate(btags):
                await c[0].set_local_policy(policy(f"burst-{k}", k), reason=tag)
            with trio.move_on_after(60):
                while sum(len(arrivals.get(t, {})) for t in btags) < burst * n:
                    await trio.sleep(0.01)
            t1 = max((max(arrivals[t].values()) for t in btags if t in arrivals), default=t0)
            burst_delivered = sum(len(arrivals.get(t, {})) for t in btags) / max(1, burst * n)
            mesh = statistics.mean(len(x.gossip.mesh_peers("icn/policy/1")) for x in c.nodes)
    return result(n, False, lat, delivered, burst, (t1 - t0) / 1e9, burst_delivered,
                  statistics.mean(sizes) if sizes else 0, mesh)


def result(n, processes, lat, delivered, burst, burst_s, burst_delivered, size, mesh) -> dict:
    return {
        "nodes": n, "processes": processes, "messages": len(lat),
        "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "delivered_fraction": round(delivered, 4),
        "burst": burst, "burst_msgs_per_s": round(burst / burst_s, 1) if burst_s > 0 else None,
        "burst_delivered_fraction": round(burst_delivered, 4),
        "envelope_bytes": int(size),
        # each node sends every message once to each mesh peer except the one it came from
        "est_bytes_sent_per_node_per_msg": int(size * max(mesh - 1, 1)) if size else None,
        "mean_mesh_degree": round(mesh, 2),
    }


async def processes(n: int, messages: int, interval_ms: float, burst: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        arrivals: dict[str, dict[int, int]] = {}
        sizes: list[int] = []
        children = []
        async with trio.open_nursery() as nursery:
            async def boot(i: int) -> None:
                cfg = node_config(base, i, mesh={"sync_interval_s": 3600, "ping_interval_s": 3600})
                children.append(await spawn_process_node(i, cfg, base, timeout=120))

            async with trio.open_nursery() as starter:
                for i in range(n):
                    starter.start_soon(boot, i)
            children.sort(key=lambda x: x[0].index)

            async def reader(i: int, out) -> None:
                buf = children[i][0]._rest
                while True:
                    while b"\n" in buf:
                        line, _, buf = buf.partition(b"\n")
                        ev = json.loads(line)
                        if ev.get("event") == "act":
                            arrivals.setdefault(ev["reason"], {})[i] = ev["t_ns"]
                            if i == 1:
                                sizes.append(ev["bytes"])
                    chunk = await out.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk

            for i, (child, out) in enumerate(children):
                nursery.start_soon(reader, i, out)

            async def cmd(i: int, obj: dict) -> None:
                await children[i][0].proc.stdin.send_all(json.dumps(obj).encode() + b"\n")

            for a, b in topology_edges(n, "random", degree=3, seed=n):
                await cmd(b, {"op": "connect", "addr": children[a][0].addrs[0]})
            await trio.sleep(3.0 + n * 0.05)  # links up and meshes grafted
            sent: dict[str, int] = {}
            for k in range(messages):
                tag = f"m{k}"
                sent[tag] = time.time_ns()
                await cmd(0, {"op": "publish_policy", "coop": f"bench-{k}", "tag": k})
                await trio.sleep(interval_ms / 1000)
            # the child sets reason=str(tag); map our tags to theirs
            with trio.move_on_after(15):
                while sum(len(arrivals.get(str(k), {})) for k in range(messages)) < messages * n:
                    await trio.sleep(0.02)
            lat = [(max(arrivals[str(k)].values()) - sent[f"m{k}"]) / 1e6 for k in range(messages)
                   if len(arrivals.get(str(k), {})) == n]
            delivered = sum(len(arrivals.get(str(k), {})) for k in range(messages)) / (messages * n)
            t0 = time.time_ns()
            btags = [str(100_000 + k) for k in range(burst)]
            for k in range(burst):
                await cmd(0, {"op": "publish_policy", "coop": f"burst-{k}", "tag": 100_000 + k})
            with trio.move_on_after(60):
                while sum(len(arrivals.get(t, {})) for t in btags) < burst * n:
                    await trio.sleep(0.02)
            t1 = max((max(arrivals[t].values()) for t in btags if t in arrivals), default=t0)
            burst_delivered = sum(len(arrivals.get(t, {})) for t in btags) / max(1, burst * n)
            for child, _ in children:
                child.kill()
            nursery.cancel_scope.cancel()
    return result(n, True, lat, delivered, burst, (t1 - t0) / 1e9, burst_delivered,
                  statistics.mean(sizes) if sizes else 0, 3.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--no-processes", action="store_true")
    ap.add_argument("--no-in-process", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    out = []
    for n in args.sizes:
        if not args.no_in_process:
            out.append(trio.run(in_process, n, args.messages, args.interval_ms, args.burst))
            if not args.json:
                print(out[-1], flush=True)
        if not args.no_processes:
            out.append(trio.run(processes, n, args.messages, args.interval_ms, args.burst))
            if not args.json:
                print(out[-1], flush=True)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
