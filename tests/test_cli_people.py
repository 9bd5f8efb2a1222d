"""The CLI for people, against a real gateway: whole job ids in `jobs ls` (an 80-column
terminal included), the start of an id wherever a job or video is named (one match used,
several listed, none said), only the caller's own jobs matched, `--json` wherever the output is
data; and the grouped artifacts of a job's summary."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reelmill.cli.ids import short
from reelmill.cli.render import artifact_groups
from reelmill.client import ReelmillClient
from reelmill.v1 import media_pb2
from tests.servers import PostgresServer, stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, Process, start, token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("cli-people")
    process = start(
        "gateway",
        "gateway",
        {
            "REELMILL_DATABASE_URL": postgres.url(postgres.create_database("people")),
            "REELMILL_JWT_SECRET": JWT_SECRET,
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_STORAGE_DIR": str(home / "objects"),
            "REELMILL_SCRATCH_DIR": str(home / "scratch"),
            # Nothing listens: the jobs stay queued or fail at their import, which is all
            # these tests need of them.
            "REELMILL_INGEST_TARGET": "127.0.0.1:9",
        },
        home,
    )
    yield process
    stop_process(process.proc)


def cli(
    gateway: Process, bearer: str, *argv: str, columns: int = 80
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    env.update(
        {
            "REELMILL_GATEWAY": gateway.address,
            "REELMILL_TOKEN": bearer,
            "REELMILL_HOME": str(gateway.log.parent / "home"),
            "COLUMNS": str(columns),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "reelmill.cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _create_jobs(gateway: Process, bearer: str, count: int) -> list[str]:
    async with ReelmillClient(gateway.address, token=bearer) as client:
        jobs = [
            await client.create_job(url=f"https://example.invalid/talk-{n}.mp4")
            for n in range(count)
        ]
    return [job.id for job in jobs]


@pytest.fixture(scope="module")
def owner(gateway: Process) -> tuple[str, list[str]]:
    """A caller with 17 jobs: by pigeonhole, two of them start with the same hex digit."""
    bearer = token()
    return bearer, asyncio.run(_create_jobs(gateway, bearer, 17))


def test_jobs_ls_shows_whole_ids_in_80_columns(
    gateway: Process, owner: tuple[str, list[str]]
) -> None:
    bearer, ids = owner
    listed = cli(gateway, bearer, "jobs", "ls", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    for job_id in ids:
        assert job_id in listed.stdout, listed.stdout
    as_json = cli(gateway, bearer, "jobs", "ls", "--limit", "50", "--json")
    assert as_json.returncode == 0, as_json.stderr
    jobs = json.loads(as_json.stdout)["jobs"]
    assert sorted(job["id"] for job in jobs) == sorted(ids)
    assert all("job_id" not in job and "create_time" in job for job in jobs)  # proto names


def test_the_start_of_an_id_names_a_job(gateway: Process, owner: tuple[str, list[str]]) -> None:
    bearer, ids = owner
    target = ids[3]
    prefix = short(target, ids)
    shown = cli(gateway, bearer, "jobs", "get", prefix, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["id"] == target
    watched = cli(gateway, bearer, "artifacts", "url", prefix.upper(), "probe.json")
    # The prefix resolved (any case), and the gateway answered for that job.
    assert "[ARTIFACT_NOT_FOUND]" in watched.stdout, watched.stdout + watched.stderr


def test_an_ambiguous_start_lists_the_matches(
    gateway: Process, owner: tuple[str, list[str]]
) -> None:
    bearer, ids = owner
    first, count = collections.Counter(job_id[0] for job_id in ids).most_common(1)[0]
    assert count > 1
    refused = cli(gateway, bearer, "jobs", "get", first)
    assert refused.returncode == 1
    assert f"'{first}' is the start of {count} job ids; give more of it" in refused.stderr
    for job_id in ids:
        assert (job_id in refused.stderr) == job_id.startswith(first), refused.stderr


def test_no_match_and_other_owners_jobs(gateway: Process, owner: tuple[str, list[str]]) -> None:
    bearer, ids = owner
    missing = cli(gateway, bearer, "jobs", "cancel", "zz")
    assert missing.returncode == 1
    assert "no job of yours has an id starting with 'zz'" in missing.stderr
    # Another caller's prefixes find nothing of the first caller's.
    stranger = cli(gateway, token(), "jobs", "get", ids[0][:12])
    assert stranger.returncode == 1
    assert "no job of yours" in stranger.stderr


def test_json_wherever_the_output_is_data(gateway: Process) -> None:
    bearer = token()
    created = cli(gateway, bearer, "keys", "create", "--name", "ci", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["secret"].startswith("rk_") and key["api_key"]["display_name"] == "ci"
    for argv, field in (
        (["keys", "ls"], "api_keys"),
        (["videos", "ls"], None),
        (["webhooks", "ls"], None),
        (["webhooks", "deliveries"], None),
    ):
        done = cli(gateway, bearer, *argv, "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        if field:
            assert [k["id"] for k in answer[field]] == [key["api_key"]["id"]]
        else:
            assert answer == {}  # nothing of this caller's yet: empty lists are left out


def artifact(name: str, kind: int, size: int = 1000) -> media_pb2.Artifact:
    return media_pb2.Artifact(name=name, kind=kind, size_bytes=size)  # type: ignore[arg-type]


def test_artifacts_are_grouped_with_hls_segments_counted() -> None:
    k = media_pb2
    artifacts = [
        artifact("renditions/720p.mp4", k.ARTIFACT_KIND_RENDITION_MP4, 3_200_000),
        artifact("renditions/360p.mp4", k.ARTIFACT_KIND_RENDITION_MP4, 900_000),
        artifact("hls/master.m3u8", k.ARTIFACT_KIND_HLS_MASTER_PLAYLIST),
        artifact("hls/720p/index.m3u8", k.ARTIFACT_KIND_HLS_VARIANT_PLAYLIST),
        artifact("hls/360p/index.m3u8", k.ARTIFACT_KIND_HLS_VARIANT_PLAYLIST),
        *(artifact(f"hls/720p/seg_{n:05d}.ts", k.ARTIFACT_KIND_HLS_SEGMENT) for n in range(30)),
        *(artifact(f"hls/360p/seg_{n:05d}.ts", k.ARTIFACT_KIND_HLS_SEGMENT) for n in range(29)),
        artifact("thumbnails/poster.jpg", k.ARTIFACT_KIND_POSTER),
        *(artifact(f"thumbnails/{n}.jpg", k.ARTIFACT_KIND_THUMBNAIL) for n in range(10)),
        artifact("transcript/transcript.vtt", k.ARTIFACT_KIND_TRANSCRIPT_VTT, 812),
        artifact("probe.json", k.ARTIFACT_KIND_UNSPECIFIED, 45_100),
    ]
    groups = dict(artifact_groups(artifacts))
    assert list(groups) == ["renditions", "HLS", "stills", "transcripts", "other"]
    assert groups["renditions"] == "renditions/720p.mp4 (3.2 MB), renditions/360p.mp4 (900.0 kB)"
    assert groups["HLS"] == (
        "hls/master.m3u8, hls/720p/index.m3u8 (30 segments), hls/360p/index.m3u8 (29 segments)"
    )
    assert groups["stills"] == "1 poster, 10 thumbnails"
    assert groups["transcripts"] == "transcript/transcript.vtt (812 B)"
    assert groups["other"] == "probe.json (45.1 kB)"


def test_short_ids_are_unique_starts() -> None:
    ids = ["3f2a9c00-0000", "3f2a9c11-0000", "77aa0000-0000"]
    assert short(ids[0], ids) == "3f2a9c00"
    assert short(ids[2], ids) == "77aa0000"
    assert short("3f2a9c00-1", ["3f2a9c00-1", "3f2a9c00-2"]) == "3f2a9c00-1"
