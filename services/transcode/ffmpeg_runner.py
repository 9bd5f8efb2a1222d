"""Running ffmpeg: an argument list (never a shell), real progress, sanitized errors, and a
process that never outlives its caller.

``FfmpegRunner.run`` starts ffmpeg with ``asyncio.create_subprocess_exec``, reads the
``-progress pipe:1`` key=value blocks from stdout and reports each as an ``FfmpegProgress``
(``out_time`` against the expected duration, clamped to 0..1), and keeps the last 64 KiB of
stderr for the log. Callers never see that stderr: a failure becomes a ``runtime.errors``
error with a fixed message and a reason (``CORRUPT_SOURCE``, ``UNSUPPORTED_FORMAT``,
``SOURCE_NOT_FOUND``, ``SOURCE_UNAVAILABLE``, ``SCRATCH_FULL``; anything
else is ``Internal``). If the awaiting task is cancelled, ffmpeg gets SIGTERM, a second one
half a second later (only that one breaks a blocking read), then SIGKILL after
``terminate_timeout`` seconds, is reaped, and the ``CancelledError`` propagates.

Untrusted sources are opened only through ``source_input_args``, with the allowlists of
``runtime.demux`` (the same as ingest's and transcribe's):
- ``-protocol_whitelist`` is ``file`` for a local path and ``http,https,tcp,tls`` for a URL, so
  nothing inside the file can make a demuxer reach another protocol.
- ``-format_whitelist`` lists the media demuxers we accept (``demux.FORMATS``). libavformat
  checks it after probing, whatever the file name or the caller's probe said, so an HLS
  playlist, an ffconcat list, an image sequence or anything else that reads *other* files
  fails with "Format not on whitelist" (UNSUPPORTED_FORMAT) instead of being followed. That is
  more robust than forcing ``-f`` from the caller's probe (which we would have to trust) or
  name checks (which a renamed file defeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime import demux
from runtime.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    ReelmillError,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

STDERR_LIMIT = 64 * 1024
#: Seconds between the two SIGTERMs that stop a run (``FfmpegRunner._stop``).
SECOND_SIGNAL_AFTER = 0.5
COMMON_ARGS: tuple[str, ...] = (
    "-nostdin",
    "-hide_banner",
    "-loglevel",
    "error",
    "-y",
    "-progress",
    "pipe:1",
    "-nostats",
    "-stats_period",
    "0.5",
)


def source_url(media_url: str) -> str:
    """What ffmpeg is given for a store's ``media_url``: http(s) URLs as they are, local paths
    as absolute ``file:`` URLs (so a path can never be read as an option or a protocol)."""
    if media_url.startswith(("http://", "https://")):
        return media_url
    path = media_url.removeprefix("file://") if media_url.startswith("file://") else media_url
    return "file:" + str(Path(path).resolve())


def source_input_args(url: str, *, seek: float | None = None) -> list[str]:
    """Input options and ``-i`` for an untrusted source (``url`` from ``source_url``).
    ``seek`` seeks on the input (fast: demuxer seek, then decode to the exact time)."""
    remote = demux.is_remote(url)
    args = demux.ffmpeg_args(remote=remote)
    if remote:
        # A stalled or dropped connection errors out or resumes instead of hanging or ending
        # the output early (which would look like a truncated source).
        args += ["-rw_timeout", "30000000", "-reconnect", "1", "-reconnect_on_network_error", "1"]
        args += ["-reconnect_delay_max", "10"]
    if seek is not None and seek > 0:
        # Rounded up to the microsecond (ffmpeg's unit): a seek to a keyframe's exact time
        # must not land before it, on the keyframe before.
        args += ["-ss", f"{math.ceil(seek * 1_000_000 - 1e-6) / 1_000_000:.6f}"]
    return [*args, "-i", url]


@dataclass(frozen=True)
class FfmpegProgress:
    #: Seconds of output written so far.
    out_time: float
    #: Relative to real time; 0 when unknown.
    speed: float
    #: ``out_time`` over the expected duration, 0..1 (0 when the duration is unknown).
    fraction: float
    #: The last block (``progress=end``).
    done: bool


ProgressCallback = Callable[[FfmpegProgress], None]


class ProgressParser:
    """Turns ``-progress`` output lines into one ``FfmpegProgress`` per block."""

    def __init__(self, duration: float | None) -> None:
        self.duration = duration if duration and duration > 0 else None
        self.out_time = 0.0
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> FfmpegProgress | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        key, value = key.strip(), value.strip()
        if key != "progress":
            self._block[key] = value
            return None
        block, self._block = self._block, {}
        return self._finish(block, done=value == "end")

    def _finish(self, block: Mapping[str, str], *, done: bool) -> FfmpegProgress:
        # out_time_ms is, despite its name, microseconds too (a historical ffmpeg quirk).
        for key in ("out_time_us", "out_time_ms"):
            micros = _number(block.get(key))
            if micros is not None and micros >= 0:
                self.out_time = max(self.out_time, micros / 1_000_000)
                break
        speed = _number(block.get("speed", "").removesuffix("x")) or 0.0
        fraction = 0.0
        if self.duration:
            fraction = min(1.0, max(0.0, self.out_time / self.duration))
        if done and self.duration:
            fraction = 1.0
        return FfmpegProgress(self.out_time, speed, fraction, done)


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class FfmpegResult:
    #: Seconds of output media written (from the last progress block).
    out_time: float
    #: Wall-clock seconds the run took.
    elapsed: float


_PATTERNS: tuple[tuple[re.Pattern[str], type[ReelmillError], str, str], ...] = (
    (
        re.compile(r"not on whitelist"),
        InvalidArgument,
        "UNSUPPORTED_FORMAT",
        "the source is not a media format the service accepts",
    ),
    (
        re.compile(r"Server returned 404|HTTP error 404|No such file or directory"),
        NotFound,
        "SOURCE_NOT_FOUND",
        "the source could not be found",
    ),
    (
        re.compile(
            r"Server returned (?:40[13]|5\d\d)|HTTP error (?:40[13]|5\d\d)|Connection refused"
            r"|Connection timed out|Connection reset|Network is unreachable|Operation timed out"
        ),
        Unavailable,
        "SOURCE_UNAVAILABLE",
        "the source could not be read; try again",
    ),
    (
        re.compile(
            r"Invalid data found|moov atom not found|could not find codec parameters"
            r"|partial file|corrupt|Invalid NAL|[Ee]rror while decoding|Decoding error"
            r"|does not contain any stream|Error opening input|no frame!|End of file"
            r"|Could not open codec|Error splitting the input",
            re.IGNORECASE,
        ),
        InvalidArgument,
        "CORRUPT_SOURCE",
        "the source could not be decoded; it is corrupt or not a supported video",
    ),
)


def remote_inputs(args: Sequence[str]) -> list[str]:
    """The http(s) URLs an ffmpeg command line reads (its ``-i`` arguments)."""
    return [b for a, b in itertools.pairwise(args) if a == "-i" and demux.is_remote(b)]


def classify_failure(stderr: str, *, reads_source: bool) -> ReelmillError:
    """The error a caller sees for a failed run; ``stderr`` only picks the class."""
    if "No space left on device" in stderr:
        return ResourceExhausted("out of scratch space", reason="SCRATCH_FULL")
    if reads_source:
        for pattern, cls, reason, message in _PATTERNS:
            if pattern.search(stderr):
                return cls(message, reason=reason)
    return Internal("ffmpeg failed")


class FfmpegRunner:
    """Runs ffmpeg; one instance per process, shared by every request."""

    def __init__(
        self,
        binary: str,
        *,
        terminate_timeout: float = 5.0,
        stderr_limit: int = STDERR_LIMIT,
    ) -> None:
        self.binary = binary
        self.terminate_timeout = terminate_timeout
        self.stderr_limit = stderr_limit

    async def run(
        self,
        args: Sequence[str],
        *,
        duration: float | None = None,
        on_progress: ProgressCallback | None = None,
        reads_source: bool = True,
        redact: Sequence[str] = (),
        what: str = "ffmpeg",
    ) -> FfmpegResult:
        """Runs ``ffmpeg COMMON_ARGS args`` to completion.

        ``duration`` is the media time the run should produce (progress fractions are against
        it). ``reads_source``: the run reads the untrusted source, so input failures are the
        caller's (INVALID_ARGUMENT and friends) rather than ours (INTERNAL). ``redact``:
        strings (a presigned URL) replaced in what is logged.

        ffmpeg exits cleanly on a truncated file (it decodes what is there), so callers
        check the outputs' durations (``steps.ensure_complete``)."""
        parser = ProgressParser(duration)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            *COMMON_ARGS,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own session: a Ctrl-C on the terminal reaches the service, which drains
            # (letting this run finish) or cancels it, rather than killing ffmpeg under it.
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr = bytearray()
        stderr_task = asyncio.create_task(
            self._drain(proc.stderr, stderr), name=f"ffmpeg-stderr-{proc.pid}"
        )
        try:
            while line := await proc.stdout.readline():
                update = parser.feed(line.decode("utf-8", "replace"))
                if update is not None and on_progress is not None:
                    on_progress(update)
            await stderr_task
            returncode = await proc.wait()
        except BaseException:
            stderr_task.cancel()
            await self._stop(proc)
            log.info("ffmpeg stopped", extra={"what": what, "pid": proc.pid})
            raise
        elapsed = time.monotonic() - started
        text = stderr.decode("utf-8", "replace")
        if returncode != 0:
            error = classify_failure(text, reads_source=reads_source)
            self._log_failure(what, args, text, returncode, redact, error)
            if isinstance(error, InvalidArgument):
                # A stream an object store cut short reads as a corrupt or truncated source.
                for source in remote_inputs(args):
                    error = await asyncio.to_thread(demux.unless_unreachable, source, error)
            raise error
        return FfmpegResult(parser.out_time, elapsed)

    async def iter_progress(
        self,
        args: Sequence[str],
        *,
        duration: float | None = None,
        reads_source: bool = True,
        redact: Sequence[str] = (),
        what: str = "ffmpeg",
    ) -> AsyncIterator[FfmpegProgress]:
        """``run`` as an async iterator of its progress; ends when ffmpeg succeeds, raises when
        it fails, and stops ffmpeg if the consumer stops early or is cancelled."""
        queue: asyncio.Queue[FfmpegProgress | None] = asyncio.Queue()
        task = asyncio.create_task(
            self.run(
                args,
                duration=duration,
                on_progress=queue.put_nowait,
                reads_source=reads_source,
                redact=redact,
                what=what,
            ),
            name=f"ffmpeg-{what}",
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (update := await queue.get()) is not None:
                yield update
            await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    async def check(self) -> None:
        """Raises unless the binary runs (health checks)."""
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-hide_banner",
            "-version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            returncode = await asyncio.wait_for(proc.wait(), 10)
        except BaseException:
            await self._stop(proc)
            raise
        if returncode != 0:
            raise RuntimeError(f"{self.binary} -version exited with {returncode}")

    async def _drain(self, stream: asyncio.StreamReader, buffer: bytearray) -> None:
        while chunk := await stream.read(8192):
            buffer += chunk
            if len(buffer) > self.stderr_limit:
                del buffer[: len(buffer) - self.stderr_limit]

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, SIGTERM again, wait, SIGKILL, reap. A second cancel while waiting still
        kills it.

        ffmpeg acts on its first signal between packets only: blocked in a read (a source
        server that stalls), it would carry on until ``-rw_timeout`` or our SIGKILL. From the
        second signal on it also aborts blocking I/O. The pause between the two lets the first
        arrive on its own (pending signals of one kind merge) and a quick exit need no more."""
        if proc.returncode is not None:
            return
        first = min(SECOND_SIGNAL_AFTER, self.terminate_timeout)
        try:
            if await _terminate(proc, first):
                return
            if await _terminate(proc, self.terminate_timeout - first):
                return
            log.warning("ffmpeg ignored SIGTERM; killing it", extra={"pid": proc.pid})
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    def _log_failure(
        self,
        what: str,
        args: Sequence[str],
        stderr: str,
        returncode: int,
        redact: Sequence[str],
        error: ReelmillError,
    ) -> None:
        def clean(text: str) -> str:
            for secret in redact:
                if secret:
                    text = text.replace(secret, "<source>")
            return text

        log.warning(
            "ffmpeg failed",
            extra={
                "what": what,
                "returncode": returncode,
                "reason": error.reason,
                "ffmpeg_args": clean(" ".join(args)),
                "stderr": clean(stderr[-8192:]),
            },
        )


async def _terminate(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """SIGTERM; whether ffmpeg exits within ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True
