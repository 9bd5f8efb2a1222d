"""runtime/shared_cache.py: AI results every replica shares, in the object store.

``SharedCache`` on both backends (a local directory, and the session's SeaweedFS S3 server):
hits, misses, expiry, entries that are corrupt or of another format, a store that is down or
hangs, concurrent writers. Then the services as real processes over one bucket: a second
replica, and a restarted process, answer from the cache without computing again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
import typing
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reelmill.v1 import (
    media_pb2,
    metadata_service_pb2,
    metadata_service_pb2_grpc,
    pipeline_pb2,
    transcribe_service_pb2,
    transcribe_service_pb2_grpc,
)
from runtime.cache import ResultCache, cache_key
from runtime.shared_cache import (
    FORMAT,
    PREFIX,
    CorruptEntry,
    SharedCache,
    TieredCache,
    dumps_result,
    loads_result,
    shared_cache,
)
from runtime.storage import ObjectStore
from runtime.storage.local import LocalObjectStore
from runtime.storage.s3 import S3ObjectStore
from services.metadata.model import Chapter, Metadata
from services.metadata.settings import MetadataSettings
from services.transcribe.model import Segment, Transcript, Word
from services.transcribe.settings import TranscribeSettings
from tests.conftest import FreshBucket
from tests.servers import PostgresServer, S3Server, free_port
from tests.suite import INTERNAL_TOKEN, Suite, run_suite

DAY = 86400.0
KEY = cache_key(audio_sha256="ab" * 32, engine="x", model="y", options={})
CALL = (("authorization", f"Bearer {INTERNAL_TOKEN}"),)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def s3_store(server: S3Server, bucket: str, **kwargs: Any) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        bucket=bucket,
        threads=4,
        **kwargs,
    )


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    backend: ObjectStore
    if request.param == "local":
        backend = LocalObjectStore(tmp_path / "objects")
    else:
        backend = s3_store(
            request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        )
    yield backend
    await backend.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(store: ObjectStore, clock: Clock) -> SharedCache:
    return SharedCache(store, ttl=timedelta(days=30), timeout=5.0, clock=clock)


async def read(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


# -- SharedCache ---------------------------------------------------------------------------------


async def test_a_miss_then_a_hit_under_the_reserved_prefix(
    cache: SharedCache, store: ObjectStore, clock: Clock
) -> None:
    assert await cache.get("transcript", KEY) is None
    assert await cache.put("transcript", KEY, b'{"text": "caf\xc3\xa9"}')
    assert await cache.get("transcript", KEY) == b'{"text": "caf\xc3\xa9"}'
    assert await cache.get("metadata", KEY) is None  # namespaces are apart
    assert cache.counts == {"miss": 2, "hit": 1, "write": 1}

    object_key = f"{PREFIX}transcript/{KEY[:2]}/{KEY}.json"
    assert object_key == f"cache/ai/transcript/{KEY[:2]}/{KEY}.json"
    assert await store.list_keys(PREFIX) == [object_key]
    entry = json.loads(await read(store, object_key))
    assert entry["format"] == FORMAT and entry["encoding"] == "utf-8"
    assert (entry["namespace"], entry["key"]) == ("transcript", KEY)
    assert (entry["written_at"], entry["expires_at"]) == (clock.now, clock.now + 30 * DAY)
    assert entry["payload"] == '{"text": "café"}'

    # Bytes that are not UTF-8 are kept exactly too.
    assert await cache.put("blobs", KEY, b"\xff\x00\xfe")
    assert await cache.get("blobs", KEY) == b"\xff\x00\xfe"
    for bad in ("../x", "A", ""):
        with pytest.raises(ValueError, match="namespace"):
            await cache.get(bad, KEY)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        await cache.get("transcript", "../../jobs/x")


async def test_an_entry_expires_after_the_ttl_and_is_overwritten(
    cache: SharedCache, store: ObjectStore, clock: Clock
) -> None:
    await cache.put("metadata", KEY, b"old")
    clock.now += 29 * DAY
    assert await cache.get("metadata", KEY) == b"old"
    clock.now += 1 * DAY  # 30 days after it was written
    assert await cache.get("metadata", KEY) is None
    assert cache.counts["stale"] == 1
    await cache.put("metadata", KEY, b"new")  # the result computed after the miss
    assert await cache.get("metadata", KEY) == b"new"
    # A shorter TTL applies to entries written under a longer one.
    shorter = SharedCache(store, ttl=timedelta(hours=1), clock=clock)
    clock.now += 3599
    assert await shorter.get("metadata", KEY) == b"new"
    clock.now += 1
    assert await shorter.get("metadata", KEY) is None
    assert await cache.get("metadata", KEY) == b"new"  # still fresh under 30 days


def _entry(cache: SharedCache, data: bytes, **changes: Any) -> bytes:
    entry = json.loads(cache._encode("metadata", KEY, data, cache._clock()))
    entry.update(changes)
    return json.dumps(entry).encode()


async def test_corrupt_entries_are_misses_and_are_overwritten(
    cache: SharedCache, store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    object_key = cache.object_key("metadata", KEY)
    valid = _entry(cache, b"payload")
    corrupt = {
        "not JSON": b"\x00\x01 not json",
        "truncated": valid[: len(valid) // 2],
        "not an object": b"[1, 2]",
        "another key's": _entry(cache, b"payload", key="0" * 64),
        "tampered payload": _entry(cache, b"payload", payload="changed"),
        "bad base64": _entry(cache, b"payload", encoding="base64", payload="!!"),
        "no times": _entry(cache, b"payload", written_at="yesterday"),
        "empty": b"",
    }
    for what, raw in corrupt.items():
        await store.put_bytes(object_key, raw, content_type="application/json")
        caplog.clear()
        assert await cache.get("metadata", KEY) is None, what
        assert "treated as a miss and overwritten" in caplog.text, what
        assert await cache.put("metadata", KEY, b"payload"), what
        assert await cache.get("metadata", KEY) == b"payload", what
    assert cache.counts["corrupt"] == len(corrupt)


async def test_an_entry_of_another_format_is_a_miss(cache: SharedCache, store: ObjectStore) -> None:
    object_key = cache.object_key("metadata", KEY)
    future = _entry(cache, b"payload", format=FORMAT + 1, shards=["somewhere"])
    await store.put_bytes(object_key, future, content_type="application/json")
    assert await cache.get("metadata", KEY) is None
    assert cache.counts == {"incompatible": 1}  # logged, and not as corrupt
    await cache.put("metadata", KEY, b"payload")
    assert await cache.get("metadata", KEY) == b"payload"


async def test_concurrent_writers_of_a_key_leave_one_valid_entry(
    cache: SharedCache, store: ObjectStore
) -> None:
    payloads = [json.dumps({"writer": i, "pad": "x" * 50_000}).encode() for i in range(8)]
    written = await asyncio.gather(*(cache.put("metadata", KEY, p) for p in payloads))
    assert all(written)
    for _ in range(3):
        assert await cache.get("metadata", KEY) in payloads
    # Readers racing writers see an old or a new entry, never a part of one.
    more = [json.dumps({"writer": i, "pad": "y" * 50_000}).encode() for i in range(8, 12)]
    results = await asyncio.gather(
        *(cache.put("metadata", KEY, p) for p in more),
        *(cache.get("metadata", KEY) for _ in range(8)),
    )
    assert all(r in (*payloads, *more) for r in results[len(more) :])
    assert "corrupt" not in cache.counts


async def test_an_unreachable_store_is_a_miss_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = free_port()  # nothing listens there
    down = s3_store(S3Server(f"127.0.0.1:{closed}", "k", "s"), "down", connect_timeout=1.0)
    # A local store whose root is a file: nothing can be read or written under it.
    file_as_root = tmp_path / "a-file"
    file_as_root.write_text("not a directory")
    broken = LocalObjectStore(file_as_root)
    try:
        for backend, read_outcome in ((down, "error"), (broken, "miss")):
            cache = SharedCache(backend, ttl=timedelta(days=1), timeout=1.0)
            caplog.clear()
            began = time.monotonic()
            assert await cache.get("metadata", KEY) is None
            assert not await cache.put("metadata", KEY, b"result")
            assert time.monotonic() - began < 2.0 + 0.5  # one timeout each at most
            await asyncio.sleep(0.1)  # the write's end is counted by its callback
            assert cache.counts.get(read_outcome) == 1, cache.counts
            assert "write" not in cache.counts and "hit" not in cache.counts
            assert "shared cache write" in caplog.text
        assert cache is not None
    finally:
        await down.close()


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """host:port of a server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


