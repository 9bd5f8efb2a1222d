"""The Gemini generator: metadata through structured output, validated before it is accepted.

The transcript goes in as timestamped lines ("[01:23] text"), cut at a segment boundary when it
is longer than the configured budget. The answer must be JSON that validates against
``GeneratedMetadata`` (pydantic); a caller's schema is passed to Gemini as the response schema
and the answer validated against it with ``jsonschema``. Output that fails validation is retried
like a transient error, then reported as UNAVAILABLE (GEMINI_INVALID_OUTPUT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from google.genai import types
from pydantic import BaseModel, Field

from runtime.genai import GeminiClient, invalid_output, parse_as
from services.metadata.model import Chapter, Metadata, Source
from services.metadata.schema import validation_error
from services.metadata.text import clean, clock

NAME = "gemini"
MAX_TITLE_CHARS = 100

INSTRUCTIONS = """\
You write the metadata of a video from its transcript and the text shown on screen (titles,
slides, captions, read by OCR), for a video library. A video may have only one of the two.
Write in the language of the transcript (or of the on-screen text when there is no speech).
Do not invent facts that the transcript and the on-screen text do not support.
- title: at most 100 characters, specific, no clickbait, no quotes around it.
- description: two to four sentences on what the video covers.
- tags: up to {max_tags} short lower-case tags, most relevant first.
- keywords: up to 15 key phrases that occur in the transcript.
- chapters: the topics of the speech in order, covering it: each with start_seconds and
  end_seconds taken from the transcript's timestamps (the first starts at 0, each ends where
  the next starts, the last ends at the end of the video), a short title, a one or two
  sentence summary and up to five keyphrases said in it. An empty list when there is no
  speech.
- summary: one paragraph.
- show_notes: a short plain-text outline with bullet points ("- ").
"""

CUSTOM_INSTRUCTIONS = """\
Answer with JSON that follows the given schema, using the video's transcript below.
Do not invent facts that the transcript does not support.
"""


class GeneratedChapter(BaseModel):
    start_seconds: float = Field(ge=0)
    title: str = Field(min_length=1, max_length=200)
    end_seconds: float | None = Field(default=None, ge=0)
    summary: str = ""
    keyphrases: list[str] = Field(default_factory=list)


class GeneratedMetadata(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    description: str
    tags: list[str]
    keywords: list[str]
    chapters: list[GeneratedChapter]
    summary: str
    show_notes: str


def transcript_lines(source: Source, budget: int) -> str:
    lines: list[str] = []
    used = 0
    for segment in source.segments:
        line = f"[{clock(segment.start)}] {clean(segment.text)}"
        if used + len(line) + 1 > budget:
            lines.append("[… transcript cut for length …]")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def screen_lines(source: Source, budget: int) -> str:
    """The on-screen lines with the time each first appears; "(none)" when there are none."""
    lines: list[str] = []
    used = 0
    for line in source.on_screen:
        text = f"[{clock(line.start)}] {clean(line.text)}"
        if used + len(text) + 1 > budget:
            lines.append("[… on-screen text cut for length …]")
            break
        lines.append(text)
        used += len(text) + 1
    return "\n".join(lines) or "(none)"


def context(source: Source, budget: int) -> str:
    facts = [f"Duration: {clock(source.duration)}" if source.duration else ""]
    if source.filename:
        facts.append(f"File name: {source.filename}")
    if source.language:
        facts.append(f"Language: {source.language}")
    header = "\n".join(f for f in facts if f)
    spoken = transcript_lines(source, budget) if source.segments else "(no speech)"
    shown = screen_lines(source, budget // 4)
    return f"{header}\n\nTranscript:\n{spoken}\n\nText shown on screen:\n{shown}\n"


parse_metadata = parse_as(GeneratedMetadata, "metadata")
#: A chapter may end this far past the next one's start (or the video's end): timestamps of
#: whole seconds.
CHAPTER_SLACK_SECONDS = 1.5


def chapter_problem(chapters: list[GeneratedChapter], duration: float) -> str | None:
    """Why the chapters cannot be accepted (None when they can): they must be in order, start
    inside the video, and each end (when given) after its start and by the next one's start."""
    for index, chapter in enumerate(chapters):
        if duration and chapter.start_seconds >= duration:
            return f"chapter {index} starts at {chapter.start_seconds:g} s, after the video"
        if index and chapter.start_seconds <= chapters[index - 1].start_seconds:
            return f"chapter {index} does not start after chapter {index - 1}"
        limit = chapters[index + 1].start_seconds if index + 1 < len(chapters) else duration
        end = chapter.end_seconds
        if end is not None and (
            end <= chapter.start_seconds or (limit and end > limit + CHAPTER_SLACK_SECONDS)
        ):
            return f"chapter {index} ends at {end:g} s, outside its place"
    return None


