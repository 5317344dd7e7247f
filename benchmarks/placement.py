"""Placement latency: ``place()`` over 5, 50 and 500 offers.

Offers are varied (regions, trust, capacity, queues, RTTs, blobs) and a share
of them is infeasible, so every filter and ranker runs. Prints p50/p99 in µs;
``--json`` prints one JSON object.

    .venv/bin/python benchmarks/placement.py [--json] [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from icn_p2p.core.decision import CapabilityRequirement, PlacementConstraints
from icn_p2p.core.task import Capacity, ComputeTask, ExecutorInfo, LocalityHints
from icn_p2p.scheduler.offer import Offer
from icn_p2p.scheduler.placement import place
from icn_p2p.scheduler.trust import TrustBook

SIZES = (5, 50, 500)


def make_offers(n: int, rng: random.Random) -> list[Offer]:
    offers = []
    for i in range(n):
        ex = ExecutorInfo(
            did=f"did:key:z6Mk{i:06d}",
            region=rng.choice(["eu-central", "eu-central", "eu-central", "us-west"]),
            capabilities={"encryption": rng.choice(["0.9", "1.0", "1.4", "2.0"])},
            trust=rng.random(),
            capacity=Capacity(cpu_free=rng.random(), memory_free=rng.random(), cpu_cores=8, memory_mb=8192),
            queue_depth=rng.randrange(0, 15),
            blobs=rng.sample([f"blob{j}" for j in range(10)], rng.randrange(0, 5)),
        )
        offers.append(Offer(task_id="bench", executor=ex, rtt_ms=rng.uniform(0.2, 600) if i % 7 else None,
                            offered_at_ms=1_000))
    return offers


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(iterations: int) -> dict:
    rng = random.Random(7)
    task = ComputeTask(
        id="bench", coop_id="coop", submitter="did:key:member", tags=["patient-data"],
        input_blobs=["blob1", "blob2", "blob3"],
        locality_hints=LocalityHints(preferred_region="eu-central", preferred_executors=["did:key:z6Mk000003"],
                                     avoid_executors=["did:key:z6Mk000001"]),
    )
    constraints = PlacementConstraints(
        required_region="eu-central",
        required_capabilities=[CapabilityRequirement(capability="encryption", min_version="1.0")],
        forbidden_executors=["did:key:z6Mk000002"],
    )
    book = TrustBook()
    for i in range(0, 500, 3):
        book.record_success(f"did:key:z6Mk{i:06d}", 0)
    out: dict = {"benchmark": "placement", "iterations": iterations, "sizes": {}}
    for n in SIZES:
        offers = make_offers(n, rng)
        reps = max(50, iterations // max(1, n // 5))
        for _ in range(min(20, reps)):  # warm-up
            place(task, constraints, offers, trust=book, min_trust=0.1, now_ms=2_000)
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            d = place(task, constraints, offers, trust=book, min_trust=0.1, now_ms=2_000)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        out["sizes"][str(n)] = {
            "offers": n, "feasible": len(d.ranked), "runs": reps,
            "p50_us": round(statistics.median(samples), 1), "p99_us": round(percentile(samples, 99), 1),
            "us_per_offer_p50": round(statistics.median(samples) / n, 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--iterations", type=int, default=2000, help="runs at 5 offers (fewer for larger sizes)")
    args = ap.parse_args()
    res = run(args.iterations)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{'offers':>7} {'feasible':>9} {'runs':>6} {'p50 µs':>10} {'p99 µs':>10} {'µs/offer':>9}")
    for r in res["sizes"].values():
        print(f"{r['offers']:>7} {r['feasible']:>9} {r['runs']:>6} {r['p50_us']:>10} {r['p99_us']:>10} "
              f"{r['us_per_offer_p50']:>9}")


if __name__ == "__main__":
    main()
