"""Killing the writer at any moment loses no acknowledged update."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from icn_p2p.usage import UsageStore

from .helpers import KEYS

WRITER = Path(__file__).with_name("crash_writer.py")


def run_and_kill(db: Path, start: int, rnd: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), KEYS[0].seed.hex(), str(start)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    acked: list[str] = []

    def read():
        for line in proc.stdout:
            acked.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while len(acked) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(rnd.uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(5)
    proc.stderr.close()
    return acked


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_update(tmp_path):
    rnd = random.Random()
    db = tmp_path / "usage.sqlite3"
    all_acked: list[str] = []
    start = 0
    for _ in range(3):  # kill, reopen, continue, kill again
        acked = run_and_kill(db, start, rnd)
        assert len(acked) >= 20
        all_acked += acked
        start = int(acked[-1][1:]) + 10_000  # skip past any unacknowledged id
        store = UsageStore(db, KEYS[0])
        try:
            for task in all_acked:
                assert store.processed_month("crash-coop", "exec", task) is not None, task
            held = sum(e.tasks_completed for e in store.entries("crash-coop"))
            # everything acknowledged is there; at most the one in flight is extra
            assert len(all_acked) <= held <= len(all_acked) + 3
            claims = sum(e.claimed for e in store.entries("crash-coop"))
            assert claims >= sum(1 for t in all_acked if int(t[1:]) % 5 == 0)
        finally:
            store.close()
