"""Audio in: any file PyAV decodes, as 16 kHz mono float32 samples (what Whisper expects).

The demuxer only sees what it is allowed to (``runtime.demux``, as in every service):
self-contained audio/video containers (no HLS, DASH, concat or anything else that names other
files or URLs), the ``file`` protocol for local paths and ``http(s)`` for presigned object
URLs. Decoding is blocking: run it in a worker thread; it checks ``stop`` between frames so a
cancelled call does not decode on.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import av
import av.error
import numpy as np
import numpy.typing as npt

from runtime import demux
from runtime.errors import Cancelled, InvalidArgument

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

Samples = npt.NDArray[np.float32]

#: Samples grouped per resampler call (about 30 s at 16 kHz).
_GROUP = 500_000


def not_audio(detail: str = "") -> InvalidArgument:
    message = "the audio object is not a file that can be decoded"
    return InvalidArgument(f"{message}: {detail}" if detail else message, reason="NOT_AUDIO")


def decode_audio(
    source: str, *, stop: threading.Event, max_seconds: float | None = None
) -> Samples:
    """The first audio stream of ``source`` (a local path or an http(s) URL) as 16 kHz mono
    float32 samples in [-1, 1]. Raises ``InvalidArgument`` (NOT_AUDIO, AUDIO_TOO_LONG),
    ``Unavailable`` when a URL cannot be read, ``Cancelled`` once ``stop`` is set."""
    container = demux.open_untrusted(source, what="audio object", refused=not_audio)
    buffer = io.BytesIO()
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        with container:
            if not container.streams.audio:
                raise not_audio("it has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in _resampled(_grouped(_frames(container, stop)), resampler):
                buffer.write(frame.to_ndarray().tobytes())
                if limit is not None and buffer.tell() // 2 > limit:
                    raise InvalidArgument(
                        f"the audio is longer than the {max_seconds:g} s this service accepts",
                        reason="AUDIO_TOO_LONG",
                    )
    except av.error.FFmpegError as exc:
        log.info("cannot decode the audio: %s", exc)
        raise not_audio() from None
    pcm = np.frombuffer(buffer.getbuffer(), dtype=np.int16)
    samples: Samples = pcm.astype(np.float32) / 32768.0
    return samples


def _frames(
    container: av.container.InputContainer, stop: threading.Event
) -> Iterator[av.AudioFrame]:
    packets = container.demux(container.streams.audio[0])
    for packet in packets:
        if stop.is_set():
            raise Cancelled("the transcription was cancelled", reason="CANCELLED")
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # a damaged packet: skip it as players do
        for frame in frames:
            if isinstance(frame, av.AudioFrame):
                yield frame


def _grouped(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    fifo = av.AudioFifo()
    for frame in frames:
        frame.pts = None  # the FIFO checks timestamps; gaps in them do not matter here
        fifo.write(frame)
        if fifo.samples >= _GROUP and (group := fifo.read()) is not None:
            yield group
    if fifo.samples > 0 and (rest := fifo.read()) is not None:
        yield rest


def _resampled(
    frames: Iterator[av.AudioFrame], resampler: av.AudioResampler
) -> Iterator[av.AudioFrame]:
    for frame in frames:
        for out in resampler.resample(frame):
            if out is not None:
                yield out
    for out in resampler.resample(None):
        if out is not None:
            yield out


def encode_flac(samples: Samples) -> bytes:
    """16 kHz mono FLAC of ``samples`` (what the Gemini engine sends: lossless, half the size
    of WAV)."""
    output = io.BytesIO()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    with av.open(output, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        step = SAMPLE_RATE * 10
        for start in range(0, len(pcm), step):
            chunk = pcm[start : start + step]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return output.getvalue()
