"""Transcription: TranscribeService (in-process grpc.aio server, local object store, cache off)
against bare faster-whisper on the same file with the same model and settings, in one run.

Both use the bundled tiny.en model, int8 on the CPU, beam size 5, word timestamps and the VAD
filter; the model is loaded and warmed up before timing. Bare faster-whisper gets the file path
(it decodes the audio itself, as the service does). Rounds alternate which side goes first;
the table shows the median wall time, the real-time factor (wall / audio duration; lower is
faster) and the service/bare ratio.

    python -m bench.transcribe [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import table
from reelmill.v1 import media_pb2, pipeline_pb2, transcribe_service_pb2, transcribe_service_pb2_grpc
from runtime.ffmpeg import ffmpeg_path
from runtime.server import build_server
from runtime.storage.local import LocalObjectStore
from services.transcribe.server import build_spec, whisper_config
from services.transcribe.settings import TranscribeSettings
from services.transcribe.whisper import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media" / "speech"


def _inputs(root: Path, quick: bool) -> list[tuple[str, Path, float]]:
    jfk = SHARED / "jfk.flac"
    english = root / "english-30s.wav"
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", "-i",
         str(SHARED / "multilingual.mp3"), "-t", "30", "-ac", "1", "-ar", "16000", str(english)],
        check=True,
    )  # fmt: skip
    inputs = [("jfk.flac (11 s)", jfk, 11.0)]
    if not quick:
        inputs.append(("multilingual.mp3, first 30 s", english, 30.0))
    return inputs


def _bare(model: object, path: Path, beam: int) -> float:
    started = time.perf_counter()
    segments, _ = model.transcribe(  # type: ignore[attr-defined]
        str(path), beam_size=beam, word_timestamps=True, vad_filter=True
    )
    for _ in segments:
        pass
    return time.perf_counter() - started


async def _service(stub: transcribe_service_pb2_grpc.TranscribeServiceStub, key: str) -> float:
    request = transcribe_service_pb2.TranscribeRequest(
        audio=media_pb2.ObjectRef(key=key),
        spec=pipeline_pb2.TranscribeSpec(),
        output_prefix="bench/out/",
    )
    started = time.perf_counter()
    async for response in stub.Transcribe(request, timeout=600):
        if response.HasField("result"):
            assert not response.result.cached
    return time.perf_counter() - started


async def run(rounds: int, quick: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = TranscribeSettings(storage_dir=root / "objects", cache_entries=0)
        store = LocalObjectStore(root / "objects")
        config = whisper_config(settings)
        model = await asyncio.to_thread(load_model, config)
        spec = build_spec(settings, store)
        server = build_server(settings)
        spec.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        rows = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = transcribe_service_pb2_grpc.TranscribeServiceStub(channel)
                for label, path, seconds in _inputs(root, quick):
                    key = f"bench/{path.name}"
                    await store.put_file(key, path, content_type="audio/x-unknown")
                    await _service(stub, key)  # warm-up: VAD model, caches
                    await asyncio.to_thread(_bare, model, path, config.beam_size)
                    bare: list[float] = []
                    service: list[float] = []
                    for n in range(rounds):
                        if n % 2 == 0:
                            bare.append(
                                await asyncio.to_thread(_bare, model, path, config.beam_size)
                            )
                            service.append(await _service(stub, key))
                        else:
                            service.append(await _service(stub, key))
                            bare.append(
                                await asyncio.to_thread(_bare, model, path, config.beam_size)
                            )
                    b, s = statistics.median(bare), statistics.median(service)
                    rows.append([label, f"{b:.2f}", f"{b / seconds:.3f}", f"{s:.2f}",
                                 f"{s / seconds:.3f}", f"{s / b:.3f}"])  # fmt: skip
        finally:
            await server.stop(0)
            assert spec.on_close is not None
            await spec.on_close()
        print(
            table(
                f"transcribe: service vs bare faster-whisper ({config.model_name}, "
                f"{config.compute_type}, beam {config.beam_size}, words + VAD; median of {rounds})",
                ["input", "bare s", "bare RTF", "service s", "service RTF", "service/bare"],
                rows,
            )
        )


def main(quick: bool = False) -> None:
    asyncio.run(run(rounds=3 if quick else 5, quick=quick))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.transcribe")
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
