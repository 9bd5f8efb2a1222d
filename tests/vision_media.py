"""Generated clips with known shots, transitions and on-screen text (ffmpeg lavfi), for the
vision tests and benchmarks. Every clip is H.264 yuv420p in MP4; frame numbers are exact
because every source runs at the clip's rate."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.ffmpeg import ffmpeg_path

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
#: Visually distinct sources, none of which shows text of its own.
SOURCES = (
    "smptehdbars=size={size}:rate={fps}",
    "gradients=size={size}:rate={fps}:speed=0.02:c0=0x2040a0:c1=0xe0a020:seed=1",
    "rgbtestsrc=size={size}:rate={fps}",
    "gradients=size={size}:rate={fps}:speed=0.02:c0=0x10a040:c1=0xa01060:seed=7",
    "colorchart=rate={fps}:patch_size=64x64,scale={size}",
    "mandelbrot=size={size}:rate={fps}:maxiter=60",
)


def _run(args: Sequence[str]) -> None:
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
    )


def _encode(path: Path, gop: int = 250) -> list[str]:
    return [
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        *("-g", str(gop), "-movflags", "+faststart", str(path)),
    ]


def make_cuts_clip(
    path: Path, frames: Sequence[int], *, size: str = "480x270", fps: int = 25
) -> list[int]:
    """Shots of ``frames[i]`` frames each from different sources, joined by hard cuts; returns
    the cut frames (the first frame of every shot after the first)."""
    inputs: list[str] = []
    chains = []
    for index, count in enumerate(frames):
        source = SOURCES[index % len(SOURCES)].format(size=size, fps=fps)
        inputs += ["-f", "lavfi", "-i", source]
        chains.append(
            f"[{index}:v]trim=end_frame={count},setpts=PTS-STARTPTS,setsar=1,format=yuv420p[v{index}]"
        )
    joined = "".join(f"[v{i}]" for i in range(len(frames)))
    graph = ";".join([*chains, f"{joined}concat=n={len(frames)}:v=1:a=0[out]"])
    _run([*inputs, "-filter_complex", graph, "-map", "[out]", *_encode(path)])
    cuts, total = [], 0
    for count in frames[:-1]:
        total += count
        cuts.append(total)
    return cuts


@dataclass(frozen=True)
class Blend:
    kind: str
    #: First and last frame over which the two shots blend.
    start_frame: int
    end_frame: int


def make_transitions_clip(
    path: Path,
    shot_seconds: float,
    transitions: Sequence[str],
    *,
    seconds: float = 1.0,
    size: str = "480x270",
    fps: int = 25,
) -> list[Blend]:
    """Shots of ``shot_seconds`` joined by xfade transitions (``fade``: a cross-fade,
    ``fadeblack``: through black) of ``seconds`` each; returns their spans in frames."""
    count = len(transitions) + 1
    inputs: list[str] = []
    for index in range(count):
        source = SOURCES[index % len(SOURCES)].format(size=size, fps=fps)
        inputs += [
            "-f",
            "lavfi",
            "-i",
            f"{source},trim=duration={shot_seconds},setsar=1,format=yuv420p",
        ]
    graph, last, offset, blends = [], "[0:v]", 0.0, []
    for index, kind in enumerate(transitions, start=1):
        offset += shot_seconds - seconds
        label = f"[x{index}]"
        graph.append(
            f"{last}[{index}:v]xfade=transition={kind}:duration={seconds}:offset={offset:g}{label}"
        )
        first = round(offset * fps)
        blends.append(Blend(kind, first, first + round(seconds * fps) - 1))
        last = label
    _run([*inputs, "-filter_complex", ";".join(graph), "-map", last, *_encode(path)])
    return blends


def make_motion_clip(
    path: Path, *, seconds: float = 4.0, size: str = "480x270", fps: int = 25
) -> None:
    """One shot with fast motion: a bright box crossing the frame in half a second over a
    scrolling pattern."""
    width = int(size.split("x")[0])
    graph = (
        f"smptehdbars=size={size}:rate={fps}:duration={seconds},scroll=horizontal=0.02[bg];"
        f"color=c=white:size=90x90:rate={fps}:duration={seconds}[box];"
        f"[bg][box]overlay=x='mod(t*{width * 2},{width})':y='60+40*sin(t*9)',format=yuv420p[out]"
    )
    _run(["-filter_complex", graph, "-map", "[out]", *_encode(path)])


@dataclass(frozen=True)
class Caption:
    text: str
    start: float
    end: float
    #: Position of the text's top-left corner and its font size, in pixels.
    x: int
    y: int
    size: int = 40


def make_caption_clip(
    path: Path,
    captions: Sequence[Caption],
    *,
    shot_seconds: Sequence[float] = (6.0, 6.0),
    size: str = "960x540",
    fps: int = 25,
) -> None:
    """Shots joined by cuts, with ``captions`` drawn on top (white DejaVu Sans on a dark box)
    at known times and places."""
    inputs: list[str] = []
    chains = []
    for index, length in enumerate(shot_seconds):
        source = SOURCES[(index + 1) % len(SOURCES)].format(size=size, fps=fps)
        inputs += ["-f", "lavfi", "-i", source]
        chains.append(
            f"[{index}:v]trim=duration={length},setpts=PTS-STARTPTS,setsar=1,format=yuv420p[v{index}]"
        )
    joined = "".join(f"[v{i}]" for i in range(len(shot_seconds)))
    draw = ",".join(
        f"drawtext=fontfile={FONT}:text='{c.text}':fontsize={c.size}:fontcolor=white"
        f":box=1:boxcolor=black@0.7:boxborderw=8:x={c.x}:y={c.y}"
        f":enable='between(t,{c.start:g},{c.end:g})'"
        for c in captions
    )
    graph = ";".join([*chains, f"{joined}concat=n={len(shot_seconds)}:v=1:a=0,{draw}[out]"])
    _run([*inputs, "-filter_complex", graph, "-map", "[out]", *_encode(path)])
