"""Submit -> result latency and throughput of trivial tasks on a localhost mesh.

Real nodes on 127.0.0.1 (libp2p hosts, SQLite stores, wasmtime), fully
connected: one takes submissions, the others execute. By default every node
is its own OS process (as deployed; `simulations/child.py` runs each), and the
timing runs inside the submitting node; ``--in-process`` puts every node in
this process instead (one interpreter shares all their work).

    python benchmarks/tasks.py [--nodes 5] [--tasks 300] [--concurrency 32] [--in-process] [--json]

Latency is measured one task at a time; throughput with ``--concurrency``
tasks in flight. ``lost`` counts tasks that never reached a final state.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icn_p2p.node.harness import node_config, start_nodes  # noqa: E402
from icn_p2p.core.clock import OffsetClock  # noqa: E402
from simulations.agent import NodeAgent  # noqa: E402
from simulations.backends import ProcessBackend  # noqa: E402

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
COOP = "bench-coop"
POLICY = {"coop_id": COOP, "default_quota": {"cpu_hours_per_month": 1000.0, "max_concurrent_tasks": 100_000,
                                             "max_priority": "Critical"}}
RUN = {"coop": COOP, "wat": ADD, "entry": "add", "args": [2, 3], "fuel": 100_000}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarise(nodes: int, processes: bool, serial: dict, loaded: dict, concurrency: int) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for part in (serial, loaded):
        for state, n in part["outcomes"].items():
            outcomes[state] = outcomes.get(state, 0) + n
    submitted = sum(outcomes.values())
    lat, busy = serial["latencies_ms"], loaded["latencies_ms"]
    return {
        "nodes": nodes, "processes": processes, "tasks": submitted,
        "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(percentile(lat, 99), 2),
        "loaded_p50_ms": round(statistics.median(busy), 2) if busy else None,
        "loaded_p99_ms": round(percentile(busy, 99), 2) if busy else None,
        "tasks_per_s": round(len(busy) / loaded["wall_s"], 1), "concurrency": concurrency,
        "completed": outcomes.get("completed", 0),
        "lost": submitted - sum(n for s, n in outcomes.items() if s in
                                ("completed", "failed", "rejected", "cancelled", "expired")),
        "outcomes": outcomes,
    }


async def run_in_process(nodes: int, tasks: int, concurrency: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        per_node = [{"roles": ["submitter"]}] + [{"roles": ["executor"]} for _ in range(nodes - 1)]
        async with start_nodes(nodes, Path(tmp), topology="full", coops=[COOP], per_node=per_node) as cluster:
            agent = NodeAgent(cluster[0], OffsetClock())
            await cluster[0].set_local_policy(POLICY)
            with trio.fail_after(10):
                while not all(n.policy_heads().get(COOP) for n in cluster.nodes):
                    await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                agent._nursery = nursery
                await agent.op_run_tasks(count=warmup, concurrency=1, prefix="w", **RUN)
                serial = await agent.op_run_tasks(count=min(tasks, 100), concurrency=1, prefix="s", **RUN)
                loaded = await agent.op_run_tasks(count=tasks, concurrency=concurrency, prefix="l", **RUN)
                nursery.cancel_scope.cancel()
    return summarise(nodes, False, serial, loaded, concurrency)


async def run_processes(nodes: int, tasks: int, concurrency: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with trio.open_nursery() as nursery:
            backend = ProcessBackend(nursery, base)
            try:
                handles = []
                for i in range(nodes):
                    roles = ["submitter"] if i == 0 else ["executor"]
                    handles.append(await backend.start(i, node_config(base, i, coops=[COOP], roles=roles)))
                async with trio.open_nursery() as linker:
                    for i in range(nodes):
                        for j in range(i + 1, nodes):
                            linker.start_soon(lambda a=i, b=j: handles[a].call("link", addr=handles[b].addr()))
                await handles[0].call("set_policy", body=POLICY)
                with trio.fail_after(15):
                    for h in handles:
                        while COOP not in await h.call("heads"):
                            await trio.sleep(0.05)
                sub = handles[0]
                await sub.call("run_tasks", count=warmup, concurrency=1, prefix="w", timeout=120, **RUN)
                serial = await sub.call("run_tasks", count=min(tasks, 100), concurrency=1, prefix="s",
                                        timeout=600, **RUN)
                loaded = await sub.call("run_tasks", count=tasks, concurrency=concurrency, prefix="l",
                                        timeout=600, **RUN)
            finally:
                await backend.stop_all()
            nursery.cancel_scope.cancel()
    return summarise(nodes, True, serial, loaded, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--in-process", action="store_true", help="all nodes in this process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    run = run_in_process if args.in_process else run_processes
    result = trio.run(run, args.nodes, args.tasks, args.concurrency, args.warmup)
    if args.json:
        print(json.dumps(result))
        return
    where = "one process" if args.in_process else "one process per node"
    print(f"{result['nodes']} nodes ({where}), {result['tasks']} trivial tasks")
    print(f"  submit -> result, one at a time: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    print(f"  with {result['concurrency']} in flight: p50 {result['loaded_p50_ms']} ms, "
          f"p99 {result['loaded_p99_ms']} ms, {result['tasks_per_s']} tasks/s")
    print(f"  outcomes {result['outcomes']}, lost {result['lost']}")


if __name__ == "__main__":
    main()
