"""Locating the ffmpeg binary: an explicit setting, the system ffmpeg, or imageio-ffmpeg's."""

from __future__ import annotations

import functools
import shutil


@functools.cache
def ffmpeg_path(configured: str | None = None) -> str:
    if configured:
        return configured
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())
