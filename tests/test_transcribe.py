"""TranscribeService: pure formatting rules, then the real tiny.en model on real speech through
the core (``Transcriber`` on a ``LocalObjectStore``) and through a real grpc.aio server; Gemini
through the SDK with recorded HTTP responses (a live call only when a key is set)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx2
import numpy as np
import pytest
import srt
import webvtt

from reelmill.retry import Backoff
from reelmill.v1 import media_pb2, pipeline_pb2, transcribe_service_pb2, transcribe_service_pb2_grpc
from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_info,
)
from runtime.ffmpeg import ffmpeg_path
from runtime.genai import GeminiClient, GeminiConfig
from runtime.progress import ProgressUpdate
from runtime.server import build_server
from runtime.storage.keys import normalize_prefix
from runtime.storage.local import LocalObjectStore
from runtime.threads import produce_in_thread
from services.transcribe import formats
from services.transcribe.gemini import GeminiEngine
from services.transcribe.model import (
    Engine,
    Outcome,
    Segment,
    SegmentUpdate,
    TranscribeOptions,
    Transcript,
    Update,
    Word,
)
from services.transcribe.server import build_spec, build_transcriber
from services.transcribe.servicer import TranscribeServicer
from services.transcribe.settings import TranscribeSettings
from services.transcribe.transcriber import AudioRef, Transcriber
from services.transcribe.whisper import WhisperEngine, normalize_language

JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
LICENSE_EN = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of the "
    "software and associated documentation files to deal in the software without restriction, "
    "including without limitation the rights to use, copy, modify, merge, publish, distribute, "
    "sublicence, and or cell copies of the software, and to permit persons to whom the software "
    "is furnished to do so, subject to the following conditions. The above copyright notice "
    "and this permission notice, shall be included in all copies or substantial portions of "
    "the software."
)
RECORDINGS = Path(__file__).parent / "recordings" / "gemini"


# --- helpers -----------------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words_of(reference), words_of(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(len(ref), 1)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def text_of(transcript: Transcript) -> str:
    return " ".join(segment.text for segment in transcript.segments)


async def collect(updates: AsyncIterator[Update]) -> tuple[list[Update], Outcome]:
    seen = [update async for update in updates]
    outcome = seen[-1]
    assert isinstance(outcome, Outcome)
    return seen[:-1], outcome


def check_timing(transcript: Transcript) -> None:
    previous_end = 0.0
    for segment in transcript.segments:
        assert previous_end <= segment.start < segment.end <= transcript.duration
        previous_end = segment.end
        cursor = segment.start
        for word in segment.words:
            assert segment.start <= cursor <= word.start <= word.end <= segment.end
            cursor = word.end


def transcribe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("transcribe-")]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, shared_media: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speech")
    jfk = shared_media / "speech" / "jfk.flac"
    silence = root / "no_speech.wav"
    # A tone, then digital silence: music-like and silent audio with no speech at all.
    _ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=4",
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
        "-filter_complex", "[1]atrim=duration=4[s];[0][s]concat=n=2:v=0:a=1",
        "-ac", "1", str(silence),
    )  # fmt: skip
    english = root / "english.wav"
    _ffmpeg("-i", str(shared_media / "speech" / "multilingual.mp3"), "-t", "30", "-ac", "1",
            "-ar", "16000", str(english))  # fmt: skip
    # Four minutes: jfk padded to 30 s (one sentence per Whisper window), eight times.
    padded = root / "padded.wav"
    _ffmpeg("-i", str(jfk), "-af", "apad=whole_dur=30", "-ac", "1", "-ar", "16000", str(padded))
    long = root / "long.wav"
    _ffmpeg("-stream_loop", "7", "-i", str(padded), str(long))
    return {"jfk": jfk, "silence": silence, "english": english, "long": long}


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def settings(tmp_path: Path) -> TranscribeSettings:
    return TranscribeSettings(storage_dir=tmp_path / "objects", segment_queue_size=2)


@pytest.fixture
def transcriber(settings: TranscribeSettings, store: LocalObjectStore) -> Transcriber:
    # The model itself is loaded once per process and shared by every transcriber.
    return build_transcriber(settings, store)


async def put(store: LocalObjectStore, path: Path, key: str) -> AudioRef:
    await store.put_file(key, path, content_type="audio/x-unknown")
    return AudioRef(key)


# --- pure rules --------------------------------------------------------------------------------


def test_tidy_clamps_orders_and_renumbers() -> None:
    raw = [
        Segment(7, -0.5, 2.0, "  first  ", (Word(-1.0, 0.5, " a", 0.9), Word(0.4, 2.5, "b", 0.8))),
        Segment(8, 1.5, 1.2, "overlapping and reversed"),
        Segment(9, 3.0, 3.5, "   "),
        Segment(10, 9.0, 14.0, "past the end"),
        Segment(11, 12.0, 13.0, "no room left"),
    ]
    tidy = formats.tidy_segments(raw, duration=10.0)
    assert [(s.id, s.start, s.end, s.text) for s in tidy] == [
        (0, 0.0, 2.0, "first"),
        (1, 2.0, 2.001, "overlapping and reversed"),
        (2, 9.0, 10.0, "past the end"),
    ]
    assert [(w.start, w.end, w.text) for w in tidy[0].words] == [(0.0, 0.5, "a"), (0.5, 2.0, "b")]


def test_subtitle_formats_are_valid_and_escaped() -> None:
    transcript = Transcript(
        language="en",
        language_probability=1.0,
        duration=3725.5,
        segments=(
            Segment(0, 0.0, 1.25, "Tom & Jerry <b>not bold</b>"),
            Segment(1, 3600.0, 3725.5, "an arrow --> inside"),
        ),
        engine="faster-whisper",
        model="tiny.en",
    )
    vtt = formats.to_vtt(transcript)
    cues = webvtt.from_string(vtt).captions
    assert [(c.start, c.end) for c in cues] == [
        ("00:00:00.000", "00:00:01.250"),
        ("01:00:00.000", "01:02:05.500"),
    ]
    assert cues[0].raw_text == "Tom &amp; Jerry &lt;b&gt;not bold&lt;/b&gt;"
    subtitles = list(srt.parse(formats.to_srt(transcript), ignore_errors=False))
    assert [s.index for s in subtitles] == [1, 2]
    assert subtitles[1].start.total_seconds() == 3600.0
    assert subtitles[1].end.total_seconds() == 3725.5
    assert subtitles[1].content == "an arrow -> inside"
    assert "01:02:05,500" in formats.to_srt(transcript)
    assert formats.to_txt(transcript).splitlines()[0] == "Tom & Jerry <b>not bold</b>"
    assert formats.transcript_from_dict(json.loads(formats.to_json(transcript))) == transcript

    empty = Transcript("en", 1.0, 5.0, (), "faster-whisper", "tiny.en")
    assert webvtt.from_string(formats.to_vtt(empty)).captions == []
    assert formats.to_vtt(empty).startswith("WEBVTT\n")
    assert list(srt.parse(formats.to_srt(empty))) == []


def test_prefix_and_language_normalisation() -> None:
    assert normalize_prefix("jobs/1") == "jobs/1/"
    assert normalize_prefix("jobs/1/") == "jobs/1/"
    for bad in ("", "/abs/", "a/../b/", "a//b/", "a\\b/"):
        with pytest.raises(InvalidArgument):
            normalize_prefix(bad)
    assert normalize_language("en-US") == "en"
    assert normalize_language(" DE ") == "de"
    assert normalize_language("") == ""


async def test_thread_pipe_back_pressure_and_stop() -> None:
    produced: list[int] = []

    def produce(put: Callable[[int], None], stop: threading.Event) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            put(i)
            produced.append(i)

    items = produce_in_thread(produce, name="transcribe-test", queue_size=2)
    got = [await anext(items) for _ in range(3)]
    await asyncio.sleep(0.2)
    # The bounded queue holds the producer back while nobody consumes.
    assert got == [0, 1, 2] and len(produced) <= 6
    await items.aclose()
    assert transcribe_threads() == []
    assert len(produced) <= 6

    def failing(put: Callable[[int], None], stop: threading.Event) -> None:
        put(1)
        raise InvalidArgument("bad", reason="BAD")

    with pytest.raises(InvalidArgument):
        _ = [i async for i in produce_in_thread(failing, name="transcribe-f", queue_size=1)]


# --- the real model ----------------------------------------------------------------------------


async def test_jfk(
    transcriber: Transcriber, store: LocalObjectStore, media: dict[str, Path]
) -> None:
    audio = await put(store, media["jfk"], "audio/jfk.flac")
    updates, outcome = await collect(
        transcriber.transcribe(audio, TranscribeOptions(), "jobs/jfk/", stream_segments=True)
    )
    transcript = outcome.transcript
    assert word_error_rate(JFK, text_of(transcript)) <= 0.05
    assert transcript.language == "en" and transcript.duration == 11.0
    assert (transcript.engine, transcript.model) == ("faster-whisper", "tiny.en")
    assert 1 <= len(transcript.segments) <= 2
    assert transcript.segments[0].start <= 0.5
    assert 10.0 <= transcript.segments[-1].end <= 11.0
    assert all(segment.words for segment in transcript.segments)
    check_timing(transcript)
    streamed = [u.segment for u in updates if isinstance(u, SegmentUpdate)]
    assert tuple(streamed) == transcript.segments
    fractions = [u.fraction for u in updates if isinstance(u, ProgressUpdate)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[-2] < 1

    artifacts = {a.name: a for a in outcome.artifacts}
    assert set(artifacts) == {
        "transcript/transcript.json",
        "transcript/transcript.vtt",
        "transcript/transcript.srt",
        "transcript/transcript.txt",
    }
    for artifact in outcome.artifacts:
        info = await store.stat(artifact.key)
        assert artifact.key == "jobs/jfk/" + artifact.name
        assert (info.size, info.sha256) == (artifact.size, artifact.sha256)

    async def read(name: str) -> str:
        return b"".join([c async for c in store.read(artifacts[name].key)]).decode()

    cues = webvtt.from_string(await read("transcript/transcript.vtt")).captions
    assert [c.text for c in cues] == [s.text for s in transcript.segments]
    subtitles = list(srt.parse(await read("transcript/transcript.srt"), ignore_errors=False))
    assert [s.index for s in subtitles] == list(range(1, len(transcript.segments) + 1))
    assert [s.end.total_seconds() for s in subtitles] == [s.end for s in transcript.segments]
    stored = json.loads(await read("transcript/transcript.json"))
    assert formats.transcript_from_dict(stored) == transcript
    assert word_error_rate(JFK, await read("transcript/transcript.txt")) <= 0.05

    # The same audio again: served from the cache, artifacts written under the new prefix.
    updates, again = await collect(transcriber.transcribe(audio, TranscribeOptions(), "jobs/2/"))
    assert again.cached and again.transcript == transcript
    assert await store.exists("jobs/2/transcript/transcript.vtt")
    # Other options are another cache entry.
    _, plain = await collect(
        transcriber.transcribe(audio, TranscribeOptions(word_timestamps=False), "jobs/3/")
    )
    assert not plain.cached and not any(s.words for s in plain.transcript.segments)
    assert word_error_rate(JFK, text_of(plain.transcript)) <= 0.05


async def test_english_part_of_multilingual_clip(
    transcriber: Transcriber, store: LocalObjectStore, media: dict[str, Path]
) -> None:
    audio = await put(store, media["english"], "audio/english.wav")
    _, outcome = await collect(
        transcriber.transcribe(audio, TranscribeOptions(language="en"), "jobs/en/")
    )
    transcript = outcome.transcript
    assert transcript.duration == 30.0
    check_timing(transcript)
    text = text_of(transcript)
    assert "permission is hereby granted" in " ".join(words_of(text))
    # The reference is the multilingual tiny model's output; tiny.en's differs a little.
    assert word_error_rate(LICENSE_EN, text) <= 0.1


async def test_no_speech_gives_an_empty_transcript(
    transcriber: Transcriber, store: LocalObjectStore, media: dict[str, Path]
) -> None:
    audio = await put(store, media["silence"], "audio/silence.wav")
    _, outcome = await collect(transcriber.transcribe(audio, TranscribeOptions(), "jobs/s/"))
    assert outcome.transcript.segments == ()
    assert outcome.transcript.duration == 8.0
    vtt = b"".join([c async for c in store.read("jobs/s/transcript/transcript.vtt")]).decode()
    assert vtt == "WEBVTT\n"


async def test_bad_requests(
    transcriber: Transcriber, store: LocalObjectStore, tmp_path: Path
) -> None:
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("hello, not audio\n" * 100)
    audio = await put(store, not_audio, "audio/notes.txt")
    with pytest.raises(InvalidArgument) as caught:
        await collect(transcriber.transcribe(audio, TranscribeOptions(), "jobs/x/"))
    assert caught.value.reason == "NOT_AUDIO"
    with pytest.raises(InvalidArgument) as caught:
        await collect(transcriber.transcribe(audio, TranscribeOptions(language="de"), "jobs/x/"))
    assert caught.value.reason == "UNSUPPORTED_LANGUAGE"
    with pytest.raises(FailedPrecondition, match="gemini is not configured"):
        await collect(
            transcriber.transcribe(audio, TranscribeOptions(engine=Engine.GEMINI), "jobs/x/")
        )
    with pytest.raises(InvalidArgument) as caught:
        await collect(transcriber.transcribe(AudioRef("a", "other"), TranscribeOptions(), "j/"))
    assert caught.value.reason == "UNKNOWN_BUCKET"


# --- through gRPC ------------------------------------------------------------------------------


def _request(key: str, prefix: str, **spec: Any) -> transcribe_service_pb2.TranscribeRequest:
    return transcribe_service_pb2.TranscribeRequest(
        audio=media_pb2.ObjectRef(key=key),
        spec=pipeline_pb2.TranscribeSpec(**spec),
        output_prefix=prefix,
        stream_segments=True,
    )


@pytest.fixture
async def served(
    settings: TranscribeSettings, transcriber: Transcriber
) -> AsyncIterator[tuple[transcribe_service_pb2_grpc.TranscribeServiceStub, Transcriber]]:
    server = build_server(settings)
    transcribe_service_pb2_grpc.add_TranscribeServiceServicer_to_server(
        TranscribeServicer(transcriber), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield transcribe_service_pb2_grpc.TranscribeServiceStub(channel), transcriber
    finally:
        await server.stop(0)


async def test_grpc_stream_then_cache_hit(
    served: tuple[transcribe_service_pb2_grpc.TranscribeServiceStub, Transcriber],
    store: LocalObjectStore,
    media: dict[str, Path],
) -> None:
    stub, _ = served
    await put(store, media["jfk"], "audio/g.flac")
    responses = [r async for r in stub.Transcribe(_request("audio/g.flac", "jobs/g"), timeout=120)]
    kinds = [r.WhichOneof("update") for r in responses]
    assert kinds[-1] == "result" and "segment" in kinds and kinds[0] == "progress"
    result = responses[-1].result
    assert not result.cached
    transcript = result.transcript
    assert word_error_rate(JFK, " ".join(s.text for s in transcript.segments)) <= 0.05
    assert transcript.duration.ToTimedelta().total_seconds() == 11.0
    assert transcript.language == "en" and transcript.model == "tiny.en"
    assert [r.segment for r in responses if r.HasField("segment")] == list(transcript.segments)
    for segment in transcript.segments:
        assert segment.words
        for word in segment.words:
            assert segment.start_seconds <= word.start_seconds <= word.end_seconds
            assert word.end_seconds <= segment.end_seconds
    kinds_by_name = {a.name: a.kind for a in result.artifacts}
    assert kinds_by_name == {
        "transcript/transcript.json": media_pb2.ARTIFACT_KIND_TRANSCRIPT_JSON,
        "transcript/transcript.vtt": media_pb2.ARTIFACT_KIND_TRANSCRIPT_VTT,
        "transcript/transcript.srt": media_pb2.ARTIFACT_KIND_TRANSCRIPT_SRT,
        "transcript/transcript.txt": media_pb2.ARTIFACT_KIND_TRANSCRIPT_TXT,
    }
    vtt = next(a for a in result.artifacts if a.name.endswith(".vtt"))
    assert (vtt.object.bucket, vtt.object.key) == ("local", "jobs/g/transcript/transcript.vtt")
    assert vtt.content_type.startswith("text/vtt") and vtt.stage == "transcribe"
    assert vtt.sha256 == (await store.stat(vtt.object.key)).sha256

    again = [r async for r in stub.Transcribe(_request("audio/g.flac", "jobs/h/"), timeout=30)]
    assert again[-1].result.cached
    assert again[-1].result.transcript == transcript

    async def status(request: transcribe_service_pb2.TranscribeRequest) -> tuple[Any, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in stub.Transcribe(request, timeout=30)]
        info = error_info(caught.value)
        return caught.value.code(), info.reason if info else ""

    assert await status(_request("audio/g.flac", "jobs/x/", language="fr")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED_LANGUAGE",
    )
    assert await status(
        _request("audio/g.flac", "jobs/x/", engine=pipeline_pb2.TRANSCRIBE_ENGINE_GEMINI)
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "GEMINI_NOT_CONFIGURED")
    assert (await status(_request("audio/none.wav", "jobs/x/")))[0] == grpc.StatusCode.NOT_FOUND
    assert await status(_request("audio/g.flac", "/abs/")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_OUTPUT_PREFIX",
    )
    disabled = [r async for r in stub.Transcribe(_request("x", "y/", disabled=True), timeout=5)]
    assert len(disabled) == 1 and disabled[0].result == transcribe_service_pb2.TranscribeResult()


async def test_grpc_cancel_stops_the_worker(
    served: tuple[transcribe_service_pb2_grpc.TranscribeServiceStub, Transcriber],
    store: LocalObjectStore,
    media: dict[str, Path],
) -> None:
    stub, transcriber = served
    engine = transcriber.engine_for(None)
    assert isinstance(engine, WhisperEngine)
    await put(store, media["long"], "audio/long.wav")
    call = stub.Transcribe(
        _request("audio/long.wav", "jobs/long/", vad_filter=False, word_timestamps=False),
        timeout=120,
    )
    async for response in call:
        if response.HasField("segment"):
            break
    assert transcribe_threads()
    call.cancel()
    # The worker stops at its next segment (how soon depends on the machine's load: the wait is
    # a bound against hanging, not a speed check).
    for _ in range(600):
        if not transcribe_threads():
            break
        await asyncio.sleep(0.05)
    assert transcribe_threads() == []
    produced = engine.segments_produced
    await asyncio.sleep(0.5)
    assert engine.segments_produced == produced
    assert not await store.exists("jobs/long/transcript/transcript.json")


# --- Gemini through the SDK, recorded responses ------------------------------------------------


class Recorded:
    """An httpx2 transport that answers from recorded bodies and keeps the requests."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        status, name = self.answers.pop(0)
        body = (RECORDINGS / name).read_bytes()
        return httpx2.Response(status, content=body, headers={"content-type": "application/json"})


