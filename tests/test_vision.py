"""The vision core on real clips: PySceneDetect's own test videos (their known cuts and
fades), generated clips cut, cross-faded and captioned at known frames, and the real PP-OCR
models of the rapidocr wheel. Shots are asserted against ground truth within 2 frames,
gradual transitions within their span, text by word recall against the captions drawn."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from reelmill.v1 import pipeline_pb2
from runtime.durations import duration_message
from runtime.errors import InvalidArgument
from runtime.storage.local import LocalObjectStore
from services.vision import messages
from services.vision.frames import shrunk_frames
from services.vision.model import (
    Detector,
    OcrOptions,
    Scenes,
    ShotOptions,
    ShotsOutcome,
    TextEntry,
    TextOutcome,
    TransitionKind,
)
from services.vision.ocr import OcrConfig, OcrEngine, bundled_models
from services.vision.server import build_vision
from services.vision.settings import VisionSettings
from services.vision.shots import ShotFinder
from services.vision.text import normalise
from services.vision.vision import SourceRef, VideoFacts
from tests.conftest import SHARED_MEDIA
from tests.vision_media import (
    Blend,
    Caption,
    make_caption_clip,
    make_cuts_clip,
    make_motion_clip,
    make_transitions_clip,
)

VIDEOS = SHARED_MEDIA / "video"
TOLERANCE = 2
CAPTIONS = (
    Caption("Welcome to the annual meeting", 0.5, 5.0, 60, 40),
    Caption("Quarterly revenue grew", 1.0, 9.5, 60, 440),
    Caption("Thank you for watching", 7.0, 11.5, 200, 240, 48),
)


def analyse(path: Path, options: ShotOptions | None = None, fps: float = 0.0) -> Scenes:
    """The scenes stage's own analysis of ``path`` (frames as the service shrinks them)."""
    finder: ShotFinder | None = None
    for small in shrunk_frames(str(path), width=256, stop=threading.Event()):
        if finder is None:
            finder = ShotFinder(options or ShotOptions(), fps or small.fps)
        finder.push(small.index, small.time, small.image)
    assert finder is not None
    return finder.finish()


def cuts(scenes: Scenes) -> list[int]:
    return [t.start_frame for t in scenes.transitions if t.kind is TransitionKind.CUT]


def gradual(scenes: Scenes) -> list[tuple[TransitionKind, int, int]]:
    return [
        (t.kind, t.start_frame, t.end_frame)
        for t in scenes.transitions
        if t.kind is not TransitionKind.CUT
    ]


def matched(found: list[int], truth: list[int]) -> tuple[float, float]:
    """Precision and recall of cut frames within ``TOLERANCE`` frames."""
    hits = {t for t in truth if any(abs(t - f) <= TOLERANCE for f in found)}
    true_found = [f for f in found if any(abs(t - f) <= TOLERANCE for t in truth)]
    precision = len(true_found) / len(found) if found else 1.0
    return precision, len(hits) / len(truth) if truth else 1.0


def check_keyframes(scenes: Scenes) -> None:
    """Every keyframe lies inside its shot, outside every gradual transition, and is lit."""
    for shot in scenes.shots:
        key = shot.keyframe
        assert shot.start_frame <= key.frame <= shot.end_frame
        assert key.brightness >= 24, shot
        for t in scenes.transitions:
            if t.kind is not TransitionKind.CUT:
                assert not t.start_frame <= key.frame <= t.end_frame, (shot, t)
    starts = [s.start_frame for s in scenes.shots]
    assert starts == sorted(starts) and starts[0] == 0
    for before, after in zip(scenes.shots, scenes.shots[1:], strict=False):
        assert before.end_frame + 1 == after.start_frame
        assert before.end == pytest.approx(after.start)


