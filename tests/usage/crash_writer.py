"""Child of the crash test: records usage in a loop, printing each acknowledged task id."""

import sys

from icn_p2p.identity import NodeKey
from icn_p2p.usage import UsageStore, UsageTracker

path, seed_hex, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
tracker = UsageTracker(UsageStore(path, NodeKey(bytes.fromhex(seed_hex))))
out = sys.stdout
i = start
while True:
    task = f"t{i}"
    tracker.record_execution("crash-coop", f"m{i % 7}", task, cpu_ms=i % 1000, fuel=3)
    if i % 5 == 0:
        tracker.task_claimed("crash-coop", "m0", task)
    out.write(task + "\n")  # only after the call returned: acknowledged
    out.flush()
    i += 1
