"""WebVTT captions from timed text: what the transcribe service writes for a whole transcript
and the transcode service for a clip's slice of it, so both are the same format to the byte.

A cue's text is one line (runs of whitespace become one space), never holds the timing arrow
(a cue line with "-->" would end the cue), and escapes ``&``, ``<`` and ``>`` as the format
requires; times are ``HH:MM:SS.mmm``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SPACES = re.compile(r"\s+")


def vtt_timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm``, rounded to the millisecond (negative times are 0)."""
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def cue_line(text: str) -> str:
    """A cue's text as one line, without the timing arrow (not yet escaped: SRT wants it so)."""
    return _SPACES.sub(" ", text).strip().replace("-->", "->")


def render_vtt(cues: Iterable[tuple[float, float, str]]) -> str:
    """The header, then one cue per ``(start, end, text)``, each followed by a blank line."""
    lines = ["WEBVTT", ""]
    for start, end, text in cues:
        escaped = cue_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        lines += [f"{vtt_timestamp(start)} --> {vtt_timestamp(end)}", escaped, ""]
    return "\n".join(lines)
