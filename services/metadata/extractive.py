"""The offline metadata generator: no network, no language model, deterministic.

- chapters: ``topics.find_topics``: the speech's topic segments (knowledge points), found with
  sentence embeddings that ship inside a wheel, each with its title, summary and keyphrases;
- keywords: ``keywords.keyphrases`` over the transcript's sentences (and the on-screen lines);
- tags: the keywords a person would search for, lower-case, without filler, at most
  ``max_tags``;
- title: what the video is about: its topics' titles joined ("Volcanoes, Bread and Honeybees"),
  or for a one-topic video its two best keyphrases. Never a sentence cut mid-phrase; the file
  name only when there is nothing to read and it says something (never "IMG_4411");
- summary: an abstract, the most central sentence of each topic (of the one topic: its two);
- description: the abstract and the chapter list with times; show notes: the abstract, each
  chapter with its time, title and summary, and the topics.

The text shown on screen (OCR) is read with the transcript: its lines join the sentences the
keyphrases are ranked over, so titles, slides and captions weigh in the tags, and a new line on
screen is a hint for a topic boundary; a video with no speech takes its summary and title from
them. An empty transcript and no on-screen text (silence, music over pictures) still yields
metadata, from the file name and media info.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

from services.metadata.keywords import Keyphrase, keyphrases
from services.metadata.knowledge import resolve
from services.metadata.model import Chapter, KnowledgePoint, Metadata, Overlap, Source
from services.metadata.text import (
    Sentence,
    clean,
    clock,
    is_content,
    is_searchable,
    sentences,
    stem,
    title_case,
    words,
)
from services.metadata.topics import EMBEDDING_MODEL, Bounds, Topics, abstract, find_topics, prepare

NAME = "extractive"
MODEL = f"extractive-v2 ({EMBEDDING_MODEL})"
KEYWORDS = 15
MAX_TAG_CHARS = 30
SUMMARY_SENTENCES = 5
SUMMARY_CHARS = 700
#: How much overlap with already chosen sentences discounts a candidate (0 to 1).
DIVERSITY = 0.8
TITLE_MAX_WORDS = 12
TITLE_MAX_CHARS = 100
#: A title made of topic names stays within what a video page shows in full.
TITLE_TOPICS_CHARS = 70
TITLE_TOPICS = 5
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


def join_names(names: list[str]) -> str:
    """ "A", "A and B", "A, B and C"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def topic_title(chapters: list[Chapter], ranked: list[Keyphrase]) -> str:
    """What the speech is about, from its topics' titles (or, for one topic, its keyphrases);
    "" when it has none. Whole phrases only: a phrase that does not fit is left out, never cut."""
    names = list(dict.fromkeys(c.title for c in chapters if c.title))
    if len(names) < 2:
        names = [title_case(k.phrase) for k in ranked if is_searchable(k.phrase)][:2] or names
    if not names:
        return ""
    if len(names) > TITLE_TOPICS or len(join_names(names)) > TITLE_TOPICS_CHARS:
        # The longest topics, in the order they come, then "More".
        spans = {c.title: c.end - c.start for c in chapters}
        longest = sorted(names, key=lambda n: (-spans.get(n, 0.0), names.index(n)))
        kept: list[str] = []
        for name in longest:
            trial = sorted([*kept, name], key=names.index)
            if len(kept) < TITLE_TOPICS - 1 and len(join_names([*trial, "More"])) <= (
                TITLE_TOPICS_CHARS
            ):
                kept = trial
        names = [*kept, "More"] if kept else names[:1]
    return join_names(names)[:TITLE_MAX_CHARS]