def parse_for(duration: float) -> Callable[[str], GeneratedMetadata]:
    """``parse_metadata`` that also refuses chapters that are out of order or outside the video:
    such an answer is retried like any invalid output."""

    def parse(text: str) -> GeneratedMetadata:
        generated = parse_metadata(text)
        problem = chapter_problem(generated.chapters, duration)
        if problem is not None:
            raise invalid_output("metadata", problem)
        return generated

    return parse


def tidy(generated: GeneratedMetadata, source: Source, max_tags: int, model: str) -> Metadata:
    """Validated output made consistent: tags de-duplicated and capped; chapters contiguous (the
    first from 0, each to the next one's start, the last to the end of the video), with the
    transcript segments they cover."""
    tags: list[str] = []
    for tag in generated.tags:
        tag = clean(tag).lower().lstrip("#")
        if tag and tag not in tags:
            tags.append(tag)
    kept = [
        c
        for c in sorted(generated.chapters, key=lambda c: c.start_seconds)
        if not source.duration or c.start_seconds < source.duration
    ]
    starts = [0.0] + [round(c.start_seconds, 3) for c in kept[1:]]
    end = round(source.duration or (source.segments[-1].end if source.segments else 0.0), 3)
    ends = [*starts[1:], end]
    chapters = [
        Chapter(
            start=start,
            title=clean(c.title),
            end=stop,
            summary=clean(c.summary),
            keyphrases=tuple(dict.fromkeys(clean(k) for k in c.keyphrases if clean(k)))[:5],
            segment_ids=tuple(
                s.id for s in source.segments if start <= s.start < stop and s.id >= 0
            ),
            id=f"chapter-{index + 1}",
        )
        for index, (c, start, stop) in enumerate(zip(kept, starts, ends, strict=True))
    ]
    keywords = list(dict.fromkeys(clean(k) for k in generated.keywords if clean(k)))
    return Metadata(
        title=clean(generated.title).strip("\"'")[:MAX_TITLE_CHARS],
        description=generated.description.strip(),
        tags=tuple(tags[:max_tags]),
        keywords=tuple(keywords),
        chapters=tuple(chapters),
        summary=generated.summary.strip(),
        show_notes=generated.show_notes.strip(),
        engine=NAME,
        model=model,
    )


class GeminiGenerator:
    name = NAME

    def __init__(self, client: GeminiClient, *, max_transcript_chars: int = 300_000) -> None:
        self._client = client
        self._budget = max_transcript_chars
        self.model_name = client.model

    @property
    def transcript_budget(self) -> int:
        """Characters of the transcript sent to Gemini (a longer one is cut)."""
        return self._budget

    async def generate(self, source: Source, max_tags: int) -> Metadata:
        prompt = INSTRUCTIONS.format(max_tags=max_tags) + "\n" + context(source, self._budget)
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=GeneratedMetadata,
            temperature=0.2,
        )
        generated = await self._client.generate(
            prompt, config, parse_for(source.duration), what="metadata"
        )
        return tidy(generated, source, max_tags, self.model_name)

    async def custom(self, source: Source, schema: Mapping[str, Any], prompt: str) -> Any:
        """JSON that validates against the caller's ``schema``."""

        def parse(text: str) -> Any:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise invalid_output("custom metadata", f"not JSON: {exc.msg}") from None
            problem = validation_error(value, schema)
            if problem is not None:
                raise invalid_output("custom metadata", problem)
            return value

        instructions = CUSTOM_INSTRUCTIONS + (f"\n{prompt.strip()}\n" if prompt.strip() else "")
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=dict(schema),
            temperature=0.2,
        )
        return await self._client.generate(
            instructions + "\n" + context(source, self._budget), config, parse, what="custom"
        )
