"""What an untrusted media source may be opened with: one allowlist of demuxers and protocols
for every service that reads one (ingest's probe, transcode's ffmpeg and probe, transcribe's
decoder).

Demuxers: self-contained audio/video containers and elementary streams only. Nothing that
names other files or URLs (HLS, DASH, concat, image sequences, SDP, playlists) is listed, so
libavformat refuses such a source with "Format not on whitelist" after probing it, whatever
its name says, before the demuxer reads a line. A demuxer matches when any of its names is
listed (``mov`` stands for ``mov,mp4,m4a,3gp,3g2,mj2``, ``matroska`` for ``matroska,webm``).

Protocols: ``file`` for a local path, and for an http(s) URL (a presigned object URL) the
protocols an HTTPS request is made of. Nothing inside a source can reach another protocol.

``pyav_options`` gives the options for ``av.open`` (``open_untrusted`` opens a source with them);
``ffmpeg_args`` the input options for the ffmpeg command line (they go before ``-i``).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import av
import av.error

from runtime.errors import Unavailable

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Exception)

#: Demuxers an untrusted source may use (libavformat names).
FORMATS: tuple[str, ...] = (
    "mov",
    "matroska",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "mpegvideo",
    "asf",
    "ogg",
    "mxf",
    "nut",
    "ivf",
    "dv",
    "h264",
    "hevc",
    "m4v",
    "wav",
    "w64",
    "aiff",
    "caf",
    "mp3",
    "aac",
    "flac",
    "amr",
    "wv",
    "ac3",
    "eac3",
)
#: Protocols a local file is read with (also for a service's own intermediate files).
LOCAL_PROTOCOLS = "file"
#: Protocols an http(s) URL is read with (https is tls over tcp).
REMOTE_PROTOCOLS = "http,https,tcp,tls"


def is_remote(source: str | Path) -> bool:
    """Whether ``source`` is an http(s) URL; anything else is a local path."""
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def pyav_options(*, remote: bool) -> dict[str, str]:
    """The allowlists as ``av.open`` options, for a local path or a remote URL."""
    return {
        "format_whitelist": ",".join(FORMATS),
        "protocol_whitelist": REMOTE_PROTOCOLS if remote else LOCAL_PROTOCOLS,
    }


def ffmpeg_args(*, remote: bool) -> list[str]:
    """The allowlists as ffmpeg input options, for a local path or a remote URL."""
    options = pyav_options(remote=remote)
    return [
        "-protocol_whitelist",
        options["protocol_whitelist"],
        "-format_whitelist",
        options["format_whitelist"],
    ]


def open_untrusted(
    source: str, *, what: str, refused: Callable[[], Exception]
) -> av.container.InputContainer:
    """``source`` (a local path or an http(s) URL) opened with PyAV under the allowlists.
    Raises ``Unavailable`` (STORAGE_UNAVAILABLE) when a URL cannot be read, ``refused()`` when
    libavformat will not open it (not media, or a format or protocol not allowed)."""
    remote = is_remote(source)
    try:
        return av.open(
            source if remote else f"file:{source}",
            mode="r",
            options=pyav_options(remote=remote),
            metadata_errors="ignore",
            timeout=(30.0, 30.0),
        )
    except av.error.HTTPError as exc:
        log.warning("cannot read the %s URL: %s", what, exc)
        raise unavailable(source, what=what) from None
    except av.error.FFmpegError as exc:
        log.info("cannot open the %s: %s", what, exc)
        raise unless_unreachable(source, refused(), what=what) from None


#: How long the reachability check of a remote source may take.
REACHABLE_TIMEOUT_SECONDS = 3.0


def unreachable(source: str | Path, *, timeout: float = REACHABLE_TIMEOUT_SECONDS) -> bool:
    """Whether a remote ``source`` cannot be read right now: the connection is refused or
    times out, or the server answers 5xx. A decoder that failed on a remote source may have
    failed for that (an object store restarting mid-read cuts the stream short, which reads as
    a truncated file) rather than for the bytes; callers ask this before calling the source
    corrupt, and report a transient error instead when it is so. A local path is never
    unreachable. One ranged GET of one byte (presigned URLs are signed for GET only)."""
    if not is_remote(source):
        return False
    request = urllib.request.Request(str(source), headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return False
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code >= 500
    except (urllib.error.URLError, OSError, TimeoutError):
        return True


#: How long a reader that met an unreadable remote source waits for it to come back before it
#: reports STORAGE_UNAVAILABLE (``configure``: REELMILL_S3_UNREACHABLE_RETRY_SECONDS).
_readable_wait_seconds = 15.0
#: Between two looks at a source that cannot be read.
_READABLE_POLL_SECONDS = 0.5


def configure(*, readable_wait_seconds: float) -> None:
    """Sets how long ``unavailable`` waits for a remote source to become readable again."""
    global _readable_wait_seconds
    _readable_wait_seconds = readable_wait_seconds


def unavailable(source: str | Path, *, what: str = "source") -> Unavailable:
    """The transient error of a remote ``source`` that could not be read, returned once it can
    be read again or the configured wait has passed, whichever is first (blocking: call it in
    a worker thread). An object store that restarts answers its metadata calls before its
    data is readable; a stage retried at once would spend its attempts inside that window,
    while one that waits here is retried when the bytes are back, as the store's own calls
    are (``runtime.storage.s3``)."""
    deadline = time.monotonic() + _readable_wait_seconds
    while time.monotonic() < deadline and unreachable(source):
        time.sleep(_READABLE_POLL_SECONDS)
    return Unavailable(f"the {what} could not be read; try again", reason="STORAGE_UNAVAILABLE")


def unless_unreachable(source: str | Path, error: E, *, what: str = "source") -> E | Unavailable:
    """``error`` (the source looks corrupt, truncated or not media), unless the source is remote
    and cannot be read right now: then Unavailable (STORAGE_UNAVAILABLE, ``unavailable``),
    which is retried."""
    if unreachable(source):
        log.warning("the %s became unreadable while it was read", what)
        return unavailable(source, what=what)
    return error