async def test_a_store_that_hangs_costs_one_timeout_and_no_failure(hanging_server: str) -> None:
    hung = s3_store(S3Server(hanging_server, "k", "s"), "hangs", read_timeout=30.0)
    cache = SharedCache(hung, ttl=timedelta(days=1), timeout=0.5)
    try:
        began = time.monotonic()
        assert await cache.get("metadata", KEY) is None
        assert 0.4 < time.monotonic() - began < 10.0  # the 0.5 s timeout, not the 30 s read one
        began = time.monotonic()
        assert not await cache.put("metadata", KEY, b"result")  # goes on in the background
        assert 0.4 < time.monotonic() - began < 10.0  # the 0.5 s timeout, not the 30 s read one
        assert cache.counts == {"error": 1, "write_slow": 1}
    finally:
        hung._http.clear()  # drops the connections the background calls wait on


# -- TieredCache and the results' JSON -----------------------------------------------------------

METADATA = Metadata(
    title="Pasta, Inner Tube and Telescope",
    description="Three topics.\n\nChapters:\n0:00 Pasta",
    tags=("pasta", "bicycle", "telescope"),
    keywords=("fresh pasta", "inner tube"),
    chapters=(
        Chapter(0.0, "Pasta", 109.0, "Fresh pasta.", ("pasta dough",), (0, 1, 2)),
        Chapter(109.0, "Inner Tube", 218.5, "A puncture.", ("inner tube", "patch"), (3, 4)),
    ),
    summary="How to make pasta, fix a tyre and choose a telescope.",
    show_notes="- pasta\n- tyres",
    engine="extractive",
    model="extractive-v2",
    custom_json='{"headline": "Pasta"}',
    unfilled=("/rating",),
    custom_json_complete=False,
)
TRANSCRIPT = Transcript(
    language="en",
    language_probability=0.984375,
    duration=11.0,
    segments=(
        Segment(0, 0.0, 8.02, "And so my fellow Americans", (Word(0.0, 0.52, "And", 0.91),)),
        Segment(1, 8.02, 10.52, "ask what you can do", (), -0.25, 0.0125),
    ),
    engine="faster-whisper",
    model="tiny.en",
)


