"""The caller's knowledge points (seed 002): placed by range, transcript segments or a query,
checked, ordered, overlaps settled by the declared policy, and made the chapters; bad ones are
refused with a reason and a message that names the point."""

from __future__ import annotations

import grpc
import pytest

from reelmill.v1 import metadata_service_pb2, metadata_service_pb2_grpc, pipeline_pb2
from runtime.durations import duration_message
from runtime.errors import InvalidArgument, error_info
from services.metadata import extractive
from services.metadata.knowledge import MAX_KNOWLEDGE_POINTS, resolve
from services.metadata.model import KnowledgePoint, Overlap
from services.metadata.topics import prepare
from tests.test_metadata import TOPICS, _media, _transcript, lecture, settings, store, stub

__all__ = ["settings", "store", "stub"]  # fixtures

SOURCE = lecture()
# Pasta 0-109 s (segments 0-7), puncture 109-218 s (8-15), telescope 218-327 s (16-23).
SEGMENTS = {s.id: (s.start, s.end) for s in SOURCE.segments}


def chapters(*points: KnowledgePoint, policy: Overlap = Overlap.REFUSE) -> list:
    speech = prepare(SOURCE.segments, SOURCE.duration)
    return resolve(points, policy, speech, SEGMENTS, SOURCE.duration)


def refused(*points: KnowledgePoint, policy: Overlap = Overlap.REFUSE) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        chapters(*points, policy=policy)
    return caught.value


def test_each_way_to_place_a_point() -> None:
    found = chapters(
        KnowledgePoint("kp-telescope", range=(218.0, 327.0)),
        KnowledgePoint("kp-pasta", title="Fresh pasta", segments=(0, 7), description="Dough."),
        KnowledgePoint("kp-patch", query="patch glue on the inner tube"),
    )
    # Ordered by start, whatever the order given.
    assert [c.id for c in found] == ["kp-pasta", "kp-patch", "kp-telescope"]
    pasta, patch, telescope = found
    assert (pasta.start, pasta.end) == (0.0, SEGMENTS[7][1]) and pasta.segment_ids == tuple(
        range(8)
    )
    assert pasta.title == "Fresh pasta" and pasta.summary == "Dough."
    # The query lands on the sentences that say it: the patch and its glue.
    patched = [s for s in SOURCE.segments if patch.start <= s.start < patch.end]
    assert patched and all("patch" in s.text for s in patched)
    assert set(patch.segment_ids) <= {12, 13}
    # No title given: found from what is said inside, as the topics' are.
    assert "telescope" in telescope.title.lower() and telescope.summary
    assert all(sentence in " ".join(TOPICS[2]) for sentence in telescope.summary.split(". ")[:1])
    assert telescope.segment_ids == tuple(range(16, 24))


def test_overlap_policies() -> None:
    a = KnowledgePoint("a", title="A", range=(0.0, 120.0))
    b = KnowledgePoint("b", title="B", range=(100.0, 200.0))
    error = refused(a, b)
    assert error.reason == "KNOWLEDGE_POINTS_OVERLAP"
    assert "knowledge_points[1] ('b')" in str(error) and "knowledge_points[0] ('a')" in str(error)
    merged = chapters(a, b, policy=Overlap.MERGE)
    assert [(c.id, c.title, c.start, c.end) for c in merged] == [("a+b", "A + B", 0.0, 200.0)]
    trimmed = chapters(a, b, policy=Overlap.TRIM)
    assert [(c.id, c.start, c.end) for c in trimmed] == [("a", 0.0, 120.0), ("b", 120.0, 200.0)]
    inside = KnowledgePoint("c", range=(10.0, 50.0))
    assert refused(a, inside, policy=Overlap.TRIM).reason == "KNOWLEDGE_POINTS_OVERLAP"
    allowed = chapters(a, b, policy=Overlap.ALLOW)
    assert [(c.start, c.end) for c in allowed] == [(0.0, 120.0), (100.0, 200.0)]


