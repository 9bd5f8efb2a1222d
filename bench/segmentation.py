"""Topic segmentation: the metadata service's segmenter (``services.metadata.topics``) against
TextTiling (NLTK's ``TextTilingTokenizer``, the classic lexical baseline) on the same transcript,
in one run, scored against the known boundaries.

The input is the generated five-topic talk (``tests/recordings/talk``: 212 s of espeak-ng speech
with no longer pause between topics than between sentences), transcribed once by the real model
(faster-whisper tiny.en, the transcribe service's engine) so both methods read the same
recogniser's errors. The scores: boundary precision, recall and F1 within ±10 s, and Pk (0 is
perfect, ~0.5 a guess); the wall time per minute of speech (the median of the rounds, the
embedding model loaded first). TextTiling gets each sentence as a paragraph (its boundaries can
only fall between paragraphs) and our stopword list.

    python -m bench.segmentation [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import table
from runtime.storage.local import LocalObjectStore
from services.metadata.model import TimedText
from services.metadata.text import STOPWORDS, sentences
from services.metadata.topics import embed_sentences, find_topics
from services.transcribe.model import Outcome, TranscribeOptions
from services.transcribe.server import build_transcriber
from services.transcribe.settings import TranscribeSettings
from services.transcribe.transcriber import AudioRef
from tests.topic_metrics import score

TALK = Path(__file__).resolve().parents[1] / "tests" / "recordings" / "talk"


async def _transcribe(root: Path, path: Path) -> tuple[TimedText, ...]:
    store = LocalObjectStore(root / "objects")
    transcriber = build_transcriber(TranscribeSettings(storage_dir=root / "objects"), store)
    await store.put_file("audio/talk.opus", path, content_type="audio/ogg")
    outcome = None
    async for update in transcriber.transcribe(
        AudioRef("audio/talk.opus"), TranscribeOptions(language="en"), "jobs/bench/"
    ):
        if isinstance(update, Outcome):
            outcome = update
    assert outcome is not None
    return tuple(TimedText(s.start, s.end, s.text, s.id) for s in outcome.transcript.segments)


def _ours(segments: tuple[TimedText, ...], duration: float) -> list[float]:
    return [c.start for c in find_topics(segments, duration).chapters[1:]]


def _texttiling(segments: tuple[TimedText, ...], duration: float) -> list[float]:
    from nltk.tokenize import TextTilingTokenizer

    found = sentences(segments)
    text = "\n\n".join(s.text for s in found)
    tiles = TextTilingTokenizer(stopwords=sorted(STOPWORDS)).tokenize(text)
    boundaries, seen = [], 0
    for tile in tiles[:-1]:
        seen += len([p for p in tile.split("\n\n") if p.strip()])
        if 0 < seen < len(found):
            boundaries.append(found[seen].start)
    return boundaries


def _timed(fn: object, *args: object, rounds: int) -> tuple[list[float], float]:
    times = []
    result: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def main(quick: bool = False) -> None:
    truth = json.loads((TALK / "talk.json").read_text())
    duration = truth["duration_seconds"]
    expected = [t["start_seconds"] for t in truth["topics"][1:]]
    with tempfile.TemporaryDirectory() as scratch:
        segments = asyncio.run(_transcribe(Path(scratch), TALK / "talk.opus"))
    embed_sentences(["warm-up"])  # the model is loaded before anything is timed
    minutes = duration / 60
    rounds = 1 if quick else 3
    rows = []
    for name, method in (("reelmill topics (e5 + DP)", _ours), ("TextTiling (NLTK)", _texttiling)):
        found, wall = _timed(method, segments, duration, rounds=rounds)
        result = score(expected, found, duration, tolerance=10.0)
        rows.append(
            (
                name,
                " ".join(f"{b:.0f}" for b in found),
                f"{result.precision:.2f}",
                f"{result.recall:.2f}",
                f"{result.f1:.2f}",
                f"{result.pk:.3f}",
                f"{wall / minutes * 1000:.0f}",
            )
        )
    print(
        table(
            f"Topic boundaries of the generated talk ({duration:.0f} s, 5 topics; true boundaries"
            f" {' '.join(f'{b:.0f}' for b in expected)} s; {len(segments)} transcript segments)",
            ("method", "boundaries (s)", "P@10s", "R@10s", "F1@10s", "Pk", "ms / min of speech"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
