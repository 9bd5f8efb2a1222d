"""Generated media fixtures (ffmpeg lavfi), cached per session."""

from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.ffmpeg import ffmpeg_path


def make_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    audio: bool = True,
    video: bool = True,
    container_args: tuple[str, ...] = ("-movflags", "+faststart"),
) -> Path:
    """Writes an H.264/AAC test clip (testsrc2 + a sine tone)."""
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        ]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "96k"]
    args += [*container_args, str(path)]
    subprocess.run(args, check=True)
    return path


def make_speech_clip(path: Path, speech: Path, *, width: int = 320, height: int = 240) -> Path:
    """A video of a test pattern whose audio track is ``speech`` (as long as the speech)."""
    args = [
        ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25",
        "-i", str(speech), "-shortest",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    subprocess.run(args, check=True)
    return path
