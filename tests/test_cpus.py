"""CPU counts under cgroup quotas (a Kubernetes CPU limit), from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.cpus import available_cpus, constrained_cpus


def host_cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
        ({"cpu.max": "100000 100000\n"}, 1),  # v2, 1 CPU
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs round up
        ({"cpu.max": "10000 100000\n"}, 1),  # never below one
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, none
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_quota_caps_the_cpu_count(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    want = host_cpus() if expected is None else min(expected, host_cpus())
    assert available_cpus(tmp_path) == want
    # Below the host's cores the tools get an explicit count; otherwise they choose (0).
    assert constrained_cpus(tmp_path) == (want if want < (os.cpu_count() or want) else 0)
