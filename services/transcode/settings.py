"""The transcode process's settings (``REELMILL_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from runtime.settings import ServiceSettings


class TranscodeSettings(ServiceSettings):
    #: Calls served at once (0 = no limit); beyond them and the queue: RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = Field(default=32, ge=0, le=100_000)
    listen: str = "127.0.0.1:50062"
    #: ffmpeg binary; unset uses the system ffmpeg, else the one imageio-ffmpeg ships.
    ffmpeg_path: str | None = None
    #: x264 preset when a spec names none.
    transcode_preset: str = "veryfast"
    #: Transcodes run at once per process (each already uses every core).
    max_concurrent_transcodes: int = Field(default=1, ge=1, le=64)
    #: Requests waiting for a slot before new ones get RESOURCE_EXHAUSTED.
    max_queued_transcodes: int = Field(default=16, ge=0, le=10_000)
    #: Audio extractions run at once per process.
    max_concurrent_audio: int = Field(default=2, ge=1, le=64)
    #: ``-threads`` per encoder; 0 = the CPUs the process may use under a cgroup CPU limit
    #: (a Kubernetes limit), else ffmpeg's own choice.
    ffmpeg_threads: int = Field(default=0, ge=0, le=256)
    #: libvpx-vp9 ``-cpu-used`` for WebM (0 slowest/best to 8 fastest).
    vp9_cpu_used: int = Field(default=4, ge=0, le=8)
    #: Seconds ffmpeg gets to exit after SIGTERM on cancel before SIGKILL.
    ffmpeg_terminate_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    #: Uploads in flight per request.
    upload_concurrency: int = Field(default=8, ge=1, le=64)
