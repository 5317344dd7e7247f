"""Usage store benchmarks: in-memory updates, durable batched updates, merge, delta size.

    .venv/bin/python benchmarks/usage.py          # a table
    .venv/bin/python benchmarks/usage.py --json   # one JSON object
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import cbor2

from icn_p2p.core.clock import FakeClock, month_key
from icn_p2p.identity import NodeKey
from icn_p2p.usage import UsageDelta, UsageState, UsageStore, UsageTracker

NOW = 1_741_608_000_000  # 2025-03-10 12:00 UTC
MONTH = month_key(NOW)
RETENTION_MS = 90 * 86_400_000
MEMBERS = 10_000


def bench_memory(n: int) -> float:
    """Updates/s of the pure CRDT update path (UsageState.apply_local)."""
    s = UsageState(NodeKey.generate())
    members = [f"did:icn:member-{i}" for i in range(MEMBERS)]
    picks = [members[random.randrange(MEMBERS)] for _ in range(n)]
    apply = s.apply_local
    t = time.perf_counter()
    for m in picks:
        apply("coop", m, MONTH, cpu_ms=120, fuel=4000, tasks_completed=1)
    return n / (time.perf_counter() - t)


def bench_durable(n: int, batch: int, tmp: Path) -> tuple[float, float]:
    """Updates/s committed to SQLite (WAL, synchronous=FULL) in batches; and one per commit."""
    store = UsageStore(tmp / "bench.sqlite3", NodeKey.generate(), clock=FakeClock(NOW))
    members = [f"did:icn:member-{i}" for i in range(MEMBERS)]
    t = time.perf_counter()
    done = 0
    while done < n:
        with store.batch():
            for _ in range(batch):
                store.increment("coop", members[random.randrange(MEMBERS)], month=MONTH,
                                cpu_ms=120, fuel=4000, tasks_completed=1)
        done += batch
    batched = done / (time.perf_counter() - t)
    single_n = 300
    t = time.perf_counter()
    for i in range(single_n):
        store.increment("coop", members[i], month=MONTH, cpu_ms=1)
    single = single_n / (time.perf_counter() - t)
    store.close()
    return batched, single


def bench_tracker(n: int, tmp: Path) -> float:
    """Idempotent receipts/s recorded through the tracker, batched."""
    store = UsageStore(tmp / "tracker.sqlite3", NodeKey.generate(), clock=FakeClock(NOW))
    tr = UsageTracker(store)
    t = time.perf_counter()
    for start in range(0, n, 1000):
        with store.batch():
            for i in range(start, start + 1000):
                tr.record_execution("coop", f"did:icn:member-{i % MEMBERS}", f"task-{i}", 120, 4000,
                                    now_ms=NOW)
    rate = n / (time.perf_counter() - t)
    store.close()
    return rate


def bench_merge_and_delta() -> dict[str, float]:
    writer = UsageState(NodeKey.generate())
    for i in range(MEMBERS):
        writer.apply_local("coop", f"did:icn:member-{i}", MONTH, cpu_ms=i, fuel=3 * i, tasks_completed=1)
    t = time.perf_counter()
    delta = writer.delta("coop", {})
    sign_ms = (time.perf_counter() - t) * 1000
    wire = cbor2.dumps(delta.to_wire(), canonical=True)

    receiver = UsageState(NodeKey.generate())
    t = time.perf_counter()
    res = receiver.merge_delta(delta, now_ms=NOW, retention_ms=RETENTION_MS)
    merge_ms = (time.perf_counter() - t) * 1000
    assert res.accepted == MEMBERS and not res.rejected

    # merging the same state again: every entry is a known duplicate (steady-state sync)
    t = time.perf_counter()
    receiver.merge_delta(delta, now_ms=NOW, retention_ms=RETENTION_MS)
    remerge_ms = (time.perf_counter() - t) * 1000

    # from the wire: parse (schema) + verify + merge
    receiver2 = UsageState(NodeKey.generate())
    t = time.perf_counter()
    receiver2.merge_delta(UsageDelta.from_wire(cbor2.loads(wire)), now_ms=NOW,
                          retention_ms=RETENTION_MS)
    wire_merge_ms = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    digest_equal = receiver.digest("coop") == writer.digest("coop")
    digest_ms = (time.perf_counter() - t) * 1000
    assert digest_equal

    vv = receiver.version_vector("coop")
    writer.apply_local("coop", "did:icn:member-42", MONTH, cpu_ms=5)
    t = time.perf_counter()
    small = writer.delta("coop", vv)
    delta_ms = (time.perf_counter() - t) * 1000
    entries_bytes = len(cbor2.dumps([e.to_wire() for e in small.entries], canonical=True))
    frame_bytes = len(cbor2.dumps(small.to_wire(), canonical=True))
    return {
        "merge_ms_10k": merge_ms,
        "merge_from_wire_ms_10k": wire_merge_ms,
        "remerge_duplicates_ms_10k": remerge_ms,
        "sign_10k_ms": sign_ms,
        "full_state_bytes_10k": len(wire),
        "digest_ms_10k_fresh": digest_ms,
        "delta_entries": len(small.entries),
        "delta_bytes": entries_bytes,
        "delta_frame_bytes": frame_bytes,
        "delta_ms_10k": delta_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n", type=int, default=300_000, help="in-memory updates")
    ap.add_argument("--durable-n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mem = bench_memory(args.n)
        durable, single = bench_durable(args.durable_n, args.batch, tmp)
        tracked = bench_tracker(args.durable_n // 2, tmp)
    rest = bench_merge_and_delta()
    out = {
        "mem_updates_per_s": round(mem),
        "durable_updates_per_s": round(durable),
        "durable_batch_size": args.batch,
        "durable_single_commit_updates_per_s": round(single),
        "tracker_receipts_per_s_batched": round(tracked),
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in rest.items()},
    }
    if args.json:
        print(json.dumps(out))
        return
    rows = [
        ("in-memory CRDT updates/s (target >= 100,000)", f"{out['mem_updates_per_s']:,}"),
        (f"durable updates/s, batches of {args.batch}, WAL+FULL (target >= 20,000)",
         f"{out['durable_updates_per_s']:,}"),
        ("durable updates/s, one commit (fsync) each", f"{out['durable_single_commit_updates_per_s']:,}"),
        ("tracker receipts/s (idempotent), batched", f"{out['tracker_receipts_per_s_batched']:,}"),
        ("merge 10k-member state, signed, verify incl. (ms)", f"{out['merge_ms_10k']:.1f}"),
        ("merge 10k from CBOR wire: parse+verify+merge (ms)", f"{out['merge_from_wire_ms_10k']:.1f}"),
        ("re-merge same 10k state, duplicates (ms)", f"{out['remerge_duplicates_ms_10k']:.1f}"),
        ("sign 10k own entries lazily (ms)", f"{out['sign_10k_ms']:.1f}"),
        ("full 10k state on the wire (bytes)", f"{out['full_state_bytes_10k']:,}"),
        ("delta after one update: entries / bytes", f"{out['delta_entries']} / {out['delta_bytes']}"),
        ("  same, framed with since/through vectors (bytes)", f"{out['delta_frame_bytes']}"),
        ("delta after one update: time (ms)", f"{out['delta_ms_10k']:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"{name:<{width}}  {val:>12}")


if __name__ == "__main__":
    main()
