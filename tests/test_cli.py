"""The README's first command, for real: `reelmill demo` starts every process on embedded
defaults (pgserver, local store), processes a sample video and stops everything; `reelmill up
--storage seaweedfs` does the same with an embedded S3 server whose presigned URLs a plain HTTP
client fetches. And `reelmill migrate`, which runs the gateway's own `python -m gateway
migrate`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import psutil
import pytest

from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2
from tests.media import make_clip
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.e2e


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` with ``env`` and none of this environment's ``REELMILL_*``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_processes_a_sample_and_stops_cleanly(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    home = str(tmp_path / "home")
    result = run(
        "reelmill.cli.main",
        "demo",
        "--listen",
        listen,
        timeout=600,
        REELMILL_HOME=home,
        COLUMNS="200",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert " SUCCEEDED in " in output, output
    # The sample's speech was transcribed and described: a title, the transcript's first
    # lines (the tiny model's words of the JFK recording), a chapter with its times.
    lines = output.splitlines()
    title = next((line for line in lines if line.startswith("title ")), "")
    assert title.removeprefix("title").strip(), output
    assert "speech in en" in output, output
    transcript = output[output.index("transcript (") :].lower()
    assert "ask not what your country can do for you" in transcript, output
    chapters = next(i for i, line in enumerate(lines) if line.startswith("chapters "))
    assert "00:00" in lines[chapters + 2], output  # the first chapter, under the table's header
    # Artifacts by group (no row per HLS segment), and how to get the rest.
    assert "renditions" in output and "segments)" in output, output
    assert "seg_00" not in output, output
    credentials = tmp_path / "home" / "credentials.json"
    assert credentials.is_file()
    # Every child was stopped: no process still runs from this home.
    assert [p.pid for p in psutil.process_iter() if _mentions(p, str(tmp_path))] == []


def test_up_with_seaweedfs_serves_artifacts_over_presigned_http_urls(tmp_path: Path) -> None:
    """`reelmill up --storage seaweedfs`: an upload and a short job land in the embedded S3
    server, whose presigned URL for an artifact is an http URL a plain GET fetches (no
    credentials but the signature); Ctrl-C (SIGINT to its process group, as a terminal sends
    it) stops every process, SeaweedFS included."""
    listen = f"127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    log = tmp_path / "up.log"
    command = ["reelmill.cli.main", "up", "--listen", listen, "--storage", "seaweedfs"]
    with log.open("wb") as output:
        up = subprocess.Popen(
            [sys.executable, "-m", *command],
            # No COLUMNS: a log is 80 columns to rich, and the token must still be one line.
            env={**clean, "REELMILL_HOME": str(home)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as in a terminal
        )
    try:
        credentials = home / "credentials.json"
        deadline = time.monotonic() + 300
        while not credentials.is_file():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        bearer = json.loads(credentials.read_text())["token"]
        deadline = time.monotonic() + 30
        while "Ctrl-C stops everything." not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"dev token: {bearer}\n" in log.read_text(), log.read_text()
        clip = make_clip(tmp_path / "clip.mp4", seconds=1)
        url, artifact = asyncio.run(_rendition(listen, bearer, clip))
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            body = response.read()
        assert hashlib.sha256(body).hexdigest() == artifact.sha256
        assert len(body) == artifact.size_bytes
        unsigned = url.split("?", 1)[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unsigned, timeout=30)
        refused.value.close()
        assert refused.value.code == 403
        assert "S3 (SeaweedFS): http://127.0.0.1:" in log.read_text()
    finally:
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(timeout=120)
    assert code == 0, log.read_text()
    assert [p.pid for p in psutil.process_iter() if _mentions(p, str(tmp_path))] == []


#: A short job: one small rendition, nothing else.
ONE_RENDITION = pipeline_pb2.PipelineSpec(
    transcode=pipeline_pb2.TranscodeSpec(
        ladder=[pipeline_pb2.LadderRung(height=120)], preset="ultrafast"
    ),
    audio=pipeline_pb2.AudioSpec(disabled=True),
)


async def _rendition(address: str, bearer: str, clip: Path) -> tuple[str, media_pb2.Artifact]:
    """Uploads ``clip`` and runs a short job; a rendition's URL and its artifact."""
    from reelmill.client import ReelmillClient

    async with ReelmillClient(address, token=bearer) as client:
        video = await client.upload_file(clip)
        job = await client.create_job(video.id, spec=ONE_RENDITION)
        async for _ in client.watch_job(job.id):
            pass
        done = await client.get_job(job.id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
        artifact = next(a for a in done.artifacts if a.name.startswith("renditions/"))
        return await client.artifact_url(job.id, artifact.name), artifact


def _mentions(process: psutil.Process, needle: str) -> bool:
    try:
        parts = [*process.cmdline(), *process.environ().values()]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return any(needle in part for part in parts)


def test_migrate_runs_the_gateways_migrate_command(
    postgres: PostgresServer, empty_database: str
) -> None:
    """`reelmill migrate` brings an empty database to the newest migration, as
    `python -m gateway migrate` (what deployments run) does; again, it changes nothing."""
    from gateway.db.engine import head_revision

    for command in (["reelmill.cli.main", "migrate"], ["gateway", "migrate"]):
        done = run(*command, REELMILL_DATABASE_URL=postgres.url(empty_database))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"database is at the newest migration ({head_revision()})" in done.stdout
    version = "SELECT version_num FROM alembic_version"
    assert asyncio.run(_execute(postgres.dsn(empty_database), version)) == head_revision()


async def _execute(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_migrate_says_what_went_wrong() -> None:
    """Exit code 2 and the setting for bad settings; 1 and one line for no database."""
    bad = run("reelmill.cli.main", "migrate", REELMILL_DATABASE_POOL_SIZE="0")
    assert bad.returncode == 2
    assert "gateway migrate: bad settings: REELMILL_DATABASE_POOL_SIZE" in bad.stderr
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/reelmill"
    unreachable = run("reelmill.cli.main", "migrate", REELMILL_DATABASE_URL=nowhere)
    assert unreachable.returncode == 1
    assert "migration failed: ConnectionRefusedError" in unreachable.stdout
    assert "Traceback" not in unreachable.stdout + unreachable.stderr
