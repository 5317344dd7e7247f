"""Submit -> result latency and throughput of trivial tasks on a localhost mesh.

Real nodes in one trio process on 127.0.0.1 (libp2p hosts, SQLite stores,
wasmtime), fully connected. One node takes submissions; the others execute.

    python benchmarks/tasks.py [--nodes 5] [--tasks 200] [--concurrency 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import trio

from icn_p2p.core.task import ComputeTask
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.lifecycle import TaskState

ADD = b'(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
COOP = "bench-coop"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run(nodes: int, tasks: int, concurrency: int, warmup: int) -> dict:
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        per_node = [{"roles": ["submitter"]}] + [{"roles": ["executor"]} for _ in range(nodes - 1)]
        async with start_nodes(nodes, Path(tmp), topology="full", coops=[COOP], per_node=per_node,
                               offer_window_ms=100) as cluster:
            submitter = cluster[0]
            await submitter.set_local_policy({
                "coop_id": COOP,
                "default_quota": {"cpu_hours_per_month": 1000.0, "max_concurrent_tasks": 100_000,
                                  "max_priority": "Critical"},
            })
            with trio.fail_after(10):
                while not all(n.policy_heads().get(COOP) for n in cluster.nodes):
                    await trio.sleep(0.01)

            latencies: list[float] = []
            outcomes: dict[str, int] = {}
            counter = iter(range(10**9))

            async def one(record_it: bool) -> None:
                i = next(counter)
                task = ComputeTask(id=f"b{i}", coop_id=COOP, submitter=f"did:icn:m{i % 50}",
                                   entry="add", args=[i, 1], fuel_limit=100_000)
                started = time.perf_counter()
                await submitter.compute.submit(task, ADD)
                done = await submitter.compute.wait(task.id, timeout=30)
                elapsed = (time.perf_counter() - started) * 1000
                state = done.state.value if done else "missing"
                if record_it:
                    outcomes[state] = outcomes.get(state, 0) + 1
                    if done is not None and done.state is TaskState.COMPLETED:
                        latencies.append(elapsed)

            for _ in range(warmup):
                await one(False)

            # Latency: one task at a time.
            serial = min(tasks, 100)
            for _ in range(serial):
                await one(True)
            serial_latencies = list(latencies)

            # Throughput: `concurrency` tasks in flight.
            latencies.clear()
            limiter = trio.Semaphore(concurrency)
            started = time.perf_counter()

            async def guarded() -> None:
                async with limiter:
                    await one(True)

            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(guarded)
            wall = time.perf_counter() - started
            completed = outcomes.get("completed", 0)
            submitted = serial + tasks
            return {
                "nodes": nodes,
                "tasks": submitted,
                "p50_ms": round(statistics.median(serial_latencies), 2),
                "p99_ms": round(percentile(serial_latencies, 99), 2),
                "loaded_p50_ms": round(statistics.median(latencies), 2) if latencies else None,
                "loaded_p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
                "tasks_per_s": round(len(latencies) / wall, 1),
                "concurrency": concurrency,
                "completed": completed,
                "lost": submitted - sum(outcomes.values()),
                "outcomes": outcomes,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(run, args.nodes, args.tasks, args.concurrency, args.warmup)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['nodes']} nodes, {result['tasks']} trivial tasks")
    print(f"  submit -> result, one at a time: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    print(f"  with {result['concurrency']} in flight: p50 {result['loaded_p50_ms']} ms, "
          f"p99 {result['loaded_p99_ms']} ms, {result['tasks_per_s']} tasks/s")
    print(f"  outcomes {result['outcomes']}, lost {result['lost']}")


if __name__ == "__main__":
    main()
