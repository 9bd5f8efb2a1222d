"""Which frames OCR reads, and how the lines of successive samples become entries.

``sample_times``: every shot's keyframe, plus the frames of an every-``interval`` grid (seed
003's every 2 s, from the start) that fall inside shots at least that long; without shots, the
whole grid.

``TextTracker``: samples arrive in time order. A line matches an entry that the previous
sample (or the one before, so one missed reading does not split a caption) showed when their
normalised text is the same or nearly so and their boxes overlap; it then extends that entry.
An entry ends at the first sample that no longer shows it (or at the video's end). So a caption
on screen for 20 s is one entry, seen by ten samples, not ten entries.

``StillPicture``: a sample that shows the very picture OCR last read (a slide, a talking head)
takes that frame's lines again instead of running the models.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from services.vision.model import Box, Line, Scenes, TextEntry

#: Boxes must overlap at least this much (of the smaller one) to be the same line.
MIN_OVERLAP = 0.5
#: Texts at least this similar (difflib ratio of their normalised forms) are the same line:
#: the recogniser reads a character differently now and then.
MIN_SIMILARITY = 0.8
#: Samples an entry may be missed by before it counts as gone.
MISSES_ALLOWED = 1
#: A sample whose every pixel of a 128x72 grey thumbnail is within this much (0-255) of the
#: last frame read shows what that one showed: its lines are taken again, not read again
#: (slides, talking heads, a caption over a still picture). A new line, however small,
#: changes some pixel by far more.
STILL_SIZE = (128, 72)
STILL_MAX_DIFFERENCE = 12


def sample_times(scenes: Scenes | None, duration: float, interval: float) -> list[float]:
    times: set[float] = set()
    if scenes is not None and scenes.shots:
        for shot in scenes.shots:
            times.add(round(shot.keyframe.time, 3))
            if shot.duration < interval:
                continue
            # The every-interval grid (from the video's start) where it falls inside the shot.
            step = -(-shot.start // interval)
            while step * interval < shot.end:
                t = step * interval
                if abs(t - shot.keyframe.time) >= interval / 4:
                    times.add(round(t, 3))
                step += 1
    else:
        t = 0.0
        while t < max(duration, interval / 2):
            times.add(round(t, 3))
            t += interval
    return sorted(times)


class StillPicture:
    """Whether a sample shows the same picture as the last frame OCR read."""

    def __init__(self) -> None:
        self.last: npt.NDArray[np.int16] | None = None
        self.reused = 0

    def same(self, image: npt.NDArray[np.uint8]) -> bool:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        thumb = cv2.resize(grey, STILL_SIZE, interpolation=cv2.INTER_AREA).astype(np.int16)
        if self.last is not None and int(np.abs(thumb - self.last).max()) <= STILL_MAX_DIFFERENCE:
            self.reused += 1
            return True
        self.last = thumb
        return False


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


@dataclass
class _Open:
    key: str
    text: str
    confidence: float
    box: Box
    first_seen: float
    last_seen: float
    samples: int = 1
    missed: int = 0
    #: The first sample time after its last sighting that did not show it.
    gone_at: float | None = None

    def entry(self, end: float) -> TextEntry:
        return TextEntry(
            text=self.text,
            confidence=self.confidence,
            box=self.box,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            start=self.first_seen,
            end=round(max(end, self.last_seen), 3),
            samples=self.samples,
        )


def _same(entry: _Open, key: str, box: Box) -> bool:
    if entry.box.overlap(box) < MIN_OVERLAP:
        return False
    if entry.key == key:
        return True
    return difflib.SequenceMatcher(None, entry.key, key).ratio() >= MIN_SIMILARITY


@dataclass
class TextTracker:
    open: list[_Open] = field(default_factory=list)
    closed: list[TextEntry] = field(default_factory=list)
    examined: int = 0

    def add(self, time: float, lines: list[Line]) -> None:
        self.examined += 1
        seen: set[int] = set()
        for line in lines:
            key = normalise(line.text)
            if not key:
                continue
            match = next(
                (i for i, e in enumerate(self.open) if i not in seen and _same(e, key, line.box)),
                None,
            )
            if match is None:
                self.open.append(_Open(key, line.text, line.confidence, line.box, time, time))
                seen.add(len(self.open) - 1)
                continue
            entry = self.open[match]
            seen.add(match)
            entry.last_seen, entry.samples, entry.missed, entry.gone_at = (
                time,
                entry.samples + 1,
                0,
                None,
            )
            if line.confidence > entry.confidence:
                entry.text, entry.confidence, entry.key = line.text, line.confidence, key
        still: list[_Open] = []
        for index, entry in enumerate(self.open):
            if index in seen:
                still.append(entry)
                continue
            entry.missed += 1
            if entry.gone_at is None:
                entry.gone_at = time
            if entry.missed > MISSES_ALLOWED:
                self.closed.append(entry.entry(entry.gone_at))
            else:
                still.append(entry)
        self.open = still

    def finish(self, end: float) -> list[TextEntry]:
        for entry in self.open:
            self.closed.append(entry.entry(entry.gone_at if entry.gone_at is not None else end))
        self.open = []
        return sorted(self.closed, key=lambda e: (e.first_seen, e.box.top, e.box.left))
