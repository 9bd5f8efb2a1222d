"""Transcript timing rules and the four artifact formats (JSON, WebVTT, SRT, plain text).

``SegmentTidier`` makes engine output safe to publish, one segment at a time (so streamed
segments are the final ones): times rounded to milliseconds, clamped inside the audio,
monotonic (a segment starts no earlier than the previous one ended), every cue at least 1 ms
long; words clamped inside their segment and monotonic; blank segments dropped and ids
renumbered from 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runtime import captions
from services.transcribe.model import Segment, Transcript, Word

_MS = 0.001
_SPACES = re.compile(r"\s+")


def _ms(value: float) -> float:
    return round(value, 3)


def _clean_text(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class SegmentTidier:
    """Applies the timing rules to segments in order."""

    def __init__(self, duration: float) -> None:
        self._duration = _ms(max(duration, 0.0))
        self._previous_end = 0.0
        self._next_id = 0

    def tidy(self, segment: Segment) -> Segment | None:
        """The publishable form of ``segment``; ``None`` when it has no text or no room."""
        text = _clean_text(segment.text)
        duration = self._duration
        if not text or self._previous_end > duration - _MS:
            return None
        start = min(max(_ms(segment.start), self._previous_end), duration - _MS)
        end = min(max(_ms(segment.end), start + _MS), duration)
        start = _ms(start)
        end = _ms(end)
        words: list[Word] = []
        cursor = start
        for word in segment.words:
            word_text = _clean_text(word.text)
            if not word_text:
                continue
            word_start = min(max(_ms(word.start), cursor), end)
            word_end = min(max(_ms(word.end), word_start), end)
            words.append(
                Word(_ms(word_start), _ms(word_end), word_text, round(word.probability, 4))
            )
            cursor = word_end
        self._previous_end = end
        tidy = Segment(
            id=self._next_id,
            start=start,
            end=end,
            text=text,
            words=tuple(words),
            avg_logprob=round(segment.avg_logprob, 4),
            no_speech_probability=round(segment.no_speech_probability, 4),
        )
        self._next_id += 1
        return tidy


def tidy_segments(segments: list[Segment], duration: float) -> tuple[Segment, ...]:
    tidier = SegmentTidier(duration)
    return tuple(s for s in map(tidier.tidy, segments) if s is not None)


# -- JSON ---------------------------------------------------------------------------------------


def transcript_dict(transcript: Transcript) -> dict[str, Any]:
    return {
        "language": transcript.language,
        "language_probability": round(transcript.language_probability, 4),
        "duration": _ms(transcript.duration),
        "engine": transcript.engine,
        "model": transcript.model,
        "segments": [
            {
                "id": s.id,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "words": [
                    {"start": w.start, "end": w.end, "text": w.text, "probability": w.probability}
                    for w in s.words
                ],
                "avg_logprob": s.avg_logprob,
                "no_speech_probability": s.no_speech_probability,
            }
            for s in transcript.segments
        ],
    }


def transcript_from_dict(data: dict[str, Any]) -> Transcript:
    """The inverse of ``transcript_dict`` (trusted input: our own artifacts)."""
    return Transcript(
        language=data["language"],
        language_probability=data["language_probability"],
        duration=data["duration"],
        engine=data["engine"],
        model=data["model"],
        segments=tuple(
            Segment(
                id=s["id"],
                start=s["start"],
                end=s["end"],
                text=s["text"],
                words=tuple(
                    Word(w["start"], w["end"], w["text"], w["probability"]) for w in s["words"]
                ),
                avg_logprob=s["avg_logprob"],
                no_speech_probability=s["no_speech_probability"],
            )
            for s in data["segments"]
        ),
    )


def to_json(transcript: Transcript) -> str:
    return json.dumps(transcript_dict(transcript), ensure_ascii=False, indent=1) + "\n"


# -- WebVTT and SRT -----------------------------------------------------------------------------


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_time(seconds: float) -> str:
    return _clock(seconds, ",")


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: the header, then one cue per segment (``runtime.captions``, the writer the
    transcode service's clip captions use too)."""
    return captions.render_vtt((s.start, s.end, s.text) for s in transcript.segments)


def to_srt(transcript: Transcript) -> str:
    """SubRip: 1-based cue numbers, comma milliseconds, a blank line after each cue."""
    lines: list[str] = []
    for number, segment in enumerate(transcript.segments, start=1):
        lines += [
            str(number),
            f"{srt_time(segment.start)} --> {srt_time(segment.end)}",
            captions.cue_line(segment.text),
            "",
        ]
    return "\n".join(lines)


def to_txt(transcript: Transcript) -> str:
    """One line per segment."""
    return "".join(f"{segment.text}\n" for segment in transcript.segments)
