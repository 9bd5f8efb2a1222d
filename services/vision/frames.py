"""Frames in: a video decoded once with PyAV, frame by frame, at the size the analysis needs.

``decode_frames`` yields every decoded frame (its number, time and the PyAV frame) and never
holds more than the decoder does; ``small_bgr`` shrinks one to an analysis size (plane by plane
with OpenCV for 8-bit 4:2:0, the common case, which is several times cheaper than a full-size
colour conversion; any other format goes through libswscale). The demuxer sees only what the
shared allowlist lets it (``runtime.demux``): self-contained containers, ``file`` for a local
path, http(s) for a presigned URL. Decoding is blocking: run it in a worker thread; it checks
``stop`` between packets, so a cancelled call stops within a frame.

A stream that turns corrupt (packets the decoder refuses, frames it marks corrupt) is
INVALID_ARGUMENT ``CORRUPT_VIDEO`` once the damage is more than a stray packet; one that ends
well before its probed duration is ``TRUNCATED_SOURCE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import av
import av.error
import cv2
import numpy as np
import numpy.typing as npt

from runtime import demux
from runtime.errors import Cancelled, InvalidArgument

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

#: Packets the decoder may refuse in a row, and in all (besides a share of the total), before
#: the stream counts as corrupt: a stray damaged packet is concealed, a damaged stretch is not.
MAX_ERRORS_IN_A_ROW = 8
MAX_ERRORS = 16
MAX_ERROR_SHARE = 0.02


@dataclass(frozen=True)
class Decoded:
    index: int
    #: Seconds from the stream's first frame.
    time: float
    frame: av.VideoFrame
    #: The stream's average frame rate (0 when unknown).
    fps: float


def not_a_video(detail: str = "") -> InvalidArgument:
    message = "the source is not a video that can be decoded"
    return InvalidArgument(f"{message}: {detail}" if detail else message, reason="NOT_A_VIDEO")


def open_source(source: str) -> av.container.InputContainer:
    return demux.open_untrusted(source, what="source", refused=not_a_video)


def decode_frames(
    source: str,
    *,
    stop: threading.Event,
    expected_duration: float = 0.0,
    threads: int = 0,
    reference_only: bool = False,
    skip_loop_filter: bool = False,
) -> Iterator[Decoded]:
    """Every frame of the first video stream of ``source``, in order; with
    ``reference_only``, the frames other frames are predicted from (the decoder skips the
    rest, often most of them: a sampler that wants one frame every few seconds takes the next
    one it gets). ``skip_loop_filter`` leaves out H.264's deblocking filter (and other codecs'
    loop filters): about a sixth less decoding on real 720p video, blockier full-size frames
    that a 256 px analysis frame does not show, not for frames read at full size. Raises
    ``InvalidArgument`` (NOT_A_VIDEO, CORRUPT_VIDEO, TRUNCATED_SOURCE), ``Unavailable`` when
    a URL cannot be read, ``Cancelled`` once ``stop`` is set."""
    with open_source(source) as container:
        if not container.streams.video:
            raise not_a_video("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        if reference_only:
            stream.codec_context.skip_frame = "NONREF"
        if skip_loop_filter:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        base = stream.start_time if stream.start_time is not None else None
        time_base = float(stream.time_base) if stream.time_base is not None else 0.0
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        index = 0
        packets = errors = in_a_row = 0
        last_time = 0.0
        try:
            for packet in container.demux(stream):
                if stop.is_set():
                    raise Cancelled("the request was cancelled")
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    errors += 1
                    in_a_row += 1
                    if in_a_row >= MAX_ERRORS_IN_A_ROW or errors > max(
                        MAX_ERRORS, MAX_ERROR_SHARE * packets
                    ):
                        raise _corrupt(last_time, index) from None
                    continue
                in_a_row = 0
                for frame in frames:
                    if frame.pts is not None and time_base:
                        time = (frame.pts - (base or 0)) * time_base
                    else:
                        time = index / rate if rate else 0.0
                    last_time = max(time, 0.0)
                    yield Decoded(index, last_time, frame, rate)
                    index += 1
        except av.error.HTTPError as exc:
            log.warning("reading the source failed: %s", exc)
            raise demux.unavailable(source) from None
        except av.error.FFmpegError as exc:
            log.info("decoding failed: %s", exc)
            raise demux.unless_unreachable(source, _corrupt(last_time, index)) from None
        if index == 0:
            raise demux.unless_unreachable(
                source, not_a_video("its video stream has no decodable frame")
            )
        end = last_time + (1 / rate if rate else 0.0)
        if expected_duration > 0 and expected_duration - end > max(1.0, 0.05 * expected_duration):
            # A stream cut short by the object store reads as a truncated file.
            raise demux.unless_unreachable(
                source,
                InvalidArgument(
                    f"the video ends after {end:.1f} s of its declared {expected_duration:.1f} s;"
                    " it is truncated or damaged",
                    reason="TRUNCATED_SOURCE",
                ),
            )


def _corrupt(time: float, index: int) -> InvalidArgument:
    return InvalidArgument(
        f"the video stream is corrupt after {time:.1f} s (frame {index}): the decoder cannot "
        "read it",
        reason="CORRUPT_VIDEO",
    )


def fit(
    width: int, height: int, *, longest: int | None = None, width_to: int | None = None
) -> tuple[int, int]:
    """An even size with the aspect ratio of ``width`` x ``height``: the longest side at most
    ``longest``, or the width ``width_to``; never larger than the frame."""
    scale = 1.0
    if longest is not None:
        scale = min(1.0, longest / max(width, height))
    elif width_to is not None:
        scale = min(1.0, width_to / width)
    w = max(2, round(width * scale / 2) * 2)
    h = max(2, round(height * scale / 2) * 2)
    return w, h


def _plane(plane: av.video.plane.VideoPlane, width: int, height: int) -> Image:
    rows: Image = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
    return rows[:height, :width]


def small_bgr(frame: av.VideoFrame, size: tuple[int, int], *, fast: bool = False) -> Image:
    """``frame`` as a BGR image of ``size`` (width, height). ``fast`` shrinks with bilinear
    interpolation (as PySceneDetect's own downscale does) rather than by area averaging: several
    times cheaper, and all the shot detectors need."""
    width, height = size
    if frame.format.name in ("yuv420p", "yuvj420p") and width % 2 == 0 and height % 2 == 0:
        luma = _plane(frame.planes[0], frame.width, frame.height)
        cw, ch = (frame.width + 1) // 2, (frame.height + 1) // 2
        u = _plane(frame.planes[1], cw, ch)
        v = _plane(frame.planes[2], cw, ch)
        area = cv2.INTER_LINEAR if fast else cv2.INTER_AREA
        i420 = np.empty((height * 3 // 2, width), np.uint8)
        i420[:height] = cv2.resize(luma, (width, height), interpolation=area)
        quarter = (width // 2) * (height // 2)
        flat = i420[height:].reshape(-1)
        flat[:quarter] = cv2.resize(u, (width // 2, height // 2), interpolation=area).reshape(-1)
        flat[quarter:] = cv2.resize(v, (width // 2, height // 2), interpolation=area).reshape(-1)
        return np.asarray(cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420), dtype=np.uint8)
    converted = frame.to_ndarray(width=width, height=height, format="bgr24", interpolation="AREA")
    return np.asarray(converted, dtype=np.uint8)


def rotate(image: Image, rotation: int) -> Image:
    """``image`` turned as the stream's display matrix says (degrees, counter-clockwise)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def lower_priority(nice: int) -> None:
    """Makes the calling thread (and the threads it starts: FFmpeg's decoder threads,
    onnxruntime's) ``nice`` steps nicer, where the platform allows it: the vision work then
    takes the cores an encoder leaves idle rather than slowing it."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + nice)


@dataclass(frozen=True)
class Small:
    index: int
    time: float
    image: Image
    fps: float


_DONE = object()


def shrunk_frames(
    source: str,
    *,
    width: int,
    stop: threading.Event,
    expected_duration: float = 0.0,
    threads: int = 0,
    depth: int = 4,
    nice: int = 0,
) -> Generator[Small, None, None]:
    """``decode_frames`` shrunk to ``width`` (bilinear, without the loop filter), decoded and
    shrunk in a thread of its own a few frames ahead of the caller (as PySceneDetect decodes
    beside its detectors), so decoding and analysis use two cores. Its errors are raised here;
    closing this iterator, or setting ``stop``, stops that thread and waits for it."""
    ahead: queue.Queue[object] = queue.Queue(depth)
    done = threading.Event()

    def put(item: object) -> bool:
        while not done.is_set() and not stop.is_set():
            try:
                ahead.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        lower_priority(nice)
        try:
            size = (0, 0)
            for decoded in decode_frames(
                source, stop=_either(stop, done), expected_duration=expected_duration,
                threads=threads, skip_loop_filter=True,
            ):  # fmt: skip
                if size == (0, 0):
                    size = fit(decoded.frame.width, decoded.frame.height, width_to=width)
                small = small_bgr(decoded.frame, size, fast=True)
                if not put(Small(decoded.index, decoded.time, small, decoded.fps)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=decode, name="vision-decode", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = ahead.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    raise Cancelled("the request was cancelled") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Small)
            yield item
    finally:
        done.set()
        thread.join()


class _Either(threading.Event):
    """Set when either of two events is (only ``is_set`` is consulted)."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        super().__init__()
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()


def _either(first: threading.Event, second: threading.Event) -> threading.Event:
    return _Either(first, second)
