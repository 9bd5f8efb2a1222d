"""Conversions between the wire messages and the core's dataclasses (protobuf only, no gRPC).

Defaults the contract documents are applied here, and out-of-range values refused
(INVALID_ARGUMENT ``INVALID_SCENES_SPEC`` / ``INVALID_OCR_SPEC``), so the core sees complete,
valid options.
"""

from __future__ import annotations

from reelmill.v1 import media_pb2, pipeline_pb2, vision_pb2
from runtime.durations import seconds
from runtime.errors import InvalidArgument
from services.vision.model import (
    Box,
    Detector,
    Keyframe,
    OcrOptions,
    OnScreenText,
    Scenes,
    Shot,
    ShotOptions,
    Transition,
    TransitionKind,
)
from services.vision.vision import VideoFacts

_DETECTORS = {
    pipeline_pb2.SHOT_DETECTOR_UNSPECIFIED: Detector.ADAPTIVE,
    pipeline_pb2.SHOT_DETECTOR_ADAPTIVE: Detector.ADAPTIVE,
    pipeline_pb2.SHOT_DETECTOR_CONTENT: Detector.CONTENT,
}
_KINDS = {
    TransitionKind.CUT: vision_pb2.TRANSITION_KIND_CUT,
    TransitionKind.DISSOLVE: vision_pb2.TRANSITION_KIND_DISSOLVE,
    TransitionKind.FADE_OUT: vision_pb2.TRANSITION_KIND_FADE_OUT,
    TransitionKind.FADE_IN: vision_pb2.TRANSITION_KIND_FADE_IN,
}
_FROM_KINDS = {wire: kind for kind, wire in _KINDS.items()}


def _refuse(message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason)


def shot_options(spec: pipeline_pb2.ScenesSpec) -> ShotOptions:
    bad = "INVALID_SCENES_SPEC"
    if spec.detector not in _DETECTORS:
        raise _refuse(f"unknown shot detector {spec.detector}", bad)
    if not 0 <= spec.threshold <= 255:
        raise _refuse("scenes.threshold must be 0 (the default) to 255", bad)
    if not 0 <= spec.min_content_value <= 255:
        raise _refuse("scenes.min_content_value must be 0 (the default) to 255", bad)
    min_shot = None
    if spec.HasField("min_shot_duration"):
        min_shot = seconds(spec.min_shot_duration)
        if not 0 <= min_shot <= 60:
            raise _refuse("scenes.min_shot_duration must be 0 to 60 s", bad)
    longest = 2.0
    if spec.HasField("max_transition_duration"):
        longest = seconds(spec.max_transition_duration)
        if not 0.2 <= longest <= 5:
            raise _refuse("scenes.max_transition_duration must be 0.2 to 5 s", bad)
    return ShotOptions(
        detector=_DETECTORS[spec.detector],
        threshold=spec.threshold or None,
        min_content_value=spec.min_content_value or None,
        min_shot_seconds=min_shot,
        gradual=spec.gradual_transitions if spec.HasField("gradual_transitions") else True,
        max_transition_seconds=longest,
    )


def ocr_options(spec: pipeline_pb2.OcrSpec) -> OcrOptions:
    bad = "INVALID_OCR_SPEC"
    interval = 2.0
    if spec.HasField("interval"):
        interval = seconds(spec.interval)
        if not 0.25 <= interval <= 60:
            raise _refuse("ocr.interval must be 0.25 to 60 s", bad)
    if not 0 <= spec.min_confidence <= 1:
        raise _refuse("ocr.min_confidence must be 0 (the default, 0.5) to 1", bad)
    if spec.max_side and not 320 <= spec.max_side <= 1920:
        raise _refuse("ocr.max_side must be 0 (the default, 960) or 320 to 1920", bad)
    return OcrOptions(
        interval=interval,
        min_confidence=spec.min_confidence or 0.5,
        max_side=spec.max_side or 960,
    )


def video_facts(media: media_pb2.MediaInfo) -> VideoFacts:
    if not media.video_streams:
        return VideoFacts(duration=seconds(media.duration))
    stream = media.video_streams[0]
    return VideoFacts(
        duration=seconds(stream.duration) or seconds(media.duration),
        fps=stream.fps,
        rotation=stream.rotation % 360,
    )


def scenes_message(scenes: Scenes) -> vision_pb2.Scenes:
    return vision_pb2.Scenes(
        shots=[
            vision_pb2.Shot(
                index=shot.index,
                start_seconds=shot.start,
                end_seconds=shot.end,
                start_frame=shot.start_frame,
                end_frame=shot.end_frame,
                keyframe_seconds=shot.keyframe.time,
                keyframe_frame=shot.keyframe.frame,
                keyframe_sharpness=shot.keyframe.sharpness,
                keyframe_brightness=shot.keyframe.brightness,
            )
            for shot in scenes.shots
        ],
        transitions=[
            vision_pb2.Transition(
                kind=_KINDS[t.kind],
                start_seconds=t.start,
                end_seconds=t.end,
                start_frame=t.start_frame,
                end_frame=t.end_frame,
            )
            for t in scenes.transitions
        ],
        detector=scenes.detector,
        frame_count=scenes.frame_count,
        fps=scenes.fps,
    )


def scenes_from_message(message: vision_pb2.Scenes) -> Scenes | None:
    """The shots a ReadText request carries; ``None`` when it carries none."""
    if not message.shots:
        return None
    return Scenes(
        shots=tuple(
            Shot(
                index=shot.index,
                start_frame=shot.start_frame,
                end_frame=shot.end_frame,
                start=shot.start_seconds,
                end=shot.end_seconds,
                keyframe=Keyframe(
                    shot.keyframe_frame,
                    shot.keyframe_seconds,
                    shot.keyframe_sharpness,
                    shot.keyframe_brightness,
                ),
            )
            for shot in message.shots
        ),
        transitions=tuple(
            Transition(
                _FROM_KINDS.get(t.kind, TransitionKind.CUT),
                t.start_frame,
                t.end_frame,
                t.start_seconds,
                t.end_seconds,
            )
            for t in message.transitions
        ),
        detector=message.detector,
        frame_count=message.frame_count,
        fps=message.fps,
    )


def _box(box: Box) -> vision_pb2.TextBox:
    return vision_pb2.TextBox(left=box.left, top=box.top, width=box.width, height=box.height)


def text_message(text: OnScreenText) -> vision_pb2.OnScreenText:
    return vision_pb2.OnScreenText(
        entries=[
            vision_pb2.TextEntry(
                text=e.text,
                confidence=e.confidence,
                box=_box(e.box),
                first_seen_seconds=e.first_seen,
                last_seen_seconds=e.last_seen,
                start_seconds=e.start,
                end_seconds=e.end,
                samples=e.samples,
            )
            for e in text.entries
        ],
        frames_examined=text.frames_examined,
        engine=text.engine,
        model=text.model,
    )
