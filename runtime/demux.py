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

``pyav_options`` gives the options for ``av.open``; ``ffmpeg_args`` the input options for the
ffmpeg command line (they go before ``-i``).
"""

from __future__ import annotations

from pathlib import Path

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