def sample(tp: Any, seed: int) -> Any:
    """A value of ``tp`` that is no field's default: every field of a result is exercised."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        return tp(**{f.name: sample(hints[f.name], seed + i) for i, f in enumerate(fields)})
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return (sample(item, seed), sample(item, seed + 1))
    return {str: f"text {seed} é", float: seed + 0.125, int: seed + 7, bool: True}[tp]


def test_results_round_trip_exactly() -> None:
    full = sample(Metadata, 1)
    assert full.chapters[0].segment_ids and full.custom_json_complete  # every field set
    for result in (full, sample(Transcript, 2), METADATA, TRANSCRIPT):
        assert loads_result(type(result), dumps_result(result)) == result
    assert loads_result(Metadata, dumps_result(Metadata("", "", (), (), (), "", "", "", "")))
    # Written by other code (a field more or less, another type): not this result.
    plain = json.loads(dumps_result(METADATA))
    for changed in (
        {k: v for k, v in plain.items() if k != "summary"},
        {**plain, "rating": 5},
        {**plain, "tags": "pasta"},
        {**plain, "custom_json_complete": 0},
        {**plain, "chapters": [{**plain["chapters"][0], "start": "0"}]},
    ):
        with pytest.raises(CorruptEntry):
            loads_result(Metadata, json.dumps(changed).encode())


async def test_memory_first_then_the_shared_cache(cache: SharedCache, store: ObjectStore) -> None:
    def tiered() -> TieredCache[Transcript]:
        return TieredCache(
            ResultCache(4),
            cache,
            "transcript",
            encode=dumps_result,
            decode=lambda data: loads_result(Transcript, data),
        )

    first, second = tiered(), tiered()  # two processes over one store
    assert await first.get(KEY) == (None, "miss")
    await first.put(KEY, TRANSCRIPT)
    assert await first.get(KEY) == (TRANSCRIPT, "memory")
    assert await second.get(KEY) == (TRANSCRIPT, "hit")
    assert await second.get(KEY) == (TRANSCRIPT, "memory")  # kept in its memory since

    # An entry whose payload no longer builds a result (a field this code does not have).
    plain = json.loads(dumps_result(TRANSCRIPT))
    await cache.put("transcript", KEY, json.dumps({**plain, "speakers": []}).encode())
    third = tiered()
    assert await third.get(KEY) == (None, "corrupt")
    await third.put(KEY, TRANSCRIPT)
    assert await tiered().get(KEY) == (TRANSCRIPT, "hit")
    # Without a shared cache, only memory.
    alone: TieredCache[Transcript] = TieredCache(
        ResultCache(4), None, "transcript", encode=dumps_result, decode=lambda d: TRANSCRIPT
    )
    assert await alone.get(KEY) == (None, "miss")


def test_settings_switch_and_ttl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    for cls in (MetadataSettings, TranscribeSettings):
        default = shared_cache(cls(), store)
        assert default is not None and default.ttl == timedelta(days=30)
        assert default.timeout == 5.0
        monkeypatch.setenv("REELMILL_AI_CACHE_TTL_DAYS", "0.5")
        monkeypatch.setenv("REELMILL_AI_CACHE_TIMEOUT_SECONDS", "2")
        tuned = shared_cache(cls(), store)
        assert tuned is not None and (tuned.ttl, tuned.timeout) == (timedelta(hours=12), 2.0)
        monkeypatch.setenv("REELMILL_AI_CACHE", "off")
        assert shared_cache(cls(), store) is None
        monkeypatch.delenv("REELMILL_AI_CACHE")
        monkeypatch.delenv("REELMILL_AI_CACHE_TTL_DAYS")
        monkeypatch.delenv("REELMILL_AI_CACHE_TIMEOUT_SECONDS")


# -- the services, as processes over one bucket --------------------------------------------------


def lookups(process_env: dict[str, str], namespace: str) -> dict[str, float]:
    """The process's ``reelmill.ai_cache.lookups`` by outcome, from its /metrics."""
    address = process_env["REELMILL_METRICS_LISTEN"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "reelmill_ai_cache_lookups_total"
                and sample.labels.get("namespace") == namespace
            ):
                found[sample.labels["outcome"]] = sample.value
    return found


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, s3_server: S3Server, fresh_bucket: FreshBucket
) -> Iterator[Suite]:
    """Two replicas of one service (the parameter) over one fresh bucket, each with a metrics
    endpoint; no gateway."""
    service: str = request.param
    env = {**s3_server.env(fresh_bucket()), "REELMILL_WHISPER_CPU_THREADS": "1"}
    with run_suite(
        env,
        gateways=0,
        replicas=2,
        services=[service],
        extra=lambda _: {"REELMILL_METRICS_LISTEN": f"127.0.0.1:{free_port()}"},
    ) as suite:
        yield suite


