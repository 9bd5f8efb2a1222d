"""MetadataService: the extractive generator's pure functions, the schema filler, then the
service core on a ``LocalObjectStore`` and a real grpc.aio server; Gemini through the SDK with
recorded HTTP responses (a live call only when a key is set)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx2
import jsonschema
import pytest

from reelmill.v1 import media_pb2, metadata_service_pb2, metadata_service_pb2_grpc, pipeline_pb2
from runtime.durations import duration_message
from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_info,
)
from runtime.genai import GeminiClient, GeminiConfig, parse_as
from runtime.server import build_server
from runtime.storage.local import LocalObjectStore
from services.metadata import extractive
from services.metadata.gemini import GeneratedChapter
from services.metadata.generator import MetadataGenerator
from services.metadata.keywords import keyphrases
from services.metadata.model import Engine, MetadataOptions, Source, TimedText
from services.metadata.schema import Filled, fill_schema, parse_schema
from services.metadata.server import build_generator, build_spec
from services.metadata.settings import MetadataSettings
from services.metadata.text import sentences
from services.metadata.topics import Bounds, find_topics

RECORDINGS = Path(__file__).parent / "recordings" / "gemini"

TOPICS = [
    [
        "Today we make fresh pasta from scratch with flour and eggs.",
        "Pour the flour onto the board and make a well for the eggs.",
        "Knead the pasta dough for ten minutes until the dough is smooth.",
        "Let the pasta dough rest under a bowl for half an hour.",
        "Roll the dough thin with a rolling pin or a pasta machine.",
        "Cut the pasta sheets into ribbons of tagliatelle.",
        "Boil the fresh pasta in salted water for two minutes.",
        "Fresh pasta cooks much faster than dried pasta.",
    ],
    [
        "Next, fixing a puncture on a bicycle tyre.",
        "Take the wheel off the bicycle and let the rest of the air out.",
        "Use tyre levers to lift the tyre and pull out the inner tube.",
        "Pump a little air into the inner tube and listen for the puncture.",
        "Roughen the rubber around the puncture and apply the patch glue.",
        "Press the patch onto the inner tube and wait for the glue to set.",
        "Check the inside of the tyre for glass before refitting the inner tube.",
        "Refit the tyre, pump the bicycle tyre up, and put the wheel back.",
    ],
    [
        "Finally, choosing a first telescope for the backyard.",
        "The aperture of a telescope matters more than its magnification.",
        "A reflector telescope gives the most aperture for the money.",
        "A sturdy mount keeps the telescope steady at high magnification.",
        "Start with the moon and the planets before faint galaxies.",
        "Let the telescope cool outside for half an hour before observing.",
        "Dark skies away from city lights show far more stars.",
        "A red torch keeps your eyes adapted to the dark while observing.",
    ],
]


def lecture() -> Source:
    """Three topics, 13 s per sentence, with a longer pause between topics."""
    segments = []
    time = 0.0
    for topic in TOPICS:
        for sentence in topic:
            segments.append(TimedText(time, time + 11.0, sentence, len(segments)))
            time += 13.0
        time += 5.0
    return Source(tuple(segments), duration=time, language="en", filename="how_to_three.mp4")


JFK = Source(
    (
        TimedText(0.0, 8.02, "And so my fellow Americans ask not what your country can do for you"),
        TimedText(8.02, 10.52, "ask what you can do for your country."),
    ),
    duration=11.0,
    language="en",
    filename="IMG_0042.MOV",
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["headline", "summary", "topics", "chapters", "duration_seconds", "rating"],
    "properties": {
        "headline": {"type": "string", "maxLength": 60},
        "summary": {"type": "string"},
        "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "chapters": {"type": "array", "items": {"$ref": "#/$defs/chapter"}},
        "duration_seconds": {"type": "number", "minimum": 0},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "audience": {"enum": ["general", "experts"]},
        "language": {"type": ["string", "null"]},
        "explicit": {"type": "boolean", "default": False},
        "notes": {"type": "string"},
    },
    "additionalProperties": False,
    "$defs": {
        "chapter": {
            "type": "object",
            "required": ["time", "heading"],
            "properties": {
                "time": {"type": "string"},
                "heading": {"type": "string"},
                "at_seconds": {"type": "number"},
            },
        }
    },
}
#: SCHEMA without the rating it requires: nothing in a video says what its rating is, so the
#: extractive generator leaves it out (listed in ``unfilled``) and the rest must validate.
SCHEMA_BUT_RATING = {
    **SCHEMA,
    "required": ["headline", "summary", "topics", "chapters", "duration_seconds"],
}


# --- extractive, pure --------------------------------------------------------------------------


def test_sentences_follow_punctuation_across_segments() -> None:
    found = sentences(JFK.segments)
    assert len(found) == 1 and found[0].start == 0.0 and found[0].end == 10.52
    split = sentences((TimedText(0, 4, "One thing. Another"), TimedText(4, 9, "thing here. Done")))
    assert [(s.start, s.end, s.text) for s in split] == [
        (0, 4, "One thing."),
        (0, 9, "Another thing here."),
        (4, 9, "Done"),
    ]


def test_keyphrases() -> None:
    ranked = [k.phrase for k in keyphrases([t for topic in TOPICS for t in topic], limit=10)]
    assert {"pasta", "telescope", "inner tube"} <= set(ranked) or "inner tube" in ranked
    assert ranked[0] in {"pasta", "fresh pasta", "pasta dough", "telescope"}
    assert len(set(ranked)) == len(ranked)


def test_topics_follow_the_topic_shifts() -> None:
    source = lecture()
    chapters = find_topics(source.segments, source.duration).chapters
    # The two topic changes are found, at the first sentence of each new topic, and nothing else.
    assert [c.start for c in chapters] == [0.0, source.segments[8].start, source.segments[16].start]
    # Contiguous from 0 to the end; each covers its topic's transcript segments.
    assert [c.end for c in chapters] == [c.start for c in chapters[1:]] + [source.duration]
    assert [c.segment_ids for c in chapters] == [
        tuple(range(0, 8)),
        tuple(range(8, 16)),
        tuple(range(16, 24)),
    ]
    titles = [c.title.lower() for c in chapters]
    assert "pasta" in titles[0] and ("tube" in titles[1] or "tyre" in titles[1])
    assert "telescope" in titles[2]
    for chapter, topic in zip(chapters, TOPICS, strict=True):
        said = " ".join(topic)
        # One or two of its own sentences, said in it.
        assert chapter.summary and all(
            part.strip(" .") in said for part in chapter.summary.split(". ")
        )
        assert 0 < len(chapter.keyphrases) <= 5
        assert all(k.lower() in said.lower() for k in chapter.keyphrases)


def test_topic_bounds() -> None:
    source = lecture()
    # A floor on the length merges what is shorter: the 8 sentences of a topic last 109 s.
    longer = find_topics(source.segments, source.duration, Bounds(min_seconds=120.0)).chapters
    assert all(c.end - c.start >= 120.0 for c in longer) and len(longer) == 2
    # A ceiling splits a topic at its next deepest shift.
    shorter = find_topics(source.segments, source.duration, Bounds(max_seconds=60.0)).chapters
    assert all(c.end - c.start <= 60.0 for c in shorter) and len(shorter) > 3
    assert {0.0, source.segments[8].start, source.segments[16].start} <= {c.start for c in shorter}
    # One subject, long enough for three chapters: three (YouTube's fewest), each ≥ 10 s.
    pasta = Source(source.segments[:8], duration=104.0)
    forced = find_topics(pasta.segments, pasta.duration)
    assert len(forced.chapters) == 3 and forced.distinct == 1
    assert all(c.end - c.start >= 10.0 for c in forced.chapters)
    alone = find_topics(pasta.segments, pasta.duration, Bounds(min_segments=1))
    assert len(alone.chapters) == 1 and alone.chapters[0].end == 104.0
    # Too short for two chapters of the shortest length: one.
    assert len(find_topics(JFK.segments, JFK.duration).chapters) == 1
    assert find_topics((), 30.0).chapters == ()


def test_extractive_is_deterministic_and_reads_like_a_person_wrote_it() -> None:
    source = lecture()
    first = extractive.generate(source, max_tags=5)
    assert first == extractive.generate(source, max_tags=5)
    # The title names the topics, whole phrases, none of them a sentence of the transcript.
    assert first.title == "Pasta, Inner Tube and Telescope"
    assert 0 < len(first.tags) <= 5 and len(set(first.tags)) == len(first.tags)
    said = " ".join(t for x in TOPICS for t in x)
    assert all(t in said.lower() for t in first.tags)
    # The abstract: one sentence of each topic, in order.
    parts = [p.strip(" .") for p in first.summary.split(". ")]
    assert len(parts) == 3 and all(
        any(p in sentence for sentence in topic) for p, topic in zip(parts, TOPICS, strict=True)
    )
    assert first.description.startswith(first.summary)
    assert "00:00 Pasta" in first.description and "01:49 Inner Tube" in first.description
    assert "Chapters:" in first.show_notes and first.chapters[1].summary in first.show_notes

    jfk = extractive.generate(JFK, max_tags=10)
    assert jfk.title == "Country and Americans"  # IMG_0042 says nothing; nor does one sentence
    assert "country" in jfk.keywords and len(jfk.chapters) == 1 and jfk.chapters[0].end == 11.0

    silent = Source((), duration=125.0, filename="VID_20240101.mp4", width=1280, height=720)
    empty = extractive.generate(silent, max_tags=10)
    assert empty.title == "Video (02:05)" and empty.chapters == () and empty.tags == ()
    assert empty.description == "A video (02:05 long, 1280x720) with no transcribed speech."
    named = extractive.generate(Source((), 30.0, filename="Team offsite - day two.mkv"), 10)
    assert named.title == "Team Offsite \u2013 Day Two"
    assert named.tags == ("team", "offsite", "day", "two")
    # With speech, a file name is never the title.
    assert extractive.generate(lecture(), 5).title == first.title


def test_titles_are_never_a_cut_sentence_or_a_camera_name() -> None:
    long_sentence = (
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this "
        "software and associated documentation files to deal in the software without restriction"
    )
    source = Source((TimedText(0.0, 20.0, long_sentence + ".", 0),), 20.0, filename="IMG_4411.MOV")
    metadata = extractive.generate(source, 10)
    assert not long_sentence.lower().startswith(metadata.title.lower().rstrip("…"))
    assert "IMG" not in metadata.title and "…" not in metadata.title
    assert metadata.title == "Software and Documentation"


# --- schemas -----------------------------------------------------------------------------------


def test_schema_fill_writes_what_is_known_and_lists_the_rest() -> None:
    schema = parse_schema(json.dumps(SCHEMA))
    metadata = extractive.generate(lecture(), max_tags=10)
    from services.metadata.generator import known_values

    filled = fill_schema(schema, known_values(metadata, lecture()))
    document = filled.document
    assert document["headline"] == metadata.title[:60]
    assert document["summary"] == metadata.summary
    assert document["topics"] == list(metadata.keywords[:5])
    assert document["chapters"][0] == {"time": "00:00", "heading": metadata.chapters[0].title}
    assert document["duration_seconds"] == lecture().duration
    assert document["language"] == "en" and document["notes"] == metadata.show_notes
    # Nothing says what the rating, the audience or explicitness is: not invented (no rating 1,
    # no first enum value, no false), absent and listed; rating is required, so incomplete.
    assert "rating" not in document and "explicit" not in document
    assert "audience" not in document
    chapters = [f"/chapters/{i}/at_seconds" for i in range(len(document["chapters"]))]
    assert filled.unfilled == (*chapters, "/rating", "/audience", "/explicit")
    assert filled.complete is False
    jsonschema.validate(document, SCHEMA_BUT_RATING)
    with pytest.raises(jsonschema.ValidationError, match="'rating' is a required property"):
        jsonschema.validate(document, SCHEMA)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        json.dumps({"type": "object", "properties": {"a": {"type": "strin"}}}),
        json.dumps({"type": "object", "properties": {"a": {"$ref": "https://evil.example/s"}}}),
        json.dumps({"type": "object", "minProperties": -1}),
        json.dumps({"description": "x" * 70_000}),
    ],
)
def test_invalid_schemas(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_schema(text)
    assert caught.value.reason == "INVALID_JSON_SCHEMA"


def test_unfillable_schema_gives_a_partial_document() -> None:
    schema = {
        "type": "object",
        "required": ["code", "title"],
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "title": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
    }
    # Nothing matches "code"; the title does not fit the pattern: both left out, not an error.
    assert fill_schema(schema, {}) == Filled({}, ("/code", "/title"), False)
    assert fill_schema(schema, {"title": "How to Three"}) == Filled({}, ("/code", "/title"), False)
    assert fill_schema(schema, {"title": "HOW"}) == Filled({"title": "HOW"}, ("/code",), False)


# --- the core and gRPC -------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def settings(tmp_path: Path) -> MetadataSettings:
    return MetadataSettings(storage_dir=tmp_path / "objects")


async def test_core_artifacts_and_cache(
    store: LocalObjectStore, settings: MetadataSettings
) -> None:
    generator = build_generator(settings, store)
    options = MetadataOptions(json_schema=json.dumps(SCHEMA), prompt="for the catalogue")
    first = await generator.generate(lecture(), options, "jobs/m1")
    assert not first.cached and first.metadata.engine == "extractive"
    custom = json.loads(first.metadata.custom_json)
    jsonschema.validate(custom, SCHEMA_BUT_RATING)
    assert "rating" not in custom and "/rating" in first.metadata.unfilled
    assert first.metadata.custom_json_complete is False
    names = {a.name: a for a in first.artifacts}
    assert set(names) == {"metadata/metadata.json", "metadata/custom.json"}
    stored = b"".join([c async for c in store.read("jobs/m1/metadata/metadata.json")])
    document = json.loads(stored)
    assert document["title"] == first.metadata.title
    chapter = first.metadata.chapters[0]
    assert document["chapters"][0] == {
        "start_seconds": 0.0,
        "end_seconds": chapter.end,
        "title": chapter.title,
        "summary": chapter.summary,
        "keyphrases": list(chapter.keyphrases),
        "segment_ids": list(range(8)),
        "id": "chapter-1",
    }
    info = await store.stat("jobs/m1/metadata/custom.json")
    assert info.sha256 == names["metadata/custom.json"].sha256

    again = await generator.generate(lecture(), options, "jobs/m2/")
    assert again.cached and again.metadata == first.metadata
    assert await store.exists("jobs/m2/metadata/custom.json")
    other = await generator.generate(lecture(), MetadataOptions(max_tags=3), "jobs/m3/")
    assert not other.cached and len(other.metadata.tags) == 3
    assert [a.name for a in other.artifacts] == ["metadata/metadata.json"]

    with pytest.raises(FailedPrecondition, match="gemini is not configured"):
        await generator.generate(lecture(), MetadataOptions(engine=Engine.GEMINI), "jobs/x/")
    with pytest.raises(InvalidArgument):
        await generator.generate(lecture(), MetadataOptions(max_tags=-1), "jobs/x/")


def _transcript(source: Source) -> media_pb2.Transcript:
    return media_pb2.Transcript(
        language=source.language,
        segments=[
            media_pb2.Segment(id=i, start_seconds=s.start, end_seconds=s.end, text=s.text)
            for i, s in enumerate(source.segments)
        ],
        engine="faster-whisper",
        model="tiny.en",
    )


def _media(seconds: float) -> media_pb2.MediaInfo:
    duration = media_pb2.MediaInfo().duration
    duration.FromNanoseconds(int(seconds * 1e9))
    return media_pb2.MediaInfo(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=duration,
        video_streams=[media_pb2.VideoStream(codec="h264", width=1280, height=720)],
    )


@pytest.fixture
async def stub(
    settings: MetadataSettings, store: LocalObjectStore
) -> AsyncIterator[metadata_service_pb2_grpc.MetadataServiceStub]:
    spec = build_spec(settings, store)
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield metadata_service_pb2_grpc.MetadataServiceStub(channel)
    finally:
        await server.stop(0)


async def test_grpc(stub: metadata_service_pb2_grpc.MetadataServiceStub) -> None:
    source = lecture()
    request = metadata_service_pb2.GenerateMetadataRequest(
        transcript=_transcript(source),
        media_info=_media(source.duration),
        spec=pipeline_pb2.MetadataSpec(json_schema=json.dumps(SCHEMA), max_tags=4),
        output_prefix="jobs/g/",
        filename="how_to_three.mp4",
    )
    response = await stub.GenerateMetadata(request, timeout=30)
    metadata = response.metadata
    assert not response.cached and metadata.engine == "extractive"
    assert metadata.title == "Pasta, Inner Tube and Telescope" and 0 < len(metadata.tags) <= 4
    starts = [c.start_seconds for c in metadata.chapters]
    assert starts == [0.0, source.segments[8].start, source.segments[16].start]
    assert [c.end_seconds for c in metadata.chapters] == [*starts[1:], source.duration]
    assert list(metadata.chapters[1].segment_ids) == list(range(8, 16))
    assert all(c.summary and c.keyphrases for c in metadata.chapters)
    custom = json.loads(metadata.custom_json)
    jsonschema.validate(custom, SCHEMA_BUT_RATING)
    assert "rating" not in custom and "/rating" in metadata.unfilled
    assert "/explicit" in metadata.unfilled and not metadata.custom_json_complete
    kinds = {a.name: a.kind for a in response.artifacts}
    assert kinds == {
        "metadata/metadata.json": media_pb2.ARTIFACT_KIND_METADATA_JSON,
        "metadata/custom.json": media_pb2.ARTIFACT_KIND_CUSTOM_METADATA_JSON,
    }
    assert all(
        a.stage == "metadata" and a.object.key.startswith("jobs/g/") for a in response.artifacts
    )
    again = await stub.GenerateMetadata(request, timeout=30)
    assert again.cached and again.metadata == metadata

    empty = await stub.GenerateMetadata(
        metadata_service_pb2.GenerateMetadataRequest(
            media_info=_media(42.0), output_prefix="jobs/e/", filename="Quarterly review.mp4"
        ),
        timeout=30,
    )
    assert empty.metadata.title == "Quarterly Review" and not empty.metadata.chapters

    async def status(**changes: Any) -> tuple[grpc.StatusCode, str]:
        bad = metadata_service_pb2.GenerateMetadataRequest()
        bad.CopyFrom(request)
        for name, value in changes.items():
            if name == "spec":
                bad.spec.CopyFrom(value)
            else:
                setattr(bad, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateMetadata(bad, timeout=30)
        info = error_info(caught.value)
        return caught.value.code(), info.reason if info else ""

    assert await status(spec=pipeline_pb2.MetadataSpec(json_schema="{not json")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_JSON_SCHEMA",
    )
    assert await status(
        spec=pipeline_pb2.MetadataSpec(engine=pipeline_pb2.METADATA_ENGINE_GEMINI)
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "GEMINI_NOT_CONFIGURED")
    assert await status(output_prefix="../x/") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_OUTPUT_PREFIX",
    )
    for bounds in (
        {"min_chapter_duration": duration_message(0.0)},
        {"min_chapter_duration": duration_message(-5.0)},
        {"min_chapter_duration": duration_message(7200.0)},
        {"max_chapter_duration": duration_message(5.0)},  # under the 10 s minimum
        {"max_chapter_duration": duration_message(-1.0)},
        {"min_chapters": 0},
        {"min_chapters": 51},
    ):
        assert await status(spec=pipeline_pb2.MetadataSpec(**bounds)) == (  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_CHAPTER_BOUNDS",
        ), bounds
    # Bounds that are fine are honoured over the wire.
    bounded = metadata_service_pb2.GenerateMetadataRequest()
    bounded.CopyFrom(request)
    bounded.spec.CopyFrom(
        pipeline_pb2.MetadataSpec(max_chapter_duration=duration_message(60.0), min_chapters=1)
    )
    split = (await stub.GenerateMetadata(bounded, timeout=30)).metadata.chapters
    assert len(split) > 3 and all(c.end_seconds - c.start_seconds <= 60.0 for c in split)


# --- Gemini through the SDK, recorded responses ------------------------------------------------


class Recorded:
    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        status, name = self.answers.pop(0)
        body = (RECORDINGS / name).read_bytes()
        return httpx2.Response(status, content=body, headers={"content-type": "application/json"})


def gemini_generator(
    store: LocalObjectStore, settings: MetadataSettings, recorded: Recorded
) -> MetadataGenerator:
    async def no_sleep(delay: float) -> None:
        pass

    config = GeminiConfig(
        api_key="test-key", max_attempts=2, transport=httpx2.MockTransport(recorded)
    )
    return build_generator(settings, store, GeminiClient(config, sleep=no_sleep))


async def test_gemini_request_and_response(
    store: LocalObjectStore, settings: MetadataSettings
) -> None:
    recorded = Recorded(
        (200, "metadata_bad_chapters.json"),
        (200, "metadata_ok.json"),
        (200, "custom_invalid.json"),
        (200, "custom_ok.json"),
    )
    generator = gemini_generator(store, settings, recorded)
    schema = {
        "type": "object",
        "required": ["headline", "topics"],
        "properties": {
            "headline": {"type": "string"},
            "topics": {"type": "array", "items": {"type": "string"}},
            "minutes": {"type": "integer"},
        },
    }
    options = MetadataOptions(max_tags=3, json_schema=json.dumps(schema), prompt="For kids.")
    outcome = await generator.generate(lecture(), options, "jobs/gem/")
    metadata = outcome.metadata
    assert (metadata.engine, metadata.model) == ("gemini", "gemini-2.5-flash")
    assert metadata.title == "Pasta, Bicycle Repair and Backyard Telescopes"
    # The first answer's chapters were out of order and past the end: refused, asked again.
    # Then tidied: tags de-duplicated, lower-case, capped; chapters contiguous, with the
    # transcript segments they cover.
    assert metadata.tags == ("pasta", "bicycle repair", "telescopes")
    assert [(c.start, c.end, c.title, c.id) for c in metadata.chapters] == [
        (0.0, 109.0, "Fresh pasta", "chapter-1"),
        (109.0, 218.0, "Fixing a puncture", "chapter-2"),
        (218.0, 327.0, "Choosing a telescope", "chapter-3"),
    ]
    assert metadata.chapters[1].segment_ids == tuple(range(8, 16))
    assert metadata.chapters[1].keyphrases == ("inner tube", "patch glue")
    assert metadata.chapters[2].summary == "Aperture matters more than magnification."
    # The first custom answer did not validate against the schema: asked again.
    custom = json.loads(metadata.custom_json)
    assert custom["headline"] == "Three skills in five minutes"
    jsonschema.validate(custom, schema)
    assert metadata.unfilled == () and metadata.custom_json_complete is True
    assert len(recorded.requests) == 4

    first = json.loads(recorded.requests[0].content)
    prompt = first["contents"][0]["parts"][0]["text"]
    assert "up to 3 short lower-case tags" in prompt
    assert (
        "[00:13] Pour the flour onto the board" in prompt
        and "File name: how_to_three.mp4" in prompt
    )
    generation = first["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert "chapters" in json.dumps(generation["responseSchema"])
    last = json.loads(recorded.requests[-1].content)
    assert "For kids." in last["contents"][0]["parts"][0]["text"]
    assert last["generationConfig"]["responseJsonSchema"] == schema

    # Empty transcripts never reach Gemini.
    silent = await generator.generate(Source((), 10.0, filename="a.mp4"), MetadataOptions(), "j/")
    assert silent.metadata.engine == "extractive" and len(recorded.requests) == 4


@pytest.mark.parametrize(
    ("answers", "error", "reason"),
    [
        ([(400, "error_api_key_invalid.json")], Unauthenticated, "GEMINI_UNAUTHENTICATED"),
        ([(429, "error_quota.json")], ResourceExhausted, "GEMINI_QUOTA_EXHAUSTED"),
        ([(503, "error_unavailable.json")] * 2, Unavailable, "GEMINI_UNAVAILABLE"),
        ([(200, "invalid_output.json")] * 2, Unavailable, "GEMINI_INVALID_OUTPUT"),
    ],
)
async def test_gemini_errors(
    store: LocalObjectStore,
    settings: MetadataSettings,
    answers: list[tuple[int, str]],
    error: type[Exception],
    reason: str,
) -> None:
    recorded = Recorded(*answers)
    generator = gemini_generator(store, settings, recorded)
    with pytest.raises(error) as caught:
        await generator.generate(lecture(), MetadataOptions(), "jobs/err/")
    assert getattr(caught.value, "reason", None) == reason
    assert recorded.answers == []


def test_gemini_output_that_does_not_validate_is_retryable_and_keeps_its_details_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parse = parse_as(GeneratedChapter, "a chapter")
    assert parse('{"start_seconds": 1.5, "title": "Intro"}') == GeneratedChapter(
        start_seconds=1.5, title="Intro"
    )
    for text in ('{"start_seconds": -1, "title": "Intro"}', "not json"):
        with pytest.raises(Unavailable) as caught:
            parse(text)
        assert caught.value.reason == "GEMINI_INVALID_OUTPUT"
        assert caught.value.message == "gemini returned a chapter that does not validate"
    assert "start_seconds" in caplog.text


async def test_gemini_error_reaches_the_caller_as_a_status(
    store: LocalObjectStore, settings: MetadataSettings
) -> None:
    recorded = Recorded((400, "error_api_key_invalid.json"))
    config = GeminiConfig(api_key="bad", transport=httpx2.MockTransport(recorded))
    spec = build_spec(settings, store, gemini=config)
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GenerateMetadata(
                    metadata_service_pb2.GenerateMetadataRequest(
                        transcript=_transcript(JFK), output_prefix="jobs/u/"
                    ),
                    timeout=30,
                )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_info(caught.value)
        assert info is not None and info.reason == "GEMINI_UNAUTHENTICATED"
    finally:
        await server.stop(0)
        assert spec.on_close is not None
        await spec.on_close()


@pytest.mark.skipif(
    not os.environ.get("REELMILL_GEMINI_API_KEY"), reason="REELMILL_GEMINI_API_KEY is not set"
)
async def test_gemini_live(store: LocalObjectStore, tmp_path: Path) -> None:
    settings = MetadataSettings(storage_dir=tmp_path / "objects")  # reads the key
    spec = build_spec(settings, store)
    server = build_server(settings)
    spec.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
            source = lecture()
            response = await stub.GenerateMetadata(
                metadata_service_pb2.GenerateMetadataRequest(
                    transcript=_transcript(source),
                    media_info=_media(source.duration),
                    spec=pipeline_pb2.MetadataSpec(
                        engine=pipeline_pb2.METADATA_ENGINE_GEMINI, json_schema=json.dumps(SCHEMA)
                    ),
                    output_prefix="jobs/live/",
                ),
                timeout=300,
            )
        metadata = response.metadata
        assert metadata.engine == "gemini" and metadata.title
        jsonschema.validate(json.loads(metadata.custom_json), SCHEMA)
        # Its chapters are topic segments: contiguous, covering the talk, one per topic (±20 s).
        chapters = metadata.chapters
        assert chapters and chapters[0].start_seconds == 0.0
        assert all(a.end_seconds == b.start_seconds for a, b in itertools.pairwise(chapters))
        assert chapters[-1].end_seconds == source.duration
        topic_starts = [source.segments[8].start, source.segments[16].start]
        assert all(
            any(abs(c.start_seconds - t) <= 20 for c in chapters[1:]) for t in topic_starts
        ), [c.start_seconds for c in chapters]
    finally:
        await server.stop(0)
        assert spec.on_close is not None
        await spec.on_close()
