"""The one demuxer and protocol allowlist (runtime/demux.py), through real PyAV and real ffmpeg:
media opens, playlists and lists that name other files are refused before they are followed,
and a remote source cannot fall back to local files."""

from __future__ import annotations

import http.server
import subprocess
import threading
from pathlib import Path

import av
import av.error
import pytest

from runtime import demux
from runtime.errors import InvalidArgument, Unavailable
from runtime.ffmpeg import ffmpeg_path
from tests.media import make_clip
from tests.servers import free_port


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demux")
    mp4 = make_clip(root / "clip.mp4", seconds=1.0, width=64, height=48)
    mkv = make_clip(root / "clip.mkv", seconds=1.0, width=64, height=48, container_args=())
    wav = make_clip(
        root / "clip.wav", seconds=1.0, video=False, container_args=("-c:a", "pcm_s16le")
    )
    hls = root / "index.m3u8"
    hls.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
        f"#EXTINF:1.0,\n{mp4}\n#EXT-X-ENDLIST\n"
    )
    concat = root / "list.ffconcat"
    concat.write_text(f"ffconcat version 1.0\nfile '{mp4}'\n")
    return {"mp4": mp4, "mkv": mkv, "wav": wav, "hls": hls, "concat": concat}


def ffmpeg_reads(path: Path) -> subprocess.CompletedProcess[str]:
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin"]
    args += [*demux.ffmpeg_args(remote=False), "-i", f"file:{path}", "-f", "null", "-"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_every_listed_demuxer_exists() -> None:
    # A misspelt name would not widen anything, but the format it meant would be refused.
    assert set(demux.FORMATS) <= av.formats_available
    assert not {"hls", "dash", "concat", "image2", "sdp", "rtsp"} & set(demux.FORMATS)


@pytest.mark.parametrize("name", ["mp4", "mkv", "wav"])
def test_media_opens_with_pyav_and_ffmpeg(clips: dict[str, Path], name: str) -> None:
    with av.open(f"file:{clips[name]}", options=demux.pyav_options(remote=False)) as container:
        assert container.streams.audio
    assert ffmpeg_reads(clips[name]).returncode == 0


@pytest.mark.parametrize("name", ["hls", "concat"])
def test_lists_of_other_files_are_refused_before_they_are_followed(
    clips: dict[str, Path], name: str
) -> None:
    with pytest.raises(av.error.ArgumentError):
        av.open(f"file:{clips[name]}", options=demux.pyav_options(remote=False))
    result = ffmpeg_reads(clips[name])
    assert result.returncode != 0
    assert "not on whitelist" in result.stderr


def test_a_remote_source_cannot_read_local_files(clips: dict[str, Path]) -> None:
    assert "file" not in demux.REMOTE_PROTOCOLS.split(",")
    with pytest.raises(av.error.FFmpegError):
        av.open(f"file:{clips['mp4']}", options=demux.pyav_options(remote=True))
    args = demux.ffmpeg_args(remote=True)
    assert args[args.index("-protocol_whitelist") + 1] == "http,https,tcp,tls"
    assert args[args.index("-format_whitelist") + 1] == ",".join(demux.FORMATS)


def test_only_http_urls_are_remote() -> None:
    assert demux.is_remote("https://s3.example/b/k?X-Amz-Signature=abc")
    assert demux.is_remote("http://127.0.0.1:9000/b/k")
    assert not demux.is_remote("/tmp/x.mp4")
    assert not demux.is_remote("file:/tmp/x.mp4")
    assert not demux.is_remote(Path("https://not/a/url"))


def test_a_failure_on_a_source_that_cannot_be_reached_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder that fails on a remote source calls it corrupt only when the source can still
    be read: a refused connection (an object store restarting mid-read) or a 5xx makes the
    failure Unavailable, which is retried; a local path and a server that answers keep it."""
    monkeypatch.setattr(demux, "_readable_wait_seconds", 0.0)
    corrupt = InvalidArgument("corrupt", reason="CORRUPT_SOURCE")
    closed = f"http://127.0.0.1:{free_port()}/jobs/x/source"
    assert demux.unreachable(closed)
    error = demux.unless_unreachable(closed, corrupt)
    assert isinstance(error, Unavailable) and error.reason == "STORAGE_UNAVAILABLE"
    assert demux.unless_unreachable(str(tmp_path / "missing.mp4"), corrupt) is corrupt

    class Answers(http.server.BaseHTTPRequestHandler):
        status = 206

        def do_GET(self) -> None:
            self.send_response(type(self).status)
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"x")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/source"
        assert demux.unless_unreachable(url, corrupt) is corrupt  # it answers: really corrupt
        Answers.status = 403  # refused, but there: not a transient failure
        assert demux.unless_unreachable(url, corrupt) is corrupt
        Answers.status = 503
        assert isinstance(demux.unless_unreachable(url, corrupt), Unavailable)
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreadable_source_is_reported_once_it_is_back_or_the_wait_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``unavailable`` waits while the store answers 5xx (a restarting SeaweedFS serves HEAD
    before its data), so the stage's retry finds the bytes; it gives up after the wait."""
    answers = [503, 503, 503, 206]

    class Restarting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers.pop(0) if len(answers) > 1 else answers[0])
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"x")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Restarting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/source"
        monkeypatch.setattr(demux, "_READABLE_POLL_SECONDS", 0.01)
        monkeypatch.setattr(demux, "_readable_wait_seconds", 60.0)
        error = demux.unavailable(url)
        assert error.reason == "STORAGE_UNAVAILABLE"
        assert answers == [206]  # it looked until the store answered again, and no longer
        # Never back: the wait ends (a refused connection, the store still down).
        demux.configure(readable_wait_seconds=0.2)
        closed = f"http://127.0.0.1:{free_port()}/source"
        assert demux.unavailable(closed).reason == "STORAGE_UNAVAILABLE"
    finally:
        demux.configure(readable_wait_seconds=15.0)
        server.shutdown()
        server.server_close()
