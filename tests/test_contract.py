"""The released contract (protos/released.binpb, a buf image written by ./dev release-contract)
guards protos/: ./dev lint runs `buf breaking` against it. Here: today's protos pass, the image
is the public API (not an empty file that anything would pass), and a change that breaks
callers — a renamed ErrorReason value, a removed field — fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from tests.suite import ROOT

PROTOS = ROOT / "protos"
BUF = Path(sys.executable).parent / "buf"


def breaking(protos: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(PROTOS / "released.binpb")],
        cwd=protos,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_protos_keep_the_released_contract() -> None:
    done = breaking(PROTOS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_released_image_holds_the_public_api() -> None:
    image = descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "released.binpb").read_bytes())
    files = {f.name: f for f in image.file}
    services = {s.name for f in files.values() if f.package == "reelmill.v1" for s in f.service}
    assert {"JobService", "ApiKeyService", "WebhookService"} <= services
    reasons = {v.name for e in files["reelmill/v1/error_reason.proto"].enum_type for v in e.value}
    assert "JOB_NOT_FOUND" in reasons


def test_a_breaking_change_fails(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    reasons = copy / "reelmill" / "v1" / "error_reason.proto"
    renamed = re.sub(r"\bJOB_NOT_FOUND = ", "JOB_MISSING = ", reasons.read_text())
    reasons.write_text(renamed)
    job = copy / "reelmill" / "v1" / "job_service.proto"
    job.write_text(re.sub(r"\n  string artifact_name = 2;", "", job.read_text(), count=1))
    done = breaking(copy)
    assert done.returncode != 0
    assert 'changed name from "JOB_NOT_FOUND" to "JOB_MISSING"' in done.stdout, done.stdout
    assert "was deleted" in done.stdout and "artifact_name" in done.stdout, done.stdout