# -- shots -------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", [Detector.ADAPTIVE, Detector.CONTENT])
def test_pyscenedetect_testvideo_cuts_and_fades(detector: Detector) -> None:
    """testvideo.mp4: hard cuts at 30 and 180 (every detector's golden), a fade in from black
    (ends about 240), a fade out (330-360) and in (394-420) through black, a dissolve
    (530-558) and a fade out at the end (666-692); the goldens' other boundaries (394, and
    Adaptive's 691) are the edges of those fades."""
    scenes = analyse(VIDEOS / "testvideo.mp4", ShotOptions(detector=detector), fps=29.97)
    assert cuts(scenes) == pytest.approx([30, 180], abs=TOLERANCE)
    kinds = [kind for kind, _, _ in gradual(scenes)]
    assert kinds == [
        TransitionKind.FADE_IN,
        TransitionKind.FADE_OUT,
        TransitionKind.FADE_IN,
        TransitionKind.DISSOLVE,
        TransitionKind.FADE_OUT,
    ]
    truth = [(212, 240), (330, 360), (394, 421), (529, 558), (665, 692)]
    for (_, start, end), (true_start, true_end) in zip(gradual(scenes), truth, strict=True):
        assert true_start - TOLERANCE <= start <= end <= true_end + TOLERANCE
        assert (end - start) >= 0.6 * (true_end - true_start)
    golden = [30, 180, 394, 691]  # AdaptiveDetector's boundaries in PySceneDetect's goldens
    spans = [(t.start_frame, t.end_frame) for t in scenes.transitions]
    for frame in golden:
        assert any(s - TOLERANCE <= frame <= e + TOLERANCE for s, e in spans), frame
    check_keyframes(scenes)


def test_pyscenedetect_counter_and_fades() -> None:
    """counter.mp4: AdaptiveDetector's golden cut at frame 20; fades.mp4 (solid frames that
    only change brightness) has no cut for any detector and no shot change at all."""
    counter = analyse(VIDEOS / "counter.mp4", fps=10.0)
    assert cuts(counter) == [20]
    assert [s.start_frame for s in counter.shots] == [0, 20]
    fades = analyse(VIDEOS / "fades.mp4", fps=25.0)
    assert fades.transitions == ()
    assert len(fades.shots) == 1 and fades.shots[0].end_frame == 249


@pytest.mark.parametrize("detector", [Detector.ADAPTIVE, Detector.CONTENT])
def test_generated_hard_cuts_are_found_exactly(tmp_path: Path, detector: Detector) -> None:
    truth = make_cuts_clip(tmp_path / "cuts.mp4", [40, 33, 50, 27, 61, 30])
    scenes = analyse(tmp_path / "cuts.mp4", ShotOptions(detector=detector))
    precision, recall = matched(cuts(scenes), truth)
    assert (precision, recall) == (1.0, 1.0), (cuts(scenes), truth)
    assert gradual(scenes) == []
    assert [s.start_frame for s in scenes.shots] == [0, *truth]
    check_keyframes(scenes)


def test_cross_fades_and_fades_through_black_are_transitions_with_their_span(
    tmp_path: Path,
) -> None:
    """One-second xfades that PySceneDetect's detectors alone miss: each is found within its
    span, the shot boundary falls inside it, and no cut is reported for it."""
    blends = make_transitions_clip(tmp_path / "x.mp4", 3.0, ["fade", "fadeblack", "fade"])
    scenes = analyse(tmp_path / "x.mp4")
    assert cuts(scenes) == []
    found = gradual(scenes)

    def inside(blend: Blend) -> list[tuple[TransitionKind, int, int]]:
        return [
            f
            for f in found
            if blend.start_frame - TOLERANCE <= f[1] and f[2] <= blend.end_frame + TOLERANCE
        ]

    assert [k for k, _, _ in inside(blends[0])] == [TransitionKind.DISSOLVE]
    assert [k for k, _, _ in inside(blends[1])] == [TransitionKind.FADE_OUT, TransitionKind.FADE_IN]
    assert [k for k, _, _ in inside(blends[2])] == [TransitionKind.DISSOLVE]
    assert len(found) == 4  # nothing else
    for blend in (blends[0], blends[2]):
        (_, start, end) = inside(blend)[0]
        assert end - start >= 0.6 * (blend.end_frame - blend.start_frame)
    boundaries = [s.start_frame for s in scenes.shots[1:]]
    assert len(boundaries) == 3
    for boundary, blend in zip(boundaries, blends, strict=True):
        assert blend.start_frame <= boundary <= blend.end_frame
    check_keyframes(scenes)


