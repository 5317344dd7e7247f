"""Executor figures: per-run latency of a cached trivial module, compile time, fuel/s, queue overhead.

    .venv/bin/python benchmarks/executor.py [--json] [--n 5000]

- ``run_p50_us`` / ``run_p99_us``: ``run_module`` on an already compiled
  ``add(i32, i32)`` (store, instance, call, result; compilation excluded);
- ``compile_ms``: compiling a small module (cache miss), median of 20;
- ``fuel_per_s``: fuel a tight counting loop burns per second;
- ``queue_p50_us``: submit -> result through ``ExecutorQueue`` (trio thread hop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio

from icn_p2p.executor.queue import ExecutorQueue, Job
from icn_p2p.executor.wasm import ENGINE, ModuleCache, run_module

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
COUNT = """
(module
  (func (export "count") (param i32) (result i32) (local i32)
    (loop
      (local.set 1 (i32.add (local.get 1) (i32.const 1)))
      (br_if 0 (i32.lt_u (local.get 1) (local.get 0))))
    (local.get 1)))
"""
LIMITS = dict(fuel=1_000_000, memory_limit_bytes=64 << 20, wall_ms=10_000)


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def bench_runs(n: int) -> dict:
    run_module(ADD, "add", [1, 2], **LIMITS)  # compile once, start the ticker
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        r = run_module(ADD, "add", [i, 1], **LIMITS)
        samples.append((time.perf_counter() - t0) * 1e6)
        assert r.values == [i + 1]
    return {"run_p50_us": pct(samples, 50), "run_p99_us": pct(samples, 99), "run_mean_us": statistics.fmean(samples)}


def bench_compile() -> dict:
    times = []
    for i in range(20):
        cache = ModuleCache(ENGINE, capacity=1)
        # a distinct module each time so wasmtime's own caches do not help
        module = COUNT.replace("(local i32)", f"(local i32) (local.set 0 (i32.add (local.get 0) (i32.const {i})))")
        compiled, hit = cache.get(module)
        assert not hit
        times.append(compiled.compile_ms)
    return {"compile_ms": statistics.median(times)}


def bench_fuel() -> dict:
    iterations = 50_000_000
    r = run_module(COUNT, "count", [iterations], fuel=10**12, memory_limit_bytes=1 << 20, wall_ms=60_000)
    assert r.values == [iterations]
    return {"fuel_per_s": r.fuel_used / (r.wall_ms / 1000), "loop_fuel_used": r.fuel_used, "loop_wall_ms": r.wall_ms}


async def _queue(n: int) -> list[float]:
    q = ExecutorQueue(1)
    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.run)
        for i in range(n):
            t0 = time.perf_counter()
            await q.submit(Job(module=ADD, entry="add", args=(i, 1), fuel=1000)).wait()
            samples.append((time.perf_counter() - t0) * 1e6)
        nursery.cancel_scope.cancel()
    return samples


def bench_queue(n: int) -> dict:
    samples = trio.run(_queue, n)
    return {"queue_p50_us": pct(samples, 50), "queue_p99_us": pct(samples, 99)}


def run(n: int) -> dict:
    out: dict = {"n": n}
    out.update(bench_runs(n))
    out.update(bench_compile())
    out.update(bench_fuel())
    out.update(bench_queue(min(n, 2000)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n", type=int, default=5000, help="runs of the trivial module")
    args = ap.parse_args()
    res = run(args.n)
    if args.json:
        print(json.dumps(res))
        return
    print(f"cached trivial run     p50 {res['run_p50_us']:8.1f} µs   p99 {res['run_p99_us']:8.1f} µs  (n={args.n})")
    print(f"through the queue      p50 {res['queue_p50_us']:8.1f} µs   p99 {res['queue_p99_us']:8.1f} µs")
    print(f"compile (small module) {res['compile_ms']:8.2f} ms")
    print(f"fuel rate              {res['fuel_per_s'] / 1e6:8.1f} M fuel/s")


if __name__ == "__main__":
    main()
