"""Keyphrases from a transcript, RAKE-style candidates with a frequency-and-spread score.

Candidates are runs of one to three content words (a stopword, punctuation or a sentence end
breaks a run). A word's weight grows with how often it occurs (log-damped), how many of the
transcript's parts it occurs in (a topic that runs through the video beats one repeated in a
single breath), and a little with its length (long words tend to be the rarer, specific ones).
A phrase scores the mean weight of its words times how often the whole phrase occurs, with a
bonus for multi-word phrases that recur (they name things). Ties break alphabetically, so the
result is a pure function of the text.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from services.metadata.text import is_content, stem, words

_BREAK = re.compile(r"[.!?;:,()\[\]\"“”—\u2013]+|\s-\s")
MAX_PHRASE_WORDS = 3


@dataclass(frozen=True)
class Keyphrase:
    phrase: str
    score: float
    count: int


def _runs(text: str) -> list[list[str]]:
    """Runs of content words between stopwords and punctuation."""
    runs: list[list[str]] = []
    for chunk in _BREAK.split(text):
        run: list[str] = []
        for word in words(chunk):
            if is_content(word):
                run.append(word)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    return runs


def _candidates(run: list[str]) -> list[tuple[str, ...]]:
    found = []
    for size in range(1, MAX_PHRASE_WORDS + 1):
        for start in range(len(run) - size + 1):
            found.append(tuple(run[start : start + size]))
    return found


def keyphrases(parts: Sequence[str], limit: int = 15) -> list[Keyphrase]:
    """The best ``limit`` keyphrases of a text given as ``parts`` (sentences or segments)."""
    word_count: Counter[str] = Counter()
    word_parts: defaultdict[str, set[int]] = defaultdict(set)
    phrase_count: Counter[tuple[str, ...]] = Counter()
    surface: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for index, part in enumerate(parts):
        for run in _runs(part):
            for word in run:
                word_count[stem(word)] += 1
                word_parts[stem(word)].add(index)
            for candidate in _candidates(run):
                key = tuple(stem(w) for w in candidate)
                phrase_count[key] += 1
                surface[key][" ".join(candidate)] += 1
    if not word_count:
        return []
    spread_base = max(len(parts), 1)

    def weight(word: str) -> float:
        spread = len(word_parts[word]) / spread_base
        return math.log1p(word_count[word]) * (1.0 + spread) * (1.0 + min(len(word), 12) / 12.0)

    # A multi-word phrase said once is just words next to each other.
    kept = {
        key: count
        for key, count in phrase_count.items()
        if len(set(key)) == len(key) and (len(key) == 1 or count >= 2)
    }
    # A phrase that only ever occurs inside a longer kept phrase adds nothing.
    subsumed = {
        part
        for longer, longer_count in kept.items()
        for part in _parts(longer)
        if part in kept and longer_count >= kept[part]
    }
    scored: list[Keyphrase] = []
    for key, count in kept.items():
        if key in subsumed:
            continue
        mean = sum(weight(w) for w in key) / len(key)
        bonus = 1.0 + 0.6 * (len(key) - 1) if count >= 2 else 1.0
        score = mean * math.log1p(count) * bonus
        # The most common written form, ties broken alphabetically.
        phrase = min(surface[key].items(), key=lambda item: (-item[1], item[0]))[0]
        scored.append(Keyphrase(phrase, round(score, 6), count))
    scored.sort(key=lambda k: (-k.score, k.phrase))
    return _without_overlaps(scored, limit)


def _parts(phrase: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The shorter phrases inside ``phrase``."""
    return [
        phrase[start : start + size]
        for size in range(1, len(phrase))
        for start in range(len(phrase) - size + 1)
    ]


def _without_overlaps(ranked: list[Keyphrase], limit: int) -> list[Keyphrase]:
    """Drops phrases whose words a better-ranked phrase already has."""
    chosen: list[Keyphrase] = []
    taken: list[set[str]] = []
    for candidate in ranked:
        mine = {stem(w) for w in candidate.phrase.lower().split()}
        if any(mine <= theirs for theirs in taken):
            continue
        chosen.append(candidate)
        taken.append(mine)
        if len(chosen) >= limit:
            break
    return chosen