@pytest.mark.parametrize("detector", [Detector.ADAPTIVE, Detector.CONTENT])
def test_fast_motion_inside_a_shot_is_no_cut(tmp_path: Path, detector: Detector) -> None:
    make_motion_clip(tmp_path / "m.mp4")
    scenes = analyse(tmp_path / "m.mp4", ShotOptions(detector=detector))
    assert scenes.transitions == ()
    assert len(scenes.shots) == 1


def test_memory_stays_bounded_whatever_the_frame_count() -> None:
    """Frames are folded into their shot after a fixed delay: what the finder holds does not
    grow with the video (2,500 frames of one long shot here)."""
    finder = ShotFinder(ShotOptions(), 25.0)
    rng = np.random.default_rng(1)
    base = rng.integers(40, 200, (144, 256, 3), dtype=np.uint8)
    held = []
    for index in range(2500):
        finder.push(index, index / 25, np.roll(base, index % 7, axis=1))
        held.append(len(finder.recent) + (len(finder.gradual.window) if finder.gradual else 0))
    assert max(held) == max(held[800:]) <= finder.delay + 2 * finder.gradual.longest + 1  # type: ignore[union-attr]
    assert len(finder.finish().shots) == 1


# -- on-screen text ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caption_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "captions.mp4"
    make_caption_clip(path, CAPTIONS)
    return path


@pytest.fixture(scope="module")
def vision_store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("vision-objects"), bucket="local")


async def run_shots(store: LocalObjectStore, key: str, options: ShotOptions) -> ShotsOutcome:
    vision = build_vision(VisionSettings(), store)
    async for update in vision.detect_shots(SourceRef(key), VideoFacts(), options, "jobs/t/"):
        if isinstance(update, ShotsOutcome):
            return update
    raise AssertionError("no outcome")


async def run_ocr(
    store: LocalObjectStore, key: str, scenes: Scenes | None, facts: VideoFacts
) -> TextOutcome:
    vision = build_vision(VisionSettings(), store)
    async for update in vision.read_text(SourceRef(key), facts, scenes, OcrOptions(), "jobs/t/"):
        if isinstance(update, TextOutcome):
            return update
    raise AssertionError("no outcome")


def word_recall(entries: tuple[TextEntry, ...], captions: tuple[Caption, ...]) -> float:
    read = {normalise(w) for e in entries for w in e.text.split()}
    truth = [normalise(w) for c in captions for w in c.text.split()]
    return sum(1 for w in truth if w in read) / len(truth)


async def test_captions_are_read_once_each_with_their_time_and_place(
    caption_clip: Path, vision_store: LocalObjectStore
) -> None:
    await vision_store.put_file("captions.mp4", caption_clip, content_type="video/mp4")
    shots = await run_shots(vision_store, "captions.mp4", ShotOptions())
    assert [s.start_frame for s in shots.scenes.shots] == [0, 150]
    text = await run_ocr(
        vision_store, "captions.mp4", shots.scenes, VideoFacts(duration=12.0, fps=25.0)
    )
    entries = text.text.entries
    assert word_recall(entries, CAPTIONS) >= 0.9
    # One entry per caption however many samples saw it (deduplicated), in order.
    assert len(entries) == len(CAPTIONS), entries
    for entry, caption in zip(sorted(entries, key=lambda e: e.start), CAPTIONS, strict=True):
        assert normalise(entry.text) == normalise(caption.text)
        assert entry.samples >= 2
        assert caption.start - 0.05 <= entry.first_seen <= entry.last_seen <= caption.end + 0.05
        assert entry.box.left == pytest.approx(caption.x / 960, abs=0.03)
        assert entry.box.top == pytest.approx(caption.y / 540, abs=0.04)
        assert entry.confidence >= 0.9
    assert text.text.frames_examined == 8  # 2 keyframes + the 2 s grid in two 6 s shots
    names = {a.name for a in (*shots.artifacts, *text.artifacts)}
    assert names == {"vision/scenes.json", "vision/ocr.json", "vision/ocr.vtt"}
    vtt = (await vision_store.stat("jobs/t/vision/ocr.vtt")).size
    assert vtt > 0


