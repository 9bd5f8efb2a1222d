"""Shots from frames: frames in, cuts, dissolves, fades and keyframes out; no decoding, no gRPC.

``ShotFinder.push`` takes one analysis-size BGR frame at a time (``frames.decode_frames``) and
``finish`` returns the ``Scenes``. Three small parts, each with one job, in the shape of
PySceneDetect's detectors:

- hard cuts: PySceneDetect's own ``AdaptiveDetector`` (default) or ``ContentDetector``, fed
  every frame with its number;
- gradual transitions (``GradualDetector``): PySceneDetect's detectors compare a frame with its
  neighbours, so a one-second cross-fade, whose every step is small, passes under them. Here a
  window of frames ending at the newest one is a dissolve when its two ends differ as much as
  two shots do, its middle frame is their average (a blend, which motion inside a shot never
  is: a moving object is in one place, not half in two) and no single step carries the change
  (that is a cut). The span is where the frames' projection on the line from one end to the
  other lies strictly between them; an end that is a solid frame makes it a fade;
- keyframes: each frame's sharpness (variance of the Laplacian), brightness and contrast; the
  sharpest frame of a shot that is neither solid (black, white, flat) nor inside a transition
  (nor next to a cut) represents it.

Memory does not grow with the number of frames: the transition window holds at most
``2 * max_transition`` tiny frames, and a frame's few numbers are kept only until no later
finding can still change which shot it belongs to (a bounded delay), then folded into its
shot's best keyframe.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from services.vision.model import (
    Detector,
    Keyframe,
    Scenes,
    Shot,
    ShotOptions,
    Transition,
    TransitionKind,
)

Image = npt.NDArray[np.uint8]

#: PySceneDetect's defaults.
DEFAULT_MIN_SHOT_FRAMES = 15
DEFAULT_ADAPTIVE_THRESHOLD = 3.0
DEFAULT_CONTENT_THRESHOLD = 27.0
DEFAULT_MIN_CONTENT_VALUE = 15.0

#: A frame whose luma deviates less than this (0-255) is solid: black, white or a flat colour.
SOLID_CONTRAST = 8.0
#: Mean luma below this is black, whatever the contrast (a dark frame is no keyframe).
BLACK_BRIGHTNESS = 24.0
#: Frames this close to a cut are not taken as keyframes (motion blur, encoder transients).
CUT_MARGIN = 2
#: Nor frames this close to a gradual transition's span (its first steps are faint).
TRANSITION_MARGIN = 3
#: Side of the tiny frames the transition check compares.
TINY_SIZE = (32, 18)
#: The two ends of a window must differ at least this much (mean absolute, 0-255) to be two
#: shots; the middle frame may differ from their average by at most this share of that; no
#: single step between two frames may carry more than this share of the change.
MIN_CHANGE = 12.0
MAX_BLEND_RESIDUAL = 0.25
MAX_STEP_SHARE = 0.5
#: Frames whose projection is past these fractions of the way are inside the transition.
SPAN_LOW, SPAN_HIGH = 0.05, 0.95
#: Frames inside a transition change at least this many times faster than those around it.
CONCENTRATION = 2.5


@dataclass(frozen=True)
class _Frame:
    index: int
    time: float
    brightness: float
    contrast: float
    sharpness: float

    @property
    def blank(self) -> bool:
        """Solid (black, white, flat) or too dark to show anything."""
        return self.contrast < SOLID_CONTRAST or self.brightness < BLACK_BRIGHTNESS


@dataclass(frozen=True)
class _Tiny:
    index: int
    time: float
    pixels: npt.NDArray[np.float32]
    #: Mean absolute change from the frame before.
    step: float
    blank: bool


@dataclass(frozen=True)
class _Candidate:
    start: _Tiny
    end: _Tiny
    kind: TransitionKind
    #: (the span touches the window's edges, minus the window's half length, the blend's
    #: residual): lower is better — the widest window that holds the whole transition.
    rank: tuple[bool, int, float]


def cut_detector(options: ShotOptions, fps: float) -> Any:
    min_frames = (
        max(1, round(options.min_shot_seconds * fps))
        if options.min_shot_seconds is not None
        else DEFAULT_MIN_SHOT_FRAMES
    )
    if options.detector is Detector.CONTENT:
        return ContentDetector(
            threshold=options.threshold or DEFAULT_CONTENT_THRESHOLD, min_scene_len=min_frames
        )
    return AdaptiveDetector(
        adaptive_threshold=options.threshold or DEFAULT_ADAPTIVE_THRESHOLD,
        min_scene_len=min_frames,
        min_content_val=options.min_content_value or DEFAULT_MIN_CONTENT_VALUE,
    )


def measure(image: Image) -> tuple[float, float, float]:
    """Brightness, contrast and sharpness of a BGR frame."""
    luma = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    mean, deviation = cv2.meanStdDev(luma)
    _, edges = cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_32F))
    return float(mean[0][0]), float(deviation[0][0]), float(edges[0][0]) ** 2


def _distance(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Mean absolute difference of two tiny frames."""
    return float(cv2.norm(a, b, cv2.NORM_L1)) / a.size


