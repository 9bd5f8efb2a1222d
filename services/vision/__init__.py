"""VisionService: what is on screen — shots (cuts, dissolves, fades) and on-screen text.

Reads top-down: ``__main__`` (settings, run), ``server`` (the ServiceSpec), ``servicer`` (thin
gRPC layer), ``messages`` (wire <-> core), then the core with no gRPC: ``vision`` (requests:
source, slots, worker thread, artifacts), ``frames`` (PyAV decoding at reduced size, streamed),
``shots`` (PySceneDetect's cut detectors, the gradual-transition check, keyframes), ``ocr``
(rapidocr with its bundled models), ``text`` (sampling times and deduplication of lines into
entries), ``formats`` (JSON and WebVTT), ``model`` (data).
"""
