"""A sample video for demos, generated with ffmpeg (no download, nothing shipped).

Server-side tooling, like ``reelmill.cli.up``: it finds ffmpeg as the services do
(``runtime.ffmpeg``), so only ``reelmill demo`` imports it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.ffmpeg import ffmpeg_path


def make_sample(path: Path, seconds: int = 12) -> Path:
    """A 640x360 H.264/AAC clip: a moving test pattern and a tone that changes pitch."""
    subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=640x360:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=330:beep_factor=4:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    return path
