"""Admission decision latency with 1,000 policies and 100,000 members on record.

Builds 1,000 policies (every kind of rule represented, members spread across
their ``member_quotas`` and MemberPriority rules) and a usage map of 100,000
members, then times single ``evaluate`` calls on varied tasks and members,
looking up the policy and the usage as a node would. Also reports the stored
size of a typical policy (compact canonical JSON of basic-cooperative.json).

    .venv/bin/python benchmarks/admission.py [--iterations N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

from icn_p2p.core.clock import month_key
from icn_p2p.core.enums import EnforcementMode, TaskPriority
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.task import ComputeTask
from icn_p2p.core.usage import MemberUsage
from icn_p2p.policy.admission import evaluate

ROOT = Path(__file__).resolve().parent.parent
N_POLICIES = 1_000
N_MEMBERS = 100_000
PRIORITIES = list(TaskPriority)
MODES = list(EnforcementMode)


def build(rng: random.Random) -> tuple[list[CoopSchedulingPolicy], dict[tuple[str, str], MemberUsage],
                                        list[tuple[str, str]]]:
    members_by_coop: dict[str, list[str]] = {}
    for m in range(N_MEMBERS):
        coop = f"coop-{m % N_POLICIES:04d}"
        members_by_coop.setdefault(coop, []).append(f"did:icn:member-{m:06d}")
    policies = []
    for i in range(N_POLICIES):
        coop = f"coop-{i:04d}"
        members = members_by_coop[coop]
        rules: list[dict] = [
            {"DataSovereignty": {"region": rng.choice(["eu-central", "us-west", "ap-south"]),
                                 "tags": ["patient-data"]}},
            {"RequireCapability": {"capability": "encryption", "min_version": "1.0"}},
            {"TimeWindow": {"allowed_hours": list(range(0, 7)) + list(range(20, 24)),
                            "allowed_days": list(range(7)), "priorities": ["Low"]}},
            {"ExecutorFilter": {"whitelist": [], "blacklist": ["did:icn:compromised"]}},
        ]
        rules += [{"MemberPriority": {"member": m, "multiplier": 2.0}} for m in members[:5]]
        quotas = {
            m: {"cpu_hours_per_month": 200.0, "max_concurrent_tasks": 20, "max_priority": "Critical",
                "credits_per_month": 2000}
            for m in members[: len(members) // 2]
        }
        policies.append(CoopSchedulingPolicy.model_validate({
            "coop_id": coop,
            "governance_domain": f"{coop}:assembly",
            "rules": rules,
            "member_quotas": quotas,
            "default_quota": {"cpu_hours_per_month": 50.0, "max_concurrent_tasks": 5,
                              "max_priority": "High", "credits_per_month": 500},
            "enforcement_mode": MODES[i % 3].value,
        }))
    usage: dict[tuple[str, str], MemberUsage] = {}
    pairs = []
    for coop, members in members_by_coop.items():
        for m in members:
            usage[(coop, m)] = MemberUsage(
                coop_id=coop, member=m, month="2026-11",
                cpu_hours_this_month=rng.uniform(0, 60), concurrent_tasks=rng.randint(0, 6),
                credits_spent_this_month=rng.randint(0, 600),
            )
            pairs.append((coop, m))
    return policies, usage, pairs


def run(iterations: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    policies, usage, pairs = build(rng)
    by_coop = {p.coop_id: p for p in policies}
    base = 1_795_000_000_000  # November 2026
    tasks = []
    for k in range(min(iterations, 20_000)):
        coop, member = rng.choice(pairs)
        tags = rng.choice([[], [], ["patient-data"], ["batch"]])
        tasks.append((ComputeTask(id=f"t{k}", coop_id=coop, submitter=member,
                                  priority=rng.choice(PRIORITIES), tags=tags),
                      member, base + rng.randrange(0, 30 * 86_400_000)))
    # warm the per-policy caches as a running node would have them
    for task, member, now in tasks[:5_000]:
        evaluate(by_coop[task.coop_id], task, member, usage[(task.coop_id, member)], now)
    samples = []
    rejected = 0
    gc.collect()
    gc.disable()
    try:
        clock = time.perf_counter_ns
        for i in range(iterations):
            task, member, now = tasks[i % len(tasks)]
            t0 = clock()
            d = evaluate(by_coop[task.coop_id], task, member, usage[(task.coop_id, member)], now)
            samples.append(clock() - t0)
            rejected += d.decision == "reject"
    finally:
        gc.enable()
    samples.sort()

    def pct(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] / 1000

    basic = CoopSchedulingPolicy.from_json((ROOT / "configs/policies/basic-cooperative.json").read_text())
    typical = policies[0]
    return {
        "policies": N_POLICIES,
        "members": N_MEMBERS,
        "iterations": iterations,
        "p50_us": round(pct(0.50), 2),
        "p90_us": round(pct(0.90), 2),
        "p99_us": round(pct(0.99), 2),
        "max_us": round(samples[-1] / 1000, 2),
        "mean_us": round(statistics.fmean(samples) / 1000, 2),
        "rejected_fraction": round(rejected / iterations, 3),
        "policy_bytes": len(basic.canonical_bytes()),
        "bench_policy_bytes_excluding_member_quotas": len(
            typical.model_copy(update={"member_quotas": {}}).canonical_bytes()
        ),
        "month": month_key(base),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run(args.iterations)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"admission: {res['policies']:,} policies, {res['members']:,} members, "
          f"{res['iterations']:,} decisions ({res['rejected_fraction']:.0%} rejected)")
    print(f"{'metric':<44}{'value':>12}  target")
    rows = [
        ("p50 per decision (µs)", res["p50_us"], ""),
        ("p90 per decision (µs)", res["p90_us"], ""),
        ("p99 per decision (µs)", res["p99_us"], "<= 50"),
        ("max per decision (µs)", res["max_us"], ""),
        ("mean per decision (µs)", res["mean_us"], ""),
        ("basic-cooperative stored size (bytes)", res["policy_bytes"], "< 1024"),
        ("bench policy w/o member quotas (bytes)", res["bench_policy_bytes_excluding_member_quotas"], ""),
    ]
    for name, value, target in rows:
        print(f"{name:<44}{value:>12}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
