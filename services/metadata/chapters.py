"""Chapters from pauses and topic shifts.

Every gap between two transcript segments is a candidate boundary. Its score adds:

- topic shift, TextTiling-style: the cosine similarity of the content words in a window of
  segments before the gap and one after it, turned into a depth (how far it dips below the
  nearest peaks on each side); a low, deep valley means the talk moved on;
- a pause: a silence between the segments (a speaker taking a breath is ~0.5 s; a new section
  is often several seconds).

Boundaries are taken best-first while every chapter stays at least ``min_seconds`` long, up to a
number that grows with the duration. Each chapter is titled by its most characteristic
keyphrase (frequent in it, rare elsewhere), else its first words. The first chapter starts at 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from services.metadata.keywords import keyphrases
from services.metadata.model import Chapter, TimedText
from services.metadata.text import clean, is_content, stem, title_case, words

#: Videos shorter than this get a single chapter.
MIN_CHAPTERED_SECONDS = 90.0
#: Roughly one chapter per this many seconds, within [MIN_CHAPTERS, MAX_CHAPTERS].
SECONDS_PER_CHAPTER = 150.0
MIN_CHAPTERS = 3
MAX_CHAPTERS = 12
#: Shortest chapter, and the window on each side of a gap for the similarity.
MIN_CHAPTER_SECONDS = 30.0
WINDOW_SECONDS = 45.0
#: A pause this long or longer counts fully.
LONG_PAUSE_SECONDS = 3.0
PAUSE_WEIGHT = 0.35
TITLE_WORDS = 6


def _bag(segments: Sequence[TimedText]) -> Counter[str]:
    bag: Counter[str] = Counter()
    for segment in segments:
        bag.update(stem(w) for w in words(segment.text) if is_content(w))
    return bag


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(count * b[word] for word, count in a.items() if word in b)
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def _depths(similarities: list[float]) -> list[float]:
    depths = []
    for i, value in enumerate(similarities):
        left = max(similarities[: i + 1])
        right = max(similarities[i:])
        depths.append((left - value) + (right - value))
    return depths


def boundary_scores(segments: Sequence[TimedText]) -> list[float]:
    """A score per gap (between segment i and i+1): topic shift depth plus pause."""
    similarities = []
    pauses = []
    for i in range(len(segments) - 1):
        gap_time = segments[i + 1].start
        before = [s for s in segments[: i + 1] if s.end >= gap_time - WINDOW_SECONDS]
        after = [s for s in segments[i + 1 :] if s.start <= gap_time + WINDOW_SECONDS]
        similarities.append(_cosine(_bag(before), _bag(after)))
        pause = max(segments[i + 1].start - segments[i].end, 0.0)
        pauses.append(min(pause / LONG_PAUSE_SECONDS, 1.0))
    depths = _depths(similarities)
    return [depth + PAUSE_WEIGHT * pause for depth, pause in zip(depths, pauses, strict=True)]


def chapter_count(duration: float) -> int:
    return max(MIN_CHAPTERS, min(MAX_CHAPTERS, round(duration / SECONDS_PER_CHAPTER)))


def find_chapters(segments: Sequence[TimedText], duration: float) -> list[Chapter]:
    """Chapters sorted by start, the first at 0, every start inside ``duration``."""
    segments = [s for s in segments if clean(s.text)]
    if not segments or duration <= 0:
        return []
    if duration < MIN_CHAPTERED_SECONDS or len(segments) < 2 * MIN_CHAPTERS:
        return [Chapter(0.0, _title(segments, [segments], 0, set()))]
    scores = boundary_scores(segments)
    wanted = chapter_count(duration) - 1
    min_seconds = max(MIN_CHAPTER_SECONDS, duration / (2 * MAX_CHAPTERS))
    starts: list[float] = [0.0]
    cuts: list[int] = []
    for gap in sorted(range(len(scores)), key=lambda g: (-scores[g], g)):
        if len(cuts) >= wanted or scores[gap] <= 0:
            break
        start = segments[gap + 1].start
        if start >= duration - min_seconds:
            continue
        if all(abs(start - other) >= min_seconds for other in starts):
            starts.append(start)
            cuts.append(gap + 1)
    cuts.sort()
    groups = [list(segments[a:b]) for a, b in zip([0, *cuts], [*cuts, len(segments)], strict=True)]
    used: set[str] = set()
    chapters = []
    for index, group in enumerate(groups):
        start = 0.0 if index == 0 else round(group[0].start, 3)
        chapters.append(Chapter(start, _title(group, groups, index, used)))
    return chapters


def _title(
    group: Sequence[TimedText], groups: Sequence[Sequence[TimedText]], index: int, used: set[str]
) -> str:
    """The chapter's most characteristic keyphrase not used by an earlier chapter."""
    others = _bag([s for i, g in enumerate(groups) if i != index for s in g])
    ranked = keyphrases([s.text for s in group], limit=10)

    def distinctive(phrase: str) -> float:
        stems = [stem(w) for w in phrase.split()]
        elsewhere = sum(others[s] for s in stems) / len(stems)
        return math.log1p(len(groups)) / (1.0 + elsewhere) if len(groups) > 1 else 1.0

    best = sorted(ranked, key=lambda k: (-(k.score * (0.5 + distinctive(k.phrase))), k.phrase))
    for keyphrase in best:
        title = title_case(keyphrase.phrase)
        if title.lower() not in used:
            used.add(title.lower())
            return title
    first = clean(group[0].text).split()
    title = " ".join(first[:TITLE_WORDS]).rstrip(",;:.!?")
    return (title + ("…" if len(first) > TITLE_WORDS else "")) or f"Part {index + 1}"
