"""How many CPUs this process may really use: the scheduler affinity, capped by a cgroup CPU
quota (a Kubernetes CPU limit). ``os.cpu_count()`` reports the node's cores, so a pod limited
to 2 CPUs on a 64-core node would otherwise start 64 encoder or ASR threads and be throttled."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can use (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def constrained_cpus(root: Path = CGROUP_ROOT) -> int:
    """``available_cpus()`` when it is below the machine's core count (a quota or an affinity
    mask applies), else 0 — "let the tool choose", which is right on an unconstrained host."""
    cpus = available_cpus(root)
    return cpus if cpus < (os.cpu_count() or cpus) else 0