def _title(
    source: Source, chapters: list[Chapter], shown: list[Sentence], ranked: list[Keyphrase]
) -> str:
    """From the speech's topics; without speech, the best whole line shown on screen (a slide's
    or a caption's, never cut); then the keyphrases; then the file name or the media facts."""
    from_topics = topic_title(chapters, ranked) if source.segments else ""
    if from_topics:
        return from_topics
    for sentence in summarize(shown, ranked):
        if 2 <= len(words(sentence.text)) <= TITLE_MAX_WORDS:
            return headline(sentence.text)
    if ranked:
        return topic_title([], ranked)
    return filename_title(source.filename) or _media_title(source)


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
        if not tag or len(tag) > MAX_TAG_CHARS or key in seen or not is_searchable(tag):
            continue
        seen.add(key)
        tags.append(tag)
        if len(tags) >= max_tags:
            break
    return tuple(tags)


def chapter_list(chapters: list[Chapter]) -> list[str]:
    """ "00:00 Title" lines, as video pages read chapters (only when there are two or more)."""
    return [f"{clock(c.start)} {c.title}" for c in chapters] if len(chapters) > 1 else []


def show_notes(abstract: str, chapters: list[Chapter], keywords: tuple[str, ...]) -> str:
    lines = [abstract] if abstract else []
    if len(chapters) > 1:
        lines += ["", "Chapters:"] if lines else ["Chapters:"]
        for chapter in chapters:
            lines.append(f"{clock(chapter.start)} {chapter.title}")
            if chapter.summary:
                lines.append(f"  {chapter.summary}")
    if keywords:
        lines += ["", "Topics: " + ", ".join(keywords)]
    return "\n".join(lines).strip()


def screen_sentences(source: Source) -> list[Sentence]:
    """The on-screen lines as sentences (each line one, as a slide or caption reads)."""
    return [
        Sentence(index, line.start, line.end, clean(line.text))
        for index, line in enumerate(line for line in source.on_screen if clean(line.text))
    ]


def source_segments(source: Source) -> dict[int, tuple[float, float]]:
    return {s.id: (s.start, s.end) for s in source.segments if s.id >= 0}


def chapters_of(
    source: Source,
    bounds: Bounds,
    knowledge_points: tuple[KnowledgePoint, ...] = (),
    overlap: Overlap = Overlap.REFUSE,
) -> Topics:
    """The caller's knowledge points as chapters when there are any, else the topics found."""
    duration = source.duration or (source.segments[-1].end if source.segments else 0.0)
    if knowledge_points:
        speech = prepare(source.segments, duration)
        chapters = resolve(knowledge_points, overlap, speech, source_segments(source), duration)
        whole = abstract(speech, chapters, len(chapters)) if speech is not None else ""
        return Topics(tuple(chapters), len(chapters), whole)
    return find_topics(
        source.segments,
        duration,
        bounds,
        shot_cuts=source.shot_cuts,
        screen_starts=[line.start for line in source.on_screen],
    )


def generate(
    source: Source,
    max_tags: int,
    bounds: Bounds | None = None,
    knowledge_points: tuple[KnowledgePoint, ...] = (),
    overlap: Overlap = Overlap.REFUSE,
) -> Metadata:
    """Metadata for ``source``; a pure function of it."""
    spoken = sentences(source.segments)
    shown = screen_sentences(source)
    texts = [s.text for s in spoken] + [s.text for s in shown]
    ranked = [k for k in keyphrases(texts, limit=2 * KEYWORDS) if is_searchable(k.phrase)]
    ranked = ranked[:KEYWORDS]
    keywords = tuple(k.phrase for k in ranked)
    topics = chapters_of(source, bounds or Bounds(), knowledge_points, overlap)
    chapters = list(topics.chapters)
    # Without speech, the on-screen lines are what there is to read.
    summary = topics.abstract if chapters else " ".join(s.text for s in summarize(shown, ranked))
    title = _title(source, chapters if topics.distinct > 1 else [], shown, ranked)
    if summary:
        description = summary if spoken else f"On screen: {summary}"
        listed = chapter_list(chapters)
        if listed:
            description += "\n\n" + "\n".join(listed)
        elif keywords:
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