async def plant(server: S3Server, bucket: str, namespace: str, change: Any) -> None:
    """Replaces the one entry of ``namespace`` with ``change(entry's payload)``: what answers
    with the change read the shared cache, and did not compute."""
    store = s3_store(server, bucket)
    try:
        keys = await store.list_keys(f"{PREFIX}{namespace}/")
        assert len(keys) == 1, keys
        key = keys[0].rsplit("/", 1)[1].removesuffix(".json")
        cache = SharedCache(store, ttl=timedelta(days=1))
        payload = await cache.get(namespace, key)
        assert payload is not None
        assert await cache.put(namespace, key, change(payload))
    finally:
        await store.close()


def lecture_request(prefix: str) -> metadata_service_pb2.GenerateMetadataRequest:
    sentences = [
        "Today we make fresh pasta from scratch with flour and eggs.",
        "Knead the pasta dough for ten minutes until the dough is smooth.",
        "Next, fixing a puncture on a bicycle tyre with a patch.",
        "Pump a little air into the inner tube and listen for the puncture.",
        "Finally, choosing a first telescope for the backyard.",
        "The aperture of a telescope matters more than its magnification.",
    ]
    duration = media_pb2.MediaInfo().duration
    duration.FromSeconds(13 * len(sentences))
    return metadata_service_pb2.GenerateMetadataRequest(
        transcript=media_pb2.Transcript(
            language="en",
            segments=[
                media_pb2.Segment(id=i, start_seconds=13.0 * i, end_seconds=13.0 * i + 11, text=t)
                for i, t in enumerate(sentences)
            ],
        ),
        media_info=media_pb2.MediaInfo(duration=duration),
        spec=pipeline_pb2.MetadataSpec(max_tags=5),
        output_prefix=prefix,
        filename="three_topics.mp4",
    )


