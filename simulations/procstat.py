"""CPU time and memory of a process from /proc (no psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float  # user + system CPU seconds since the process started
    rss_mb: float  # resident set size now
    hwm_mb: float  # peak resident set size


def sample(pid: int | str = "self") -> ProcSample | None:
    """Read /proc/<pid>/stat and /proc/<pid>/status; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = stat[stat.rfind(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss = hwm = 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return ProcSample(cpu_s=(utime + stime) / _TICKS, rss_mb=rss, hwm_mb=hwm)
