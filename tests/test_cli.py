"""The README's first command, for real: `reelmill demo` starts every process on embedded
defaults (pgserver, local store), processes a sample video and stops everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.e2e


def test_demo_processes_a_sample_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    env["REELMILL_HOME"] = str(tmp_path / "home")
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [sys.executable, "-m", "reelmill.cli.main", "demo", "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "state SUCCEEDED" in output
    assert "probe" in output
    credentials = tmp_path / "home" / "credentials.json"
    assert credentials.is_file()
    # Every child was stopped: no process still runs from this home.
    assert [p.pid for p in psutil.process_iter() if _mentions(p, str(tmp_path))] == []


def _mentions(process: psutil.Process, needle: str) -> bool:
    try:
        parts = [*process.cmdline(), *process.environ().values()]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return any(needle in part for part in parts)
