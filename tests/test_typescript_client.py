"""The generated TypeScript client (clients/typescript) from Node against real processes: a
script written as a caller writes it (clients/typescript/test/flow.ts, compiled with tsc)
uploads with the client-streaming UploadVideo, creates a job, watches it to the end, gets it,
downloads a rendition and reads a refused call's reason from its error details, over native
gRPC with @connectrpc/connect-node. It prints JSON lines, checked here against what the Python
client sees of the same job.

The package's dependencies come from its package-lock.json (`npm ci`, which .ci/run and
./dev lint run first; here only when node_modules is missing or older than the lock file)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelmill.client import ReelmillClient
from reelmill.v1 import job_pb2
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.suite import ROOT, Suite, run_suite, token

pytestmark = pytest.mark.e2e

PACKAGE = ROOT / "clients" / "typescript"
TSC = PACKAGE / "node_modules" / ".bin" / "tsc"
FLOW = PACKAGE / ".test-build" / "flow.js"


def _run(*command: str, timeout: float = 300) -> None:
    done = subprocess.run(
        command, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def flow_script() -> Path:
    """The package installed from its lock file, built (dist/, what consumers import) and the
    flow script compiled against it."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is not installed (.ci/run expects Node.js 20 and npm)"
    installed = PACKAGE / "node_modules" / ".package-lock.json"
    lock = PACKAGE / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
    _run(str(TSC), "-p", "tsconfig.build.json")
    _run(str(TSC), "-p", "tsconfig.test.json")
    return FLOW


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv) -> Iterator[Suite]:
    # What the script's job runs: probe and one small rendition (no audio, no scenes).
    with run_suite(suite_env("local"), services=("ingest", "transcode")) as running:
        yield running


def node(script: Path, *args: str, env: dict[str, str]) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        ["node", str(script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, records, done.stdout + done.stderr


async def test_a_node_caller_runs_the_whole_flow(
    suite: Suite, flow_script: Path, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=2, width=320, height=240)
    bearer = token()
    code, records, output = await asyncio.to_thread(
        node, flow_script, suite.gateway, str(clip), env={"REELMILL_TOKEN": bearer}
    )
    assert code == 0, output
    steps: dict[str, dict[str, Any]] = {}
    events = []
    for record in records:
        if record["step"] == "event":
            events.append(record)
        else:
            steps[record["step"]] = record
    assert "failed" not in steps, output

    uploaded = steps["uploaded"]
    data = clip.read_bytes()
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()
    assert uploaded["sizeBytes"] == str(len(data))  # int64: a bigint in TypeScript
    assert uploaded["width"] == 320

    job_id = steps["created"]["jobId"]
    assert steps["created"]["state"] == "QUEUED"
    watched = steps["watched"]
    assert watched["finalState"] == "SUCCEEDED", output
    assert watched["sequences"] == [str(n) for n in range(1, len(events) + 1)]
    kinds = {event["payload"] for event in events}
    assert {"jobStateChanged", "stageUpdated"} <= kinds, kinds

    got = steps["got"]
    assert got["state"] == "SUCCEEDED"
    assert got["stages"]["probe"] == "SUCCEEDED" and got["stages"]["transcode"] == "SUCCEEDED"
    assert got["stages"]["audio"] == "SKIPPED"

    # What Node saw is what the Python client sees of the same job.
    async with ReelmillClient(suite.gateway, token=bearer) as client:
        job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.labels["via"] == "typescript"
    assert sorted(a["name"] for a in got["artifacts"]) == sorted(a.name for a in job.artifacts)
    downloaded = steps["downloaded"]
    artifact = next(a for a in job.artifacts if a.name == downloaded["name"])
    assert downloaded["name"].startswith("renditions/")
    assert downloaded["sha256"] == downloaded["announced"] == artifact.sha256
    assert downloaded["bytes"] == artifact.size_bytes

    refused = steps["error"]
    assert refused["refused"] is True
    assert refused["code"] == "NotFound"
    assert refused["reason"] == "JOB_NOT_FOUND"
    assert refused["reasonEnum"] == "JOB_NOT_FOUND" and refused["isJobNotFound"] is True
    assert refused["domain"] == "reelmill.dev" and refused["isReelmill"] is True
