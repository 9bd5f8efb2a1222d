"""TranscodeService: MP4 ladder, HLS, WebM, thumbnails, storyboard, audio and clips with ffmpeg.

Reads top-down: ``__main__`` (settings, run), ``server`` (the ServiceSpec), ``servicer`` (thin
gRPC layer), ``messages`` (wire <-> core), then the core with no gRPC: ``transcoder``
(orchestration), ``steps`` (one function per output), ``commands`` (ffmpeg argument lists),
``plan`` (sizes, rates, times), ``hls`` (playlists), ``ffmpeg_runner`` (subprocess, progress,
errors), ``probe`` (PyAV), ``progress``, ``workspace`` (scratch, slots), ``model`` (data).
"""
