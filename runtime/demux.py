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
from collections.abc import Callable
from pathlib import Path

import av
import av.error

from runtime.errors import Unavailable

log = logging.getLogger(__name__)

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
        raise Unavailable(f"the {what} could not be read", reason="STORAGE_UNAVAILABLE") from None
    except av.error.FFmpegError as exc:
        log.info("cannot open the %s: %s", what, exc)
        raise refused() from None