@pytest.mark.e2e
@pytest.mark.parametrize("replicas", ["metadata"], indirect=True)
async def test_a_second_metadata_replica_and_a_restarted_one_answer_from_the_shared_cache(
    replicas: Suite, s3_server: S3Server
) -> None:
    a, b = replicas.processes["metadata"]

    async def generate(address: str, prefix: str) -> metadata_service_pb2.GenerateMetadataResponse:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
            return await stub.GenerateMetadata(lecture_request(prefix), metadata=CALL, timeout=60)

    first = await generate(a.address, "jobs/a/")
    assert not first.cached and first.metadata.chapters
    assert lookups(a.env, "metadata") == {"miss": 1}

    def retitled(payload: bytes) -> bytes:
        return json.dumps({**json.loads(payload), "title": "Planted in the shared cache"}).encode()

    await plant(s3_server, replicas.env["REELMILL_S3_BUCKET"], "metadata", retitled)
    second = await generate(b.address, "jobs/b/")
    assert second.cached
    assert second.metadata.title == "Planted in the shared cache"  # read, not generated
    expected = media_pb2.VideoMetadata()
    expected.CopyFrom(first.metadata)
    expected.title = second.metadata.title
    assert second.metadata == expected  # every other field (the chapters') as A made them
    assert [a.object.key for a in second.artifacts] == ["jobs/b/metadata/metadata.json"]
    assert lookups(b.env, "metadata") == {"hit": 1}
    log = [json.loads(line) for line in b.output().splitlines() if line.startswith("{")]
    generated = [e for e in log if e["message"] == "metadata generated"]
    assert [(e["cached"], e["cache"]) for e in generated] == [(True, "hit")]

    # A restarted process has an empty memory: it answers from the shared cache too.
    replicas.kill(a)
    a = replicas.restart(a)
    again = await generate(a.address, "jobs/c/")
    assert again.cached and again.metadata == second.metadata
    assert lookups(a.env, "metadata") == {"hit": 1}


@pytest.mark.e2e
@pytest.mark.parametrize("replicas", ["transcribe"], indirect=True)
async def test_a_second_transcribe_replica_answers_from_the_shared_cache(
    replicas: Suite, s3_server: S3Server, shared_media: Path
) -> None:
    bucket = replicas.env["REELMILL_S3_BUCKET"]
    store = s3_store(s3_server, bucket)
    try:
        await store.put_file(
            "audio/jfk.flac", shared_media / "speech" / "jfk.flac", content_type="audio/flac"
        )
    finally:
        await store.close()
    a, b = replicas.processes["transcribe"]

    async def transcribe(address: str, prefix: str) -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = transcribe_service_pb2_grpc.TranscribeServiceStub(channel)
            request = transcribe_service_pb2.TranscribeRequest(
                audio=media_pb2.ObjectRef(key="audio/jfk.flac"),
                spec=pipeline_pb2.TranscribeSpec(beam_size=1),
                output_prefix=prefix,
            )
            responses = [r async for r in stub.Transcribe(request, metadata=CALL, timeout=120)]
        return responses

    first = (await transcribe(a.address, "jobs/a/"))[-1].result
    assert not first.cached and "fellow Americans" in first.transcript.segments[0].text

    def replanted(payload: bytes) -> bytes:
        transcript = json.loads(payload)
        transcript["segments"][0]["text"] = "Planted in the shared cache"
        return json.dumps(transcript).encode()

    await plant(s3_server, bucket, "transcript", replanted)
    responses = await transcribe(b.address, "jobs/b/")
    second = responses[-1].result
    assert second.cached
    assert second.transcript.segments[0].text == "Planted in the shared cache"
    assert list(second.transcript.segments[1:]) == list(first.transcript.segments[1:])
    assert [r.progress.message for r in responses if r.HasField("progress")] == ["cached"]
    assert lookups(b.env, "transcript") == {"hit": 1}
    log = [json.loads(line) for line in b.output().splitlines() if line.startswith("{")]
    done = [e for e in log if e["message"] == "transcribed"]
    assert [(e["cached"], e["cache"]) for e in done] == [(True, "hit")]


# -- the unused ai_cache table ------------------------------------------------------------------


async def test_migration_0009_drops_ai_cache_and_its_downgrade_recreates_it(
    postgres: PostgresServer, empty_database: str
) -> None:
    """The results live in the object store; the table 0001 made for them was never used."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.engine import Connection

    from gateway.db.engine import alembic_config, make_engine, migrate

    url = postgres.url(empty_database)
    before = ScriptDirectory.from_config(alembic_config(url)).get_revision("0009").down_revision
    assert isinstance(before, str)

    def run(connection: Connection, action: str, target: str) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        getattr(command, action)(config, target)

    columns = text(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_name = 'ai_cache' ORDER BY ordinal_position"
    )
    engine = make_engine(url)
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(columns)).all() == []
        async with engine.begin() as connection:
            await connection.run_sync(run, "downgrade", before)
        async with engine.connect() as connection:
            assert [tuple(row) for row in (await connection.execute(columns)).all()] == [
                ("key", "character varying", 128, "NO", None),
                ("payload", "jsonb", None, "NO", None),
                ("create_time", "timestamp with time zone", None, "NO", "now()"),
            ]
            key = text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'ai_cache'::regclass"
                " AND i.indisprimary"
            )
            assert (await connection.execute(key)).scalars().all() == ["key"]
        await migrate(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(columns)).all() == []
    finally:
        await engine.dispose()
