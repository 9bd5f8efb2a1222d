"""A transcript the caller already has (``TranscribeSpec.transcript``, seed 002): checked and
kept as given, instead of recognised.

Checked: at least one segment with text; at most ``MAX_SEGMENTS``; ids unique and not negative;
starts in order (a segment never starts before the one before it); 0 <= start <= end; inside the
audio's duration when it is known (a container's rounding of ``END_SLACK_SECONDS`` allowed);
text of at most ``MAX_TEXT_CHARS`` per segment; words inside their segment. The first problem is
INVALID_ARGUMENT ``INVALID_TRANSCRIPT`` naming the segment (``transcript.segments[3] (id 7)``).
Kept as given: ids (so knowledge points may name them), times, text (whitespace tidied) and
words; the engine is ``caller``.
"""

from __future__ import annotations

from runtime.errors import InvalidArgument
from services.transcribe.model import Segment, Transcript, Word

ENGINE = "caller"
MAX_SEGMENTS = 100_000
MAX_TEXT_CHARS = 10_000
MAX_LANGUAGE_CHARS = 16
END_SLACK_SECONDS = 0.05


def _bad(problem: str) -> InvalidArgument:
    return InvalidArgument(f"transcript: {problem}", reason="INVALID_TRANSCRIPT")


def checked(transcript: Transcript, duration: float) -> Transcript:
    """``transcript`` as the job's, or INVALID_ARGUMENT. ``duration`` is the audio's (0 when
    unknown: the transcript's own, or its last end, then bounds it)."""
    segments = transcript.segments
    if len(segments) > MAX_SEGMENTS:
        raise _bad(f"at most {MAX_SEGMENTS} segments, got {len(segments)}")
    if len(transcript.language) > MAX_LANGUAGE_CHARS:
        raise _bad(f"language is longer than {MAX_LANGUAGE_CHARS} characters")
    limit = duration or transcript.duration
    seen: dict[int, int] = {}
    kept: list[Segment] = []
    previous_start = 0.0
    for index, segment in enumerate(segments):
        name = f"segments[{index}] (id {segment.id})"
        if segment.id < 0:
            raise _bad(f"{name}: ids must not be negative")
        if segment.id in seen:
            raise _bad(f"{name}: id is also the one of segments[{seen[segment.id]}]")
        seen[segment.id] = index
        if not 0 <= segment.start <= segment.end:
            raise _bad(
                f"{name}: needs 0 <= start <= end, got {segment.start:g} to {segment.end:g} s"
            )
        if segment.start < previous_start:
            raise _bad(f"{name}: starts at {segment.start:g} s, before the segment before it")
        previous_start = segment.start
        if limit and segment.end > limit + END_SLACK_SECONDS:
            raise _bad(f"{name}: ends at {segment.end:g} s, after the audio ({limit:g} s)")
        if len(segment.text) > MAX_TEXT_CHARS:
            raise _bad(f"{name}: text is longer than {MAX_TEXT_CHARS} characters")
        for word in segment.words:
            if (
                not segment.start - END_SLACK_SECONDS
                <= word.start
                <= word.end
                <= (segment.end + END_SLACK_SECONDS)
            ):
                raise _bad(f"{name}: the word {word.text!r} lies outside its segment")
        text = " ".join(segment.text.split())
        if text:
            kept.append(
                Segment(
                    id=segment.id,
                    start=segment.start,
                    end=min(segment.end, limit) if limit else segment.end,
                    text=text,
                    words=tuple(
                        Word(w.start, w.end, w.text.strip(), w.probability) for w in segment.words
                    ),
                )
            )
    if not kept:
        raise _bad("it has no segment with text")
    return Transcript(
        language=transcript.language.strip().lower(),
        language_probability=1.0 if transcript.language.strip() else 0.0,
        duration=limit or kept[-1].end,
        segments=tuple(kept),
        engine=ENGINE,
        model="",
    )