async def test_a_video_without_text_yields_no_entries(
    tmp_path: Path, vision_store: LocalObjectStore
) -> None:
    make_cuts_clip(tmp_path / "bars.mp4", [30, 30])
    await vision_store.put_file("bars.mp4", tmp_path / "bars.mp4", content_type="video/mp4")
    text = await run_ocr(vision_store, "bars.mp4", None, VideoFacts(duration=2.4, fps=25.0))
    assert text.text.entries == ()
    assert text.text.frames_examined == 2


def test_the_ocr_models_are_the_bundled_ones_and_nothing_is_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rapidocr
    from rapidocr.utils import download_file

    models = bundled_models()
    package = Path(rapidocr.__file__).parent
    for path in (models.detection, models.classification, models.recognition):
        assert path.is_file() and package in path.parents

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("rapidocr tried to download a file")

    monkeypatch.setattr(download_file.DownloadFile, "run", refuse)
    engine = OcrEngine(OcrConfig(models=models, threads=1))
    engine.load()
    image = np.full((120, 400, 3), 255, np.uint8)
    assert engine.read(image, min_confidence=0.5) == []


def test_missing_models_fail_the_health_check(tmp_path: Path) -> None:
    models = bundled_models()
    engine = OcrEngine(
        OcrConfig(
            models=type(models)(tmp_path / "d.onnx", models.classification, models.recognition)
        )
    )
    with pytest.raises(Exception, match="OCR model files are missing"):
        engine.load()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (pipeline_pb2.ScenesSpec(threshold=300), "INVALID_SCENES_SPEC"),
        (pipeline_pb2.ScenesSpec(min_content_value=-1), "INVALID_SCENES_SPEC"),
        (pipeline_pb2.ScenesSpec(detector=7), "INVALID_SCENES_SPEC"),  # type: ignore[arg-type]
        (
            pipeline_pb2.ScenesSpec(max_transition_duration=duration_message(9)),
            "INVALID_SCENES_SPEC",
        ),
        (pipeline_pb2.ScenesSpec(min_shot_duration=duration_message(90)), "INVALID_SCENES_SPEC"),
    ],
)
def test_bad_scenes_specs_are_refused(spec: pipeline_pb2.ScenesSpec, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        messages.shot_options(spec)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "spec",
    [
        pipeline_pb2.OcrSpec(interval=duration_message(0.1)),
        pipeline_pb2.OcrSpec(min_confidence=1.5),
        pipeline_pb2.OcrSpec(max_side=100),
    ],
)
def test_bad_ocr_specs_are_refused(spec: pipeline_pb2.OcrSpec) -> None:
    with pytest.raises(InvalidArgument) as caught:
        messages.ocr_options(spec)
    assert caught.value.reason == "INVALID_OCR_SPEC"


def corrupt_middle(data: bytes, seed: int = 1) -> bytes:
    """``data`` with the second half of its media data overwritten by random bytes."""
    body = bytearray(data)
    start = data.find(b"mdat") + (len(data) - data.find(b"mdat")) // 2
    rng = random.Random(seed)
    for index in range(start, len(body)):
        body[index] = rng.randrange(256)
    return bytes(body)


def test_a_stream_that_turns_corrupt_mid_file_is_invalid_argument(tmp_path: Path) -> None:
    make_cuts_clip(tmp_path / "ok.mp4", [100, 100])
    (tmp_path / "bad.mp4").write_bytes(corrupt_middle((tmp_path / "ok.mp4").read_bytes()))
    with pytest.raises(InvalidArgument) as caught:
        analyse(tmp_path / "bad.mp4")
    assert caught.value.reason == "CORRUPT_VIDEO"
    assert "corrupt after" in caught.value.message


