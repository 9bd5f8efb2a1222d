"""The offline metadata generator: no network, no model, deterministic.

- keywords: ``keywords.keyphrases`` over the transcript's sentences;
- tags: the keywords, lower-case, de-duplicated, at most ``max_tags``;
- summary: the top-ranked sentences (by the keyword weight they carry, a slight preference for
  early ones, and a penalty for very short or very long ones), restored to their order;
- title: the file name when it reads like one, else the best short sentence, else the top
  keyphrases;
- chapters: ``chapters.find_chapters`` (pauses and topic shifts);
- description and show notes: assembled from the above.

The text shown on screen (OCR) is read with the transcript: its lines join the sentences the
keyphrases are ranked over, so titles, slides and captions weigh in the tags; a video with no
speech takes its summary and title from them. An empty transcript and no on-screen text
(silence, music over pictures) still yields metadata, from the file name and media info.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

from services.metadata.chapters import find_chapters
from services.metadata.keywords import Keyphrase, keyphrases
from services.metadata.model import Chapter, Metadata, Source
from services.metadata.text import (
    Sentence,
    clean,
    clock,
    is_content,
    sentences,
    stem,
    title_case,
    words,
)

NAME = "extractive"
MODEL = "extractive-v1"
KEYWORDS = 15
MAX_TAG_CHARS = 30
SUMMARY_SENTENCES = 5
SUMMARY_CHARS = 700
#: How much overlap with already chosen sentences discounts a candidate (0 to 1).
DIVERSITY = 0.8
TITLE_MAX_WORDS = 12
TITLE_MAX_CHARS = 100
HEADLINE_WORDS = 9
_LEADING_FILLERS = {"and", "so", "well", "okay", "ok", "um", "uh", "now", "but", "right", "yeah"}
DESCRIPTION_CHARS = 1000
_GENERIC_NAMES = re.compile(
    r"^(video|audio|movie|clip|upload|source|untitled|recording|output|input|file|img|vid|"
    r"mov|dsc|pxl|gopr|screen ?recording|capture)?[\s\d_-]*$",
    re.IGNORECASE,
)
_HEXISH = re.compile(r"^[0-9a-f-]{8,}$", re.IGNORECASE)


def filename_title(filename: str) -> str:
    """A title made from a file name, or "" when the name says nothing ("IMG_0042.mp4")."""
    stem_name = PurePosixPath(filename.replace("\\", "/")).name
    if "." in stem_name:
        stem_name = stem_name.rsplit(".", 1)[0]
    spaced = stem_name.replace(" - ", " \u2013 ")
    spaced = clean(re.sub(r"[_.+]+|(?<=[a-z])(?=[A-Z])", " ", spaced))
    if not spaced or _GENERIC_NAMES.match(spaced) or _HEXISH.match(spaced.replace(" ", "")):
        return ""
    if sum(1 for w in words(spaced) if not w.isdigit()) < 2:
        return ""
    return title_case(spaced)[:TITLE_MAX_CHARS]


def _sentence_scores(found: list[Sentence], ranked: list[Keyphrase]) -> list[float]:
    weights: dict[str, float] = {}
    for keyphrase in ranked:
        for word in keyphrase.phrase.split():
            key = stem(word.lower())
            weights[key] = max(weights.get(key, 0.0), keyphrase.score)
    scores = []
    for sentence in found:
        content = [stem(w) for w in words(sentence.text) if is_content(w)]
        if not content:
            scores.append(0.0)
            continue
        carried = sum(weights.get(w, 0.0) for w in set(content))
        size = len(words(sentence.text))
        length = 1.0 if 6 <= size <= 40 else 0.5
        position = 1.0 + 0.3 / (1 + sentence.index)
        scores.append(carried / math.sqrt(len(content)) * length * position)
    return scores


def summarize(found: list[Sentence], ranked: list[Keyphrase]) -> list[Sentence]:
    """The best sentences, in their original order, within the length budget. Picked one at a
    time by score discounted by overlap with those already picked (maximal marginal relevance),
    so the summary covers the video rather than repeating its main topic."""
    if not found:
        return []
    scores = _sentence_scores(found, ranked)
    stems = [{stem(w) for w in words(s.text) if is_content(w)} for s in found]
    wanted = max(1, min(SUMMARY_SENTENCES, round(len(found) * 0.2)))
    chosen: list[int] = []
    size = 0
    candidates = set(range(len(found)))

    def overlap(i: int) -> float:
        return max(
            (len(stems[i] & stems[j]) / max(len(stems[i] | stems[j]), 1) for j in chosen),
            default=0.0,
        )

    while candidates and len(chosen) < wanted:
        best = min(candidates, key=lambda i: (-scores[i] * (1.0 - DIVERSITY * overlap(i)), i))
        candidates.discard(best)
        text = found[best].text
        if chosen and size + len(text) > SUMMARY_CHARS:
            continue
        chosen.append(best)
        size += len(text) + 1
    return [found[i] for i in sorted(chosen)]


def _title(source: Source, summary: list[Sentence], ranked: list[Keyphrase]) -> str:
    from_name = filename_title(source.filename)
    if from_name:
        return from_name
    for sentence in summary:
        size = len(words(sentence.text))
        if 3 <= size <= TITLE_MAX_WORDS:
            return headline(sentence.text)
    if summary:
        return headline(summary[0].text)
    if ranked:
        top = [title_case(k.phrase) for k in ranked[:2]]
        return " and ".join(top)[:TITLE_MAX_CHARS]
    return _media_title(source)


def headline(sentence: str) -> str:
    """A sentence as a title: leading fillers dropped, capitalised, cut after a few words."""
    parts = clean(sentence).split()
    while len(parts) > 3 and parts[0].lower().strip(",") in _LEADING_FILLERS:
        parts.pop(0)
    cut = len(parts) > TITLE_MAX_WORDS
    if cut:
        parts = parts[:HEADLINE_WORDS]
    text = " ".join(parts).rstrip(" .,;:!?")
    text = text[:1].upper() + text[1:]
    return (text + ("…" if cut else ""))[:TITLE_MAX_CHARS]


def _media_title(source: Source) -> str:
    kind = "Video" if source.has_video else "Audio"
    if source.duration > 0:
        return f"{kind} ({clock(source.duration)})"
    return f"Untitled {kind.lower()}"


def _media_sentence(source: Source) -> str:
    kind = "video" if source.has_video else "audio recording"
    facts = []
    if source.duration > 0:
        facts.append(clock(source.duration) + " long")
    if source.has_video and source.width and source.height:
        facts.append(f"{source.width}x{source.height}")
    detail = f" ({', '.join(facts)})" if facts else ""
    return f"A {kind}{detail} with no transcribed speech."


def tags_from(ranked: list[Keyphrase], max_tags: int) -> tuple[str, ...]:
    tags: list[str] = []
    seen: set[str] = set()
    for keyphrase in ranked:
        tag = keyphrase.phrase.lower().strip()
        key = " ".join(stem(w) for w in tag.split())
        if not tag or len(tag) > MAX_TAG_CHARS or key in seen:
            continue
        seen.add(key)
        tags.append(tag)
        if len(tags) >= max_tags:
            break
    return tuple(tags)


def show_notes(summary: str, chapters: list[Chapter], keywords: tuple[str, ...]) -> str:
    lines = [summary] if summary else []
    if chapters:
        lines += ["", "Chapters:"] if lines else ["Chapters:"]
        lines += [f"{clock(c.start)} {c.title}" for c in chapters]
    if keywords:
        lines += ["", "Topics: " + ", ".join(keywords)]
    return "\n".join(lines).strip()


def screen_sentences(source: Source) -> list[Sentence]:
    """The on-screen lines as sentences (each line one, as a slide or caption reads)."""
    return [
        Sentence(index, line.start, line.end, clean(line.text))
        for index, line in enumerate(line for line in source.on_screen if clean(line.text))
    ]


def generate(source: Source, max_tags: int) -> Metadata:
    """Metadata for ``source``; a pure function of it."""
    spoken = sentences(source.segments)
    shown = screen_sentences(source)
    # With speech, the summary is the speech's; the screen's lines only add to the topics.
    found = spoken or shown
    texts = [s.text for s in spoken] + [s.text for s in shown]
    ranked = keyphrases(texts, limit=KEYWORDS) if texts else []
    summary_sentences = summarize(found, ranked)
    summary = " ".join(s.text for s in summary_sentences)
    keywords = tuple(k.phrase for k in ranked)
    duration = source.duration or (source.segments[-1].end if source.segments else 0.0)
    chapters = find_chapters(source.segments, duration)
    title = _title(source, summary_sentences, ranked)
    if summary:
        description = summary
        if not spoken:
            description = f"On screen: {summary}"
        if keywords:
            description += "\n\nTopics: " + ", ".join(keywords[:8]) + "."
    else:
        description = _media_sentence(source)
        name_title = filename_title(source.filename)
        if name_title:
            description = f"{name_title}. {description}"
    tags = tags_from(ranked, max_tags)
    if not tags:
        tags = tuple(
            dict.fromkeys(w for w in words(filename_title(source.filename)) if is_content(w))
        )[:max_tags]
    return Metadata(
        title=title,
        description=description[:DESCRIPTION_CHARS],
        tags=tags,
        keywords=keywords,
        chapters=tuple(chapters),
        summary=summary,
        show_notes=show_notes(summary, chapters, keywords),
        engine=NAME,
        model=MODEL,
    )