class GradualDetector:
    """Dissolves and fades, from windows of tiny frames (see the module's docstring)."""

    def __init__(self, fps: float, max_seconds: float) -> None:
        longest = max(2, round(max_seconds * fps / 2))
        halves, half = {2, 3, longest}, 3.0
        while half < longest:
            half *= 1.5
            halves.add(min(round(half), longest))
        self.halves = sorted(halves)
        self.longest = longest
        self.window: collections.deque[_Tiny] = collections.deque(maxlen=2 * longest + 1)
        self.pending: _Candidate | None = None
        self.done: list[_Candidate] = []
        #: The last frame of the pending cluster's windows' spans.
        self.reach = -1

    def push(self, index: int, time: float, image: Image, blank: bool) -> list[_Candidate]:
        tiny = cv2.resize(image, TINY_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
        step = _distance(tiny, self.window[-1].pixels) if self.window else 0.0
        self.window.append(_Tiny(index, time, tiny, step, blank))
        if index % 2:
            # Every transition spans two frames or more, so windows ending on every other
            # frame see each one (with its span measured the same way): half the checks.
            return self._settled(index)
        frames = list(self.window)
        steps = np.fromiter((f.step for f in frames), np.float64, len(frames))
        for half in self.halves:
            if len(frames) > 2 * half:
                found = self._check(frames[-(2 * half + 1) :], steps[-(2 * half + 1) :], half)
                if found is not None:
                    self._offer(found)
        return self._settled(index)

    def finish(self) -> list[_Candidate]:
        done = self.done + ([self.pending] if self.pending is not None else [])
        self.pending, self.done = None, []
        return done

    def _check(
        self, frames: list[_Tiny], steps: npt.NDArray[np.float64], half: int
    ) -> _Candidate | None:
        """Whether ``frames`` (``2 * half + 1`` of them, ``steps`` their changes) hold a
        transition centred on the middle one."""
        first, middle, last = frames[0], frames[half], frames[-1]
        if first.blank and last.blank:
            return None  # a change of light between two blank frames is no shot change
        size = _distance(last.pixels, first.pixels)
        if size < MIN_CHANGE:
            return None
        if float(steps[1:].max()) > MAX_STEP_SHARE * size:
            return None  # one step carries the change: a cut, not a blend
        blend = ((first.pixels + last.pixels) / 2).astype(np.float32)
        residual = _distance(middle.pixels, blend) / size
        if residual > MAX_BLEND_RESIDUAL:
            return None
        change = last.pixels - first.pixels
        stack = np.stack([f.pixels for f in frames]).reshape(len(frames), -1)
        alphas = (
            (stack - first.pixels.reshape(-1)) @ change.reshape(-1) / float((change * change).sum())
        )
        inside = np.flatnonzero((alphas > SPAN_LOW) & (alphas < SPAN_HIGH))
        if len(inside) < 2 or not inside[0] <= half <= inside[-1]:
            return None
        low, high = int(inside[0]), int(inside[-1])
        # The change happens inside the span, not all along (a slow pan, animated light): its
        # frames change several times faster than those around it.
        outside = np.concatenate([steps[1:low], steps[high + 1 :]])
        if len(outside) and steps[low : high + 1].mean() < CONCENTRATION * outside.mean():
            return None
        start, end = frames[low], frames[high]
        # A window that is all transition (its ends mid-blend) sees only part of it.
        edge = max(1, len(frames) // 10)
        touches = low <= edge or high >= len(frames) - 1 - edge
        if last.blank:
            kind = TransitionKind.FADE_OUT
        elif first.blank:
            kind = TransitionKind.FADE_IN
        else:
            kind = TransitionKind.DISSOLVE
        return _Candidate(start, end, kind, (touches, -half, residual))

    def _offer(self, found: _Candidate) -> None:
        """Windows that see the same transition overlap: they form one cluster, whose best
        window (not cut off by its edges, the closest blend) gives the span."""
        pending = self.pending
        if pending is not None and found.start.index <= self.reach + 1:
            self.reach = max(self.reach, found.end.index)
            if found.rank < pending.rank:
                self.pending = found
            return
        if pending is not None:
            self.done.append(pending)
        self.pending = found
        self.reach = found.end.index

    def _settled(self, index: int) -> list[_Candidate]:
        """Candidates no later window can overlap any more."""
        if self.pending is not None and index - self.reach > 2 * self.longest + 1:
            self.done.append(self.pending)
            self.pending = None
        done, self.done = self.done, []
        return done


@dataclass
class _ShotBuilder:
    start: _Frame
    best: _Frame | None = None
    #: The clearest frame when none is eligible (a shot of solid frames).
    fallback: _Frame | None = None
    last: _Frame | None = None

    def add(self, frame: _Frame, eligible: bool) -> None:
        self.last = frame
        if eligible and (self.best is None or frame.sharpness > self.best.sharpness):
            self.best = frame
        if self.fallback is None or (frame.contrast, frame.sharpness) > (
            self.fallback.contrast,
            self.fallback.sharpness,
        ):
            self.fallback = frame


@dataclass(frozen=True)
class _Built:
    start: _Frame
    last: _Frame
    keyframe: _Frame
    eligible: bool


class ShotFinder:
    """Frames in (``push``, in decoding order), ``Scenes`` out (``finish``)."""

    def __init__(self, options: ShotOptions, fps: float) -> None:
        self.options = options
        self.fps = float(fps) if fps > 0 else 25.0
        self.cuts = cut_detector(options, self.fps)
        self.gradual = (
            GradualDetector(self.fps, options.max_transition_seconds) if options.gradual else None
        )
        longest = self.gradual.longest if self.gradual is not None else 0
        #: Frames wait here until no finding can still concern them.
        self.delay = 4 * longest + DEFAULT_MIN_SHOT_FRAMES + 16
        if options.min_shot_seconds is not None:
            self.delay += round(options.min_shot_seconds * self.fps)
        self.recent: collections.deque[_Frame] = collections.deque()
        self.cut_frames: list[int] = []
        self.transitions: list[Transition] = []
        self.shots: list[_Built] = []
        self.current: _ShotBuilder | None = None
        self.count = 0
        self.last_time = 0.0

    def push(self, index: int, time: float, image: Image) -> None:
        brightness, contrast, sharpness = measure(image)
        frame = _Frame(index, time, brightness, contrast, sharpness)
        self.count = index + 1
        self.last_time = time
        timecode = FrameTimecode(index, fps=self.fps)
        for cut in self.cuts.process_frame(timecode, image):
            self.cut_frames.append(int(cut.frame_num))
        if self.gradual is not None:
            for found in self.gradual.push(index, time, image, frame.blank):
                self._add_transition(found)
        self.recent.append(frame)
        while len(self.recent) > self.delay:
            self._settle(self.recent.popleft())

    def finish(self) -> Scenes:
        if self.count:
            last = FrameTimecode(self.count - 1, fps=self.fps)
            self.cut_frames += [int(c.frame_num) for c in self.cuts.post_process(last)]
        if self.gradual is not None:
            for found in self.gradual.finish():
                self._add_transition(found)
        while self.recent:
            self._settle(self.recent.popleft())
        if self.current is not None:
            self._close()
        end = self.last_time + 1 / self.fps if self.count else 0.0
        return Scenes(
            shots=self._shots(end),
            transitions=tuple(sorted(self._all_transitions(), key=lambda t: t.start_frame)),
            detector=self.options.detector.value,
            frame_count=self.count,
            fps=round(self.fps, 6),
        )

    # boundaries --------------------------------------------------------------------------------

    def _add_transition(self, found: _Candidate) -> None:
        self.transitions.append(
            Transition(found.kind, found.start.index, found.end.index, found.start.time,
                       found.end.time)
        )  # fmt: skip

    def _in_transition(self, index: int, margin: int = 0) -> bool:
        return any(
            t.start_frame - margin <= index <= t.end_frame + margin for t in self._recent_spans()
        )

    def _cut_absorbed(self, index: int) -> bool:
        """A cut detector often fires where a fade begins or ends (the first step out of
        black): such a cut belongs to the transition."""
        return any(
            t.start_frame - CUT_MARGIN - (t.end_frame - t.start_frame) // 2
            <= index
            <= t.end_frame + CUT_MARGIN + (t.end_frame - t.start_frame) // 2
            for t in self._recent_spans()
        )

    def _recent_spans(self) -> list[Transition]:
        # Transitions are appended in time order; only the last few can concern a frame that
        # is settling now.
        return self.transitions[-4:]

    def _boundary_at(self, index: int) -> bool:
        """Whether a new shot starts at frame ``index``."""
        if index in self.cut_frames and index > 0 and not self._cut_absorbed(index):
            return True
        return any((t.start_frame + t.end_frame) // 2 == index for t in self._recent_spans())

    def _near_cut(self, index: int) -> bool:
        return any(abs(index - c) <= CUT_MARGIN for c in self.cut_frames[-4:])

    def _settle(self, frame: _Frame) -> None:
        if self.current is None:
            self.current = _ShotBuilder(frame)
        elif self._boundary_at(frame.index):
            self._close()
            self.current = _ShotBuilder(frame)
        eligible = (
            not frame.blank
            and not self._in_transition(frame.index, TRANSITION_MARGIN)
            and not self._near_cut(frame.index)
        )
        self.current.add(frame, eligible)

    def _close(self) -> None:
        current = self.current
        assert current is not None and current.last is not None
        keyframe = current.best or current.fallback
        assert keyframe is not None
        self.shots.append(_Built(current.start, current.last, keyframe, current.best is not None))
        self.current = None

    def _all_transitions(self) -> list[Transition]:
        cuts = [
            Transition(TransitionKind.CUT, shot.start.index, shot.start.index, shot.start.time,
                       shot.start.time)
            for shot in self.shots[1:]
            if shot.start.index in self.cut_frames
        ]  # fmt: skip
        return cuts + self.transitions

    def _shots(self, end: float) -> tuple[Shot, ...]:
        """The shots; one with no eligible keyframe (solid frames between a fade out and a fade
        in, say) joins the shot before it (the first, the one after it)."""
        merged: list[_Built] = []
        for built in self.shots:
            if merged and not built.eligible:
                merged[-1] = dataclasses.replace(merged[-1], last=built.last)
            elif merged and not merged[-1].eligible:
                merged[-1] = dataclasses.replace(built, start=merged[-1].start)
            else:
                merged.append(built)
        shots = []
        for index, built in enumerate(merged):
            stop = merged[index + 1].start.time if index + 1 < len(merged) else end
            key = built.keyframe
            shots.append(
                Shot(
                    index=index,
                    start_frame=built.start.index,
                    end_frame=built.last.index,
                    start=round(built.start.time, 6),
                    end=round(stop, 6),
                    keyframe=Keyframe(
                        key.index, round(key.time, 6), round(key.sharpness, 3),
                        round(key.brightness, 3),
                    ),
                )
            )  # fmt: skip
        return tuple(shots)
