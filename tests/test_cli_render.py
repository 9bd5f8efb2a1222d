"""What `reelmill jobs get` prints of a job's results: metadata with its chapters, the shots and
the on-screen text."""

from __future__ import annotations

from reelmill.cli import render
from reelmill.v1 import job_pb2, media_pb2, vision_pb2


def test_jobs_get_shows_metadata_chapters_and_vision() -> None:
    job = job_pb2.Job(
        id="j1",
        state=job_pb2.JOB_STATE_SUCCEEDED,
        metadata=media_pb2.VideoMetadata(
            title="Volcanoes and Bread",
            tags=["volcano", "sourdough"],
            summary="Magma rises. Dough rises too.",
            chapters=[
                media_pb2.Chapter(
                    start_seconds=0, end_seconds=45, title="Volcanoes", id="chapter-1",
                    keyphrases=["magma", "lava"],
                ),
                media_pb2.Chapter(
                    start_seconds=45, end_seconds=3725, title="Bread", id="kp-bread",
                    keyphrases=["yeast"],
                ),
            ],
            unfilled=["/rating"],
        ),
        scenes=vision_pb2.Scenes(shots=[vision_pb2.Shot(index=0), vision_pb2.Shot(index=1)]),
        on_screen_text=vision_pb2.OnScreenText(
            entries=[vision_pb2.TextEntry(text="Chapter one", start_seconds=2, end_seconds=9)]
        ),
    )  # fmt: skip
    with render.console.capture() as captured:
        render.show_job(job)
    out = captured.get()
    assert "title Volcanoes and Bread" in out and "tags volcano, sourdough" in out
    assert "00:00" in out and "00:45" in out and "1:02:05" in out
    assert "kp-bread" in out and "Bread" in out and "magma, lava" in out
    assert "2 shots, 0 transitions; 1 lines of on-screen text" in out
    assert "00:02-00:09 Chapter one" in out
    assert "schema fields not filled /rating" in out
