"""Seconds as floats in the core, ``google.protobuf.Duration`` on the wire."""

from __future__ import annotations

from google.protobuf import duration_pb2


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def duration_message(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message
