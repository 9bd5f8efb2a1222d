"""The caller's knowledge points (seed 002): mapped to time ranges, checked, ordered, and made
the job's chapters instead of the topics found.

A point names its place in one of three ways:

- a time range, which must lie inside the video (end after start);
- transcript segment ids, first to last (inclusive), which must exist: the range runs from the
  first one's start to the last one's end;
- a text query, matched against the transcript's sentences: a sentence holding every content
  word of the query (stemmed, in any order) matches; with none, a sentence holding at least half
  of them, the one nearest in meaning to the query (e5 embeddings) first. The range is that
  sentence, widened to its neighbours that match as well as it does. A query with no such
  sentence is refused: a point is never placed where nothing was said about it.

Points are then ordered by start (ties by the order given) and their overlaps settled by the
policy: refused (the default, naming both points), merged into one, trimmed (each starts where
the one before it ends; a point left empty is refused), or allowed. Every refusal is
INVALID_ARGUMENT with reason INVALID_KNOWLEDGE_POINT, KNOWLEDGE_POINT_NOT_FOUND or
KNOWLEDGE_POINTS_OVERLAP and a message that names the point (its index and id).

A point's chapter takes its title and description when given; what is missing is found from
what is said inside its range, as the topics' are (``topics.describe``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from runtime.errors import InvalidArgument
from services.metadata.model import Chapter, KnowledgePoint, Overlap
from services.metadata.text import clean, is_content, stem, words
from services.metadata.topics import Speech, describe

MAX_KNOWLEDGE_POINTS = 500
MAX_QUERY_CHARS = 500
MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 5000
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: A time a little past the duration is the same end (a container's rounding).
END_SLACK_SECONDS = 0.05
#: Neighbours join a query's span while they match within this much of the best one's meaning.
QUERY_SPREAD = 0.02


@dataclass(frozen=True)
class _Placed:
    index: int
    point: KnowledgePoint
    start: float
    end: float


def _name(index: int, point: KnowledgePoint) -> str:
    return f"knowledge_points[{index}] ({point.id!r})" if point.id else f"knowledge_points[{index}]"


def _bad(index: int, point: KnowledgePoint, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{_name(index, point)}: {problem}", reason="INVALID_KNOWLEDGE_POINT")


def check(points: Sequence[KnowledgePoint]) -> None:
    """What can be checked without the transcript: count, ids, lengths, one place each."""
    if len(points) > MAX_KNOWLEDGE_POINTS:
        raise InvalidArgument(
            f"at most {MAX_KNOWLEDGE_POINTS} knowledge points, got {len(points)}",
            reason="INVALID_KNOWLEDGE_POINT",
        )
    seen: dict[str, int] = {}
    for index, point in enumerate(points):
        if not _ID.match(point.id):
            raise _bad(index, point, "id must be 1 to 64 of A-Z a-z 0-9 . _ -")
        if point.id in seen:
            raise _bad(index, point, f"id is also the one of knowledge_points[{seen[point.id]}]")
        seen[point.id] = index
        if len(point.title) > MAX_TITLE_CHARS:
            raise _bad(index, point, f"title is longer than {MAX_TITLE_CHARS} characters")
        if len(point.description) > MAX_DESCRIPTION_CHARS:
            raise _bad(
                index, point, f"description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )
        places = sum((point.range is not None, point.segments is not None, bool(point.query)))
        if places != 1:
            raise _bad(index, point, "give exactly one of range, segments and query")
        if len(point.query) > MAX_QUERY_CHARS:
            raise _bad(index, point, f"query is longer than {MAX_QUERY_CHARS} characters")


def _content(text: str) -> set[str]:
    return {stem(w) for w in words(text) if is_content(w)}


def _place_query(index: int, point: KnowledgePoint, speech: Speech | None) -> tuple[float, float]:
    wanted = _content(point.query)
    if not wanted:
        raise _bad(index, point, "query has no word to look for (only short or common words)")
    if speech is None:
        raise InvalidArgument(
            f"{_name(index, point)}: a query needs a transcript, and there is no speech",
            reason="KNOWLEDGE_POINT_NOT_FOUND",
        )
    found = speech.found
    shares = [len(wanted & _content(s.text)) / len(wanted) for s in found]
    best_share = max(shares)
    if best_share < 0.5:
        raise InvalidArgument(
            f"{_name(index, point)}: nothing in the transcript matches the query {point.query!r}",
            reason="KNOWLEDGE_POINT_NOT_FOUND",
        )
    embed_query = getattr(speech.embed, "query", speech.embed)  # e5 embeds queries apart
    query = np.asarray(embed_query([point.query]), dtype=np.float32).reshape(-1)
    query = query / (np.linalg.norm(query) or 1.0)
    meaning = speech.unit @ query
    candidates = [i for i, share in enumerate(shares) if share == best_share]
    best = max(candidates, key=lambda i: (float(meaning[i]), -i))

    def joins(i: int) -> bool:
        return shares[i] >= best_share and float(meaning[i]) >= float(meaning[best]) - QUERY_SPREAD

    first = last = best
    while first > 0 and joins(first - 1):
        first -= 1
    while last < len(found) - 1 and joins(last + 1):
        last += 1
    return found[first].start, found[last].end


def _place(
    index: int,
    point: KnowledgePoint,
    speech: Speech | None,
    segments: dict[int, tuple[float, float]],
    duration: float,
) -> tuple[float, float]:
    if point.range is not None:
        start, end = point.range
        if start < 0:
            raise _bad(index, point, f"range starts before 0 ({start:g} s)")
        if end <= start:
            raise _bad(index, point, f"range ends ({end:g} s) before it starts ({start:g} s)")
        if duration and end > duration + END_SLACK_SECONDS:
            raise _bad(index, point, f"range ends at {end:g} s, after the video ({duration:g} s)")
        return start, min(end, duration) if duration else end
    if point.segments is not None:
        first, last = point.segments
        if last < first:
            raise _bad(index, point, f"segments run backwards ({first} to {last})")
        missing = [i for i in (first, last) if i not in segments]
        if missing:
            raise InvalidArgument(
                f"{_name(index, point)}: the transcript has no segment {missing[0]}",
                reason="KNOWLEDGE_POINT_NOT_FOUND",
            )
        return segments[first][0], max(segments[last][1], segments[first][0])
    return _place_query(index, point, speech)


def _settle(placed: list[_Placed], policy: Overlap) -> list[_Placed]:
    settled: list[_Placed] = []
    for item in sorted(placed, key=lambda p: (p.start, p.index)):
        before = settled[-1] if settled else None
        if before is None or item.start >= before.end or policy is Overlap.ALLOW:
            settled.append(item)
            continue
        if policy is Overlap.REFUSE:
            raise InvalidArgument(
                f"{_name(item.index, item.point)} ({item.start:g}-{item.end:g} s) overlaps"
                f" {_name(before.index, before.point)} ({before.start:g}-{before.end:g} s);"
                " set overlap_policy to merge, trim or allow them",
                reason="KNOWLEDGE_POINTS_OVERLAP",
            )
        if policy is Overlap.MERGE:
            joined = KnowledgePoint(
                id=f"{before.point.id}+{item.point.id}",
                title=" + ".join(t for t in (before.point.title, item.point.title) if t),
                description=" ".join(
                    d for d in (before.point.description, item.point.description) if d
                ),
            )
            settled[-1] = _Placed(before.index, joined, before.start, max(before.end, item.end))
            continue
        if item.end <= before.end:  # TRIM, and nothing is left of it
            raise InvalidArgument(
                f"{_name(item.index, item.point)} lies inside"
                f" {_name(before.index, before.point)}: trimming leaves nothing of it",
                reason="KNOWLEDGE_POINTS_OVERLAP",
            )
        settled.append(replace(item, start=before.end))
    return settled


def resolve(
    points: Sequence[KnowledgePoint],
    policy: Overlap,
    speech: Speech | None,
    segments: dict[int, tuple[float, float]],
    duration: float,
) -> list[Chapter]:
    """The points as chapters, ordered by start. ``segments`` maps transcript segment ids to
    their (start, end); ``speech`` is None when nothing was said (then only ranges work)."""
    check(points)
    placed = [
        _Placed(index, point, *_place(index, point, speech, segments, duration))
        for index, point in enumerate(points)
    ]
    settled = _settle(placed, policy)
    spans = [(round(p.start, 3), round(p.end, 3)) for p in settled]
    if speech is not None:
        described = describe(speech, spans)
    else:
        described = [Chapter(start, "", end) for start, end in spans]
    chapters = []
    for item, chapter in zip(settled, described, strict=True):
        point = item.point
        chapters.append(
            replace(
                chapter,
                id=point.id,
                title=clean(point.title) or chapter.title or point.id,
                summary=point.description.strip() or chapter.summary,
            )
        )
    return chapters