async def test_cancel_stops_the_worker_thread(
    caption_clip: Path, vision_store: LocalObjectStore
) -> None:
    """Closing the request's generator mid-OCR returns only once its worker thread ended."""
    await vision_store.put_file("cancel.mp4", caption_clip, content_type="video/mp4")
    vision = build_vision(VisionSettings(), vision_store)
    updates = vision.read_text(
        SourceRef("cancel.mp4"),
        VideoFacts(duration=12.0, fps=25.0),
        None,
        OcrOptions(interval=0.25),
        "jobs/c/",
    )
    seen = 0
    async for update in updates:
        seen += 1
        if getattr(update, "message", "") == "reading on-screen text":
            break
    await updates.aclose()
    assert seen >= 2
    assert not [t.name for t in threading.enumerate() if t.name.startswith("vision-")]
    assert not await vision_store.exists("jobs/c/vision/ocr.json")


# -- stills from shots (services/transcode/plan.py) ----------------------------------------------


def test_stills_come_from_the_shots_keyframes() -> None:
    from services.transcode.model import ShotStill
    from services.transcode.plan import shot_stills

    shots = [
        ShotStill(0.0, 4.0, 2.0),  # opening title: long, but an opening shot
        ShotStill(4.0, 6.0, 5.0),
        ShotStill(6.0, 9.5, 8.0),  # the longest inner shot
        ShotStill(9.5, 12.0, 11.0, brightness=5.0),  # dark: never a still
        ShotStill(12.0, 20.0, 15.0),  # closing credits: the longest of all
    ]
    poster, thumbs = shot_stills(shots, 2, 20.0)
    assert poster == 8.0
    assert thumbs == (5.0, 15.0)  # two of the four lit shots, spread over them
    poster, thumbs = shot_stills(shots, 4, 20.0)
    assert thumbs == (2.0, 5.0, 8.0, 15.0)  # one per lit shot
    # Fewer shots than thumbnails: every keyframe, the rest by time.
    poster, thumbs = shot_stills(shots[:2], 4, 6.0)
    assert poster == 2.0
    assert thumbs == (1.5, 2.0, 4.5, 5.0)


async def test_a_still_picture_is_read_once_not_at_every_sample(
    tmp_path: Path, vision_store: LocalObjectStore
) -> None:
    """A slide held for 8 s, then another: the samples that show the same picture as the last
    frame read take its lines again (no OCR run), and a new caption is still read."""
    from tests.vision_media import FONT, _run

    draw = ",".join(
        f"drawtext=fontfile={FONT}:text='{text}':fontsize=44:fontcolor=white:x=80:y=200"
        f":enable='between(t,{start},{end})'"
        for text, start, end in (("Agenda for today", 0, 7.9), ("Budget and hiring", 8, 16))
    )
    path = tmp_path / "slides.mp4"
    _run(["-f", "lavfi", "-i", "color=c=0x203050:size=960x540:rate=25:duration=16",
          "-vf", f"{draw},format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
          "-movflags", "+faststart", str(path)])  # fmt: skip
    await vision_store.put_file("slides.mp4", path, content_type="video/mp4")
    vision = build_vision(VisionSettings(), vision_store)
    engine = vision.all_engines[0]
    calls = []
    original = engine.read

    def counting(image: np.ndarray, *, min_confidence: float) -> list:  # type: ignore[type-arg]
        calls.append(1)
        return original(image, min_confidence=min_confidence)

    engine.read = counting  # type: ignore[method-assign]
    outcome = None
    async for update in vision.read_text(
        SourceRef("slides.mp4"), VideoFacts(duration=16.0, fps=25.0), None, OcrOptions(), "s/"
    ):
        if isinstance(update, TextOutcome):
            outcome = update
    assert outcome is not None
    texts = [normalise(e.text) for e in outcome.text.entries]
    assert texts == [normalise("Agenda for today"), normalise("Budget and hiring")]
    assert outcome.text.frames_examined == 8
    assert len(calls) == 2  # one read per slide