def gemini_transcriber(
    store: LocalObjectStore, settings: TranscribeSettings, recorded: Recorded
) -> tuple[Transcriber, list[float]]:
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    config = GeminiConfig(
        api_key="test-key", max_attempts=3, transport=httpx2.MockTransport(recorded)
    )
    client = GeminiClient(config, sleep=no_sleep, uniform=lambda low, high: high)
    transcriber = build_transcriber(settings, store, client)
    return transcriber, delays


async def test_gemini_request_and_response(
    store: LocalObjectStore, settings: TranscribeSettings, media: dict[str, Path]
) -> None:
    recorded = Recorded((503, "error_unavailable.json"), (200, "transcribe_ok.json"))
    transcriber, delays = gemini_transcriber(store, settings, recorded)
    audio = await put(store, media["jfk"], "audio/gem.flac")
    # With a key configured, Gemini is the default engine.
    _, outcome = await collect(transcriber.transcribe(audio, TranscribeOptions(), "jobs/gem/"))
    transcript = outcome.transcript
    assert (transcript.engine, transcript.model, transcript.language) == (
        "gemini",
        "gemini-2.5-flash",
        "en",
    )
    assert word_error_rate(JFK, text_of(transcript)) == 0
    # Gemini's end time past the audio (11.6 s) is clamped inside it.
    assert [(s.start, s.end) for s in transcript.segments] == [(0.0, 8.1), (8.1, 11.0)]
    check_timing(transcript)
    # One transient failure, retried after a jittered backoff (here its ceiling).
    assert len(recorded.requests) == 2 and delays == [1.0]

    request = recorded.requests[-1]
    assert request.method == "POST"
    assert request.url.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "test-key"
    body = json.loads(request.content)
    parts = body["contents"][0]["parts"]
    assert "Transcribe the speech" in parts[0]["text"]
    inline = parts[1]["inlineData"]
    # (the SDK writes the blob's mime type in snake case)
    assert (inline.get("mimeType") or inline.get("mime_type")) == "audio/flac"
    assert len(inline["data"]) > 100_000
    generation = body["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["temperature"] == 0.0
    schema = json.dumps(generation.get("responseSchema") or generation.get("responseJsonSchema"))
    assert "start_seconds" in schema and "segments" in schema


@pytest.mark.parametrize(
    ("answers", "error", "reason", "attempts"),
    [
        ([(400, "error_api_key_invalid.json")], Unauthenticated, "GEMINI_UNAUTHENTICATED", 1),
        ([(429, "error_quota.json")], ResourceExhausted, "GEMINI_QUOTA_EXHAUSTED", 1),
        ([(503, "error_unavailable.json")] * 3, Unavailable, "GEMINI_UNAVAILABLE", 3),
        ([(200, "invalid_output.json")] * 3, Unavailable, "GEMINI_INVALID_OUTPUT", 3),
    ],
)
async def test_gemini_errors_are_mapped(
    store: LocalObjectStore,
    settings: TranscribeSettings,
    media: dict[str, Path],
    answers: list[tuple[int, str]],
    error: type[Exception],
    reason: str,
    attempts: int,
) -> None:
    recorded = Recorded(*answers)
    transcriber, delays = gemini_transcriber(store, settings, recorded)
    audio = await put(store, media["jfk"], "audio/err.flac")
    options = TranscribeOptions(engine=Engine.GEMINI)
    with pytest.raises(error) as caught:
        await collect(transcriber.transcribe(audio, options, "jobs/err/"))
    assert getattr(caught.value, "reason", None) == reason
    assert len(recorded.requests) == attempts and len(delays) == attempts - 1


@pytest.mark.parametrize(
    ("uniform", "expected"),
    [
        (lambda low, high: high, [1.0, 2.0, 4.0, 5.0, 5.0]),
        (lambda low, high: low, [0.5, 1.0, 2.0, 2.5, 2.5]),
    ],
)
async def test_backoff_is_capped_and_jittered(
    uniform: Callable[[float, float], float], expected: list[float]
) -> None:
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    config = GeminiConfig(
        api_key="k",
        max_attempts=6,
        backoff=Backoff(initial=1.0, maximum=5.0),
        transport=httpx2.MockTransport(lambda request: httpx2.Response(503, json={})),
    )
    client = GeminiClient(config, sleep=no_sleep, uniform=uniform)

    async def fails() -> None:
        await client.client.aio.models.generate_content(model=client.model, contents="x")

    with pytest.raises(Unavailable):
        await client.call(fails, what="test")
    await client.close()
    # Equal jitter: in [c/2, c] for the ceiling c, which doubles up to the maximum.
    assert delays == expected


async def test_gemini_upload_path_for_long_audio(
    store: LocalObjectStore, settings: TranscribeSettings
) -> None:
    seen: list[httpx2.Request] = []
    file = {"name": "files/abc123", "uri": "https://files.example/abc123",
            "mimeType": "audio/flac", "state": "ACTIVE"}  # fmt: skip

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.headers.get("x-goog-upload-command") == "start":
            return httpx2.Response(
                200, headers={"x-goog-upload-url": "https://upload.example/session/1"}
            )
        if request.url.host == "upload.example":
            return httpx2.Response(
                200, json={"file": file}, headers={"x-goog-upload-status": "final"}
            )
        if request.method == "DELETE":
            return httpx2.Response(200, json={})
        return httpx2.Response(200, content=(RECORDINGS / "transcribe_ok.json").read_bytes())

    client = GeminiClient(GeminiConfig(api_key="k", transport=httpx2.MockTransport(answer)))
    engine = GeminiEngine(client, inline_limit=1000)
    samples = np.zeros(16000 * 11, dtype=np.float32)
    events = [e async for e in engine.transcribe(samples, TranscribeOptions(language="en"))]
    assert len(events) == 3
    generate = next(r for r in seen if r.url.path.endswith(":generateContent"))
    parts = json.loads(generate.content)["contents"][0]["parts"]
    file_data = parts[1]["fileData"]
    assert (file_data.get("fileUri") or file_data.get("file_uri")) == file["uri"]
    assert "'en'" in parts[0]["text"]
    assert seen[-1].method == "DELETE" and seen[-1].url.path.endswith("files/abc123")
    await client.close()


@pytest.mark.skipif(
    not os.environ.get("REELMILL_GEMINI_API_KEY"), reason="REELMILL_GEMINI_API_KEY is not set"
)
async def test_gemini_live(store: LocalObjectStore, tmp_path: Path, media: dict[str, Path]) -> None:
    settings = TranscribeSettings(storage_dir=tmp_path / "objects")  # reads the key
    spec = build_spec(settings, store)
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await put(store, media["jfk"], "audio/live.flac")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = transcribe_service_pb2_grpc.TranscribeServiceStub(channel)
            request = _request(
                "audio/live.flac", "jobs/live/", engine=pipeline_pb2.TRANSCRIBE_ENGINE_GEMINI
            )
            responses = [r async for r in stub.Transcribe(request, timeout=300)]
        transcript = responses[-1].result.transcript
        assert transcript.engine == "gemini"
        assert word_error_rate(JFK, " ".join(s.text for s in transcript.segments)) <= 0.1
    finally:
        await server.stop(0)
        assert spec.on_close is not None
        await spec.on_close()


# --- a transcript the caller gives ---------------------------------------------------------------


def _given(*segments: tuple[int, float, float, str], language: str = "en") -> Transcript:
    return Transcript(
        language=language,
        language_probability=0.0,
        duration=0.0,
        segments=tuple(Segment(i, a, b, text) for i, a, b, text in segments),
        engine="",
        model="",
    )


async def test_a_given_transcript_is_kept_and_written_out(
    transcriber: Transcriber, store: LocalObjectStore
) -> None:
    given = _given((10, 0.0, 4.0, " Hello  there. "), (20, 4.0, 9.5, "General Kenobi."))
    # The audio is never read: the key names no object.
    updates, outcome = await collect(
        transcriber.transcribe(
            AudioRef("audio/none.wav"),
            TranscribeOptions(given=given),
            "jobs/given/",
            stream_segments=True,
            duration=10.0,
        )
    )
    transcript = outcome.transcript
    assert (transcript.engine, transcript.language, transcript.duration) == ("caller", "en", 10.0)
    assert [(s.id, s.start, s.end, s.text) for s in transcript.segments] == [
        (10, 0.0, 4.0, "Hello there."),
        (20, 4.0, 9.5, "General Kenobi."),
    ]
    assert [u.segment for u in updates if isinstance(u, SegmentUpdate)] == list(transcript.segments)
    vtt = b"".join([c async for c in store.read("jobs/given/transcript/transcript.vtt")]).decode()
    assert "00:00:04.000 --> 00:00:09.500\nGeneral Kenobi." in vtt
    assert {a.name for a in outcome.artifacts} == {
        "transcript/transcript.json",
        "transcript/transcript.vtt",
        "transcript/transcript.srt",
        "transcript/transcript.txt",
    }


@pytest.mark.parametrize(
    ("segments", "text"),
    [
        ((), "no segment with text"),
        (((0, 0.0, 1.0, "   "),), "no segment with text"),
        (((-1, 0.0, 1.0, "a"),), "segments[0] (id -1): ids must not be negative"),
        (((1, 0.0, 1.0, "a"), (1, 1.0, 2.0, "b")), "segments[1] (id 1): id is also"),
        (((1, 2.0, 1.0, "a"),), "needs 0 <= start <= end"),
        (((1, -1.0, 1.0, "a"),), "needs 0 <= start <= end"),
        (((1, 5.0, 6.0, "a"), (2, 1.0, 2.0, "b")), "segments[1] (id 2): starts at 1 s"),
        (((1, 0.0, 30.0, "a"),), "after the audio (10 s)"),
        (((1, 0.0, 1.0, "a" * 10_001),), "text is longer than"),
    ],
)
async def test_a_bad_given_transcript_is_refused_by_name(
    transcriber: Transcriber, store: LocalObjectStore, segments: Any, text: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await collect(
            transcriber.transcribe(
                AudioRef("audio/none.wav"),
                TranscribeOptions(given=_given(*segments)),
                "jobs/bad-given/",
                duration=10.0,
            )
        )
    assert caught.value.reason == "INVALID_TRANSCRIPT" and text in str(caught.value)
    assert await store.list_keys("jobs/bad-given/") == []
