"""Policy propagation on a localhost mesh: publish -> last node latency, CPU, bytes, throughput.

    python benchmarks/propagation.py                      # 10 and 50 nodes, in-process and processes
    python benchmarks/propagation.py --sizes 50 --no-processes --interval-ms 100 --json

Random topology, every node with 3-4 neighbours. Each message is a signed
local policy act (a real ``policy.act`` envelope) published by node 0 and
paced by ``--interval-ms`` (default 1 s: policy updates are rare events; at
short intervals a 50-node mesh on two cores measures its CPU saturation, not
its propagation latency). Figures per configuration:

- ``p50_ms``/``p99_ms``/``max_ms``: publish call -> delivery (validated, handed
  to the handlers) at the *last* node to get it;
- ``applied_p50_ms``/``applied_p99_ms`` (in-process only): publish call -> the
  act written to the last node's policy store;
- ``cpu_ms_per_msg``: CPU of all nodes (this process, or the sum over the
  child processes) per message, beyond the same mesh's idle CPU;
- ``bytes_per_node_per_msg``: TCP payload bytes the nodes' connections sent
  (kernel counters, ``ss``) per node per message, beyond the idle traffic;
- ``burst_msgs_per_s``: ``--burst`` messages published back to back, divided
  by the time until the last node had the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from icn_p2p.net.gossip import Delivery
from icn_p2p.node.harness import node_config, spawn_process_node, start_nodes, topology_edges
from icn_p2p.node.sources import POLICY_ACT

MESH = {"sync_interval_s": 3600, "ping_interval_s": 3600}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def rnd(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def policy(coop: str, tag: int) -> dict:
    return {"coop_id": coop, "default_quota": {"cpu_hours_per_month": float(tag + 1),
                                               "max_concurrent_tasks": 1, "max_priority": "High"}}


def _port(addr: str) -> int:
    return int(re.search(r"/tcp/(\d+)", addr).group(1))


def tcp_bytes_sent(ports: set[int]) -> int | None:
    """Payload bytes sent so far by every established TCP socket with an end on one of ``ports``.

    Each connection between two nodes is two sockets (one per end); both
    are counted, so this is what all the nodes sent. None without ``ss``.
    """
    try:
        out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total, ours = 0, False
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            ends = re.findall(r":(\d+)\s", line + " ")
            ours = len(ends) >= 2 and (int(ends[-2]) in ports or int(ends[-1]) in ports)
            continue
        m = re.search(r"bytes_sent:(\d+)", line)
        if ours and m:
            total += int(m.group(1))
    return total


def cpu_seconds(pids: list[int] | None) -> float:
    """CPU (user + system) of this process, or of the given child processes."""
    if pids is None:
        return time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class Meter:
    """Idle baseline of CPU and bytes, then the same over the measured window."""

    def __init__(self, ports: set[int], pids: list[int] | None) -> None:
        self.ports, self.pids = ports, pids
        self.idle_cpu_per_s = 0.0
        self.idle_bytes_per_s: float | None = 0.0

    def sample(self) -> tuple[float, float, int | None]:
        return time.perf_counter(), cpu_seconds(self.pids), tcp_bytes_sent(self.ports)

    async def idle(self, seconds: float) -> None:
        t0, c0, b0 = self.sample()
        await trio.sleep(seconds)
        t1, c1, b1 = self.sample()
        self.idle_cpu_per_s = (c1 - c0) / (t1 - t0)
        self.idle_bytes_per_s = (b1 - b0) / (t1 - t0) if b0 is not None and b1 is not None else None

    def net(self, start, end, n: int, messages: int) -> tuple[float, float | None]:
        (t0, c0, b0), (t1, c1, b1) = start, end
        cpu_ms = ((c1 - c0) - self.idle_cpu_per_s * (t1 - t0)) * 1000 / max(1, messages)
        if b0 is None or b1 is None or self.idle_bytes_per_s is None:
            return cpu_ms, None
        net_bytes = (b1 - b0) - self.idle_bytes_per_s * (t1 - t0)
        return cpu_ms, net_bytes / max(1, messages) / n


async def wait_for(pred, timeout: float, step: float = 0.01) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(step)


def result(n, processes, interval_ms, lat, applied, delivered, cpu_ms, bytes_msg, meter,
           burst, burst_s, burst_delivered, size, mesh) -> dict:
    return {
        "nodes": n, "processes": processes, "interval_ms": interval_ms, "messages": len(lat),
        "p50_ms": rnd(pct(lat, 0.5)), "p99_ms": rnd(pct(lat, 0.99)),
        "max_ms": rnd(max(lat)) if lat else None,
        "delivered_fraction": round(delivered, 4),
        "applied_p50_ms": rnd(pct(applied, 0.5)), "applied_p99_ms": rnd(pct(applied, 0.99)),
        "cpu_ms_per_msg": rnd(cpu_ms),
        "idle_cpu_fraction": round(meter.idle_cpu_per_s, 3),
        "bytes_per_node_per_msg": int(bytes_msg) if bytes_msg is not None else None,
        "idle_bytes_per_node_per_s": int(meter.idle_bytes_per_s / n) if meter.idle_bytes_per_s is not None else None,
        "envelope_bytes": int(size),
        "mean_mesh_degree": round(mesh, 2) if mesh is not None else None,
        "burst": burst, "burst_msgs_per_s": round(burst / burst_s, 1) if burst and burst_s > 0 else None,
        "burst_delivered_fraction": round(burst_delivered, 4) if burst else None,
    }


async def in_process(n: int, messages: int, interval_ms: float, burst: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        arrivals: dict[str, dict[int, int]] = {}
        applied: dict[str, dict[int, int]] = {}
        sizes: list[int] = []
        async with start_nodes(n, Path(tmp), topology="random", degree=3, seed=n, mesh=MESH) as c:
            for i, node in enumerate(c.nodes):
                async def on_act(d: Delivery, i=i) -> None:
                    tag = d.envelope.payload["proposal"]["reason"]
                    arrivals.setdefault(tag, {})[i] = time.perf_counter_ns()
                    if i == 1:
                        sizes.append(len(d.data))
                node.handle(POLICY_ACT, on_act)

                inner = getattr(node, "_apply_acts", None)
                if inner is not None:  # the store writer's batch, in its worker thread
                    def timed_apply(acts, i=i, inner=inner):
                        out = inner(acts)
                        t = time.perf_counter_ns()
                        for act in acts:
                            applied.setdefault(act["proposal"]["reason"], {})[i] = t
                        return out
                    node._apply_acts = timed_apply
            ports = {_port(node.listen_addrs()[0]) for node in c.nodes}
            meter = Meter(ports, None)
            await trio.sleep(1.0)
            await meter.idle(3.0)
            start = meter.sample()
            sent: dict[str, int] = {}
            for k in range(messages):
                tag = f"m{k}"
                sent[tag] = time.perf_counter_ns()
                await c[0].set_local_policy(policy(f"bench-{k}", k), reason=tag)
                await trio.sleep(interval_ms / 1000)
            timed = hasattr(c[0], "_apply_acts")
            await wait_for(lambda: (not timed or sum(len(applied.get(t, {})) for t in sent) >= messages * n)
                           and sum(len(arrivals.get(t, {})) for t in sent) >= messages * n, 10)
            cpu_ms, bytes_msg = meter.net(start, meter.sample(), n, messages)
            lat = [(max(arrivals[t].values()) - sent[t]) / 1e6 for t in sent if len(arrivals.get(t, {})) == n]
            app = [(max(applied[t].values()) - sent[t]) / 1e6 for t in sent if len(applied.get(t, {})) == n]
            delivered = sum(len(arrivals.get(t, {})) for t in sent) / (messages * n)
            burst_s, burst_delivered = 0.0, 0.0
            if burst:
                t0 = time.perf_counter_ns()
                btags = [f"b{k}" for k in range(burst)]
                for k, tag in enumerate(btags):
                    await c[0].set_local_policy(policy(f"burst-{k}", k), reason=tag)
                await wait_for(lambda: sum(len(arrivals.get(t, {})) for t in btags) >= burst * n, 60)
                t1 = max((max(arrivals[t].values()) for t in btags if t in arrivals), default=t0)
                burst_s = (t1 - t0) / 1e9
                burst_delivered = sum(len(arrivals.get(t, {})) for t in btags) / (burst * n)
            mesh = statistics.mean(len(x.gossip.mesh_peers("icn/policy/1")) for x in c.nodes)
    return result(n, False, interval_ms, lat, app, delivered, cpu_ms, bytes_msg, meter, burst, burst_s,
                  burst_delivered, statistics.mean(sizes) if sizes else 0, mesh)


async def processes(n: int, messages: int, interval_ms: float, burst: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        arrivals: dict[str, dict[int, int]] = {}
        sizes: list[int] = []
        children = []
        async with trio.open_nursery() as nursery:
            async def boot(i: int) -> None:
                cfg = node_config(base, i, mesh=MESH)
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
            meter = Meter({_port(ch.addrs[0]) for ch, _ in children}, [ch.proc.pid for ch, _ in children])
            await meter.idle(3.0)
            start = meter.sample()
            sent: dict[str, int] = {}
            for k in range(messages):
                sent[str(k)] = time.time_ns()  # the child sets reason=str(tag)
                await cmd(0, {"op": "publish_policy", "coop": f"bench-{k}", "tag": k})
                await trio.sleep(interval_ms / 1000)
            await wait_for(lambda: sum(len(arrivals.get(t, {})) for t in sent) >= messages * n, 15, 0.02)
            await trio.sleep(0.5)  # let the store writes after the last delivery count too
            cpu_ms, bytes_msg = meter.net(start, meter.sample(), n, messages)
            lat = [(max(arrivals[t].values()) - sent[t]) / 1e6 for t in sent if len(arrivals.get(t, {})) == n]
            delivered = sum(len(arrivals.get(t, {})) for t in sent) / (messages * n)
            burst_s, burst_delivered = 0.0, 0.0
            if burst:
                t0 = time.time_ns()
                btags = [str(100_000 + k) for k in range(burst)]
                for k in range(burst):
                    await cmd(0, {"op": "publish_policy", "coop": f"burst-{k}", "tag": 100_000 + k})
                await wait_for(lambda: sum(len(arrivals.get(t, {})) for t in btags) >= burst * n, 60, 0.02)
                t1 = max((max(arrivals[t].values()) for t in btags if t in arrivals), default=t0)
                burst_s = (t1 - t0) / 1e9
                burst_delivered = sum(len(arrivals.get(t, {})) for t in btags) / (burst * n)
            for child, _ in children:
                child.kill()
            nursery.cancel_scope.cancel()
    return result(n, True, interval_ms, lat, [], delivered, cpu_ms, bytes_msg, meter, burst, burst_s,
                  burst_delivered, statistics.mean(sizes) if sizes else 0, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--messages", type=int, default=30)
    ap.add_argument("--interval-ms", type=float, default=1000.0)
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