@pytest.mark.parametrize(
    ("point", "reason", "text"),
    [
        (KnowledgePoint("bad id", range=(0, 1)), "INVALID_KNOWLEDGE_POINT", "id must be"),
        (KnowledgePoint("", range=(0, 1)), "INVALID_KNOWLEDGE_POINT", "knowledge_points[1]"),
        (KnowledgePoint("x"), "INVALID_KNOWLEDGE_POINT", "exactly one of"),
        (
            KnowledgePoint("x", range=(0, 1), query="pasta"),
            "INVALID_KNOWLEDGE_POINT",
            "exactly one of",
        ),
        (KnowledgePoint("x", range=(-1, 5)), "INVALID_KNOWLEDGE_POINT", "before 0"),
        (KnowledgePoint("x", range=(50, 40)), "INVALID_KNOWLEDGE_POINT", "before it starts"),
        (KnowledgePoint("x", range=(300, 400)), "INVALID_KNOWLEDGE_POINT", "after the video"),
        (KnowledgePoint("x", segments=(5, 2)), "INVALID_KNOWLEDGE_POINT", "backwards"),
        (KnowledgePoint("x", segments=(20, 99)), "KNOWLEDGE_POINT_NOT_FOUND", "no segment 99"),
        (KnowledgePoint("x", query="the and of"), "INVALID_KNOWLEDGE_POINT", "no word"),
        (
            KnowledgePoint("x", query="quantum chromodynamics"),
            "KNOWLEDGE_POINT_NOT_FOUND",
            "nothing in the transcript",
        ),
        (KnowledgePoint("kp-1", range=(0, 1)), "INVALID_KNOWLEDGE_POINT", "also the one of"),
        (KnowledgePoint("x", title="t" * 201, range=(0, 1)), "INVALID_KNOWLEDGE_POINT", "title"),
    ],
)
def test_bad_points_are_refused_by_name(point: KnowledgePoint, reason: str, text: str) -> None:
    error = refused(KnowledgePoint("kp-1", range=(0.0, 10.0)), point)
    assert error.reason == reason and text in str(error), str(error)
    assert "knowledge_points[1]" in str(error)


def test_too_many_points_and_no_speech() -> None:
    many = [KnowledgePoint(f"k{i}", range=(i, i + 0.5)) for i in range(MAX_KNOWLEDGE_POINTS + 1)]
    assert refused(*many).reason == "INVALID_KNOWLEDGE_POINT"
    # Without speech, ranges still work (titled by their id); a query cannot be placed.
    silent = resolve([KnowledgePoint("intro", range=(0, 30))], Overlap.REFUSE, None, {}, 60.0)
    assert [(c.id, c.title, c.start, c.end) for c in silent] == [("intro", "intro", 0.0, 30.0)]
    with pytest.raises(InvalidArgument) as caught:
        resolve([KnowledgePoint("q", query="pasta dough")], Overlap.REFUSE, None, {}, 60.0)
    assert caught.value.reason == "KNOWLEDGE_POINT_NOT_FOUND"


def test_metadata_uses_the_points_as_its_chapters() -> None:
    points = (
        KnowledgePoint("kp-1", title="Making pasta", segments=(0, 7)),
        KnowledgePoint("kp-2", title="Fixing a puncture", segments=(8, 15)),
    )
    metadata = extractive.generate(SOURCE, 10, knowledge_points=points)
    assert [(c.id, c.title) for c in metadata.chapters] == [
        ("kp-1", "Making pasta"),
        ("kp-2", "Fixing a puncture"),
    ]
    assert metadata.title == "Making pasta and Fixing a puncture"
    assert "00:00 Making pasta" in metadata.description
    assert "01:49 Fixing a puncture" in metadata.description


async def test_points_over_grpc(stub: metadata_service_pb2_grpc.MetadataServiceStub) -> None:
    spec = pipeline_pb2.MetadataSpec(
        knowledge_points=[
            pipeline_pb2.KnowledgePoint(
                id="kp-scope",
                range=pipeline_pb2.TimeRange(
                    start=duration_message(218.0), end=duration_message(327.0)
                ),
            ),
            pipeline_pb2.KnowledgePoint(id="kp-tube", query="inner tube puncture"),
        ]
    )
    request = metadata_service_pb2.GenerateMetadataRequest(
        transcript=_transcript(SOURCE),
        media_info=_media(SOURCE.duration),
        spec=spec,
        output_prefix="jobs/kp/",
    )
    response = await stub.GenerateMetadata(request, timeout=60)
    got = response.metadata.chapters
    assert [c.id for c in got] == ["kp-tube", "kp-scope"]
    assert 109.0 <= got[0].start_seconds < got[0].end_seconds <= 218.0
    assert (got[1].start_seconds, got[1].end_seconds) == (218.0, 327.0)

    spec = request.spec  # the request holds its own copy
    spec.knowledge_points[1].query = "quantum chromodynamics"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateMetadata(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "KNOWLEDGE_POINT_NOT_FOUND"
    assert "knowledge_points[1] ('kp-tube')" in (caught.value.details() or "")
    spec.knowledge_points[1].query = "inner tube puncture"
    spec.overlap_policy = pipeline_pb2.OVERLAP_POLICY_MERGE
    spec.knowledge_points[0].range.start.CopyFrom(duration_message(150.0))
    merged = (await stub.GenerateMetadata(request, timeout=60)).metadata.chapters
    assert [c.id for c in merged] == ["kp-tube+kp-scope"]
