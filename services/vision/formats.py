"""The artifacts: the scenes as JSON, the on-screen text as JSON and as a WebVTT track.

The JSON uses the field names of the contract's messages (``reelmill.v1.Scenes``,
``reelmill.v1.OnScreenText``), so a reader of the artifact and of the job sees the same thing.
"""

from __future__ import annotations

import json
from typing import Any

from services.vision.model import Box, OnScreenText, Scenes, TextEntry


def _box(box: Box) -> dict[str, float]:
    return {"left": box.left, "top": box.top, "width": box.width, "height": box.height}


def scenes_document(scenes: Scenes) -> dict[str, Any]:
    return {
        "detector": scenes.detector,
        "frame_count": scenes.frame_count,
        "fps": scenes.fps,
        "shots": [
            {
                "index": shot.index,
                "start_seconds": shot.start,
                "end_seconds": shot.end,
                "start_frame": shot.start_frame,
                "end_frame": shot.end_frame,
                "keyframe_seconds": shot.keyframe.time,
                "keyframe_frame": shot.keyframe.frame,
                "keyframe_sharpness": shot.keyframe.sharpness,
                "keyframe_brightness": shot.keyframe.brightness,
            }
            for shot in scenes.shots
        ],
        "transitions": [
            {
                "kind": t.kind.value,
                "start_seconds": round(t.start, 6),
                "end_seconds": round(t.end, 6),
                "start_frame": t.start_frame,
                "end_frame": t.end_frame,
            }
            for t in scenes.transitions
        ],
    }


def _entry(entry: TextEntry) -> dict[str, Any]:
    return {
        "text": entry.text,
        "confidence": entry.confidence,
        "box": _box(entry.box),
        "first_seen_seconds": entry.first_seen,
        "last_seen_seconds": entry.last_seen,
        "start_seconds": entry.start,
        "end_seconds": entry.end,
        "samples": entry.samples,
    }


def text_document(text: OnScreenText) -> dict[str, Any]:
    return {
        "engine": text.engine,
        "model": text.model,
        "frames_examined": text.frames_examined,
        "entries": [_entry(e) for e in text.entries],
    }


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def _timestamp(seconds: float) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_vtt(text: OnScreenText) -> str:
    """One cue per entry, placed where the text was on screen (``line`` and ``position`` in
    percent of the frame); overlapping entries are overlapping cues, as WebVTT allows."""
    cues = ["WEBVTT", ""]
    for index, entry in enumerate(text.entries, start=1):
        end = entry.end if entry.end > entry.start else entry.start + 0.5
        line = round(entry.box.top * 100)
        position = round((entry.box.left + entry.box.width / 2) * 100)
        body = entry.text.replace("-->", "->")
        cues += [
            str(index),
            f"{_timestamp(entry.start)} --> {_timestamp(end)} "
            f"line:{line}% position:{position}% align:center",
            body,
            "",
        ]
    return "\n".join(cues)
