"""Makes tests/recordings/talk/: a synthetic talk of five distinct topics with known boundaries.

Each topic is a paragraph of our own sentences, spoken by espeak-ng (Debian's ``espeak-ng``) and
joined with the same short silence as between its sentences, so nothing but the words marks a
topic change. Writes ``talk.opus`` (mono 16 kHz, 24 kb/s) and ``talk.json``: every topic's
start and end in seconds, its name and the words that name it. Run it again only to change the
talk (the files are committed; the tests do not need espeak-ng):

    .venv/bin/python scripts/make_topic_talk.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from pathlib import Path

import imageio_ffmpeg

OUT = Path(__file__).resolve().parent.parent / "tests" / "recordings" / "talk"
#: The silence between two sentences, and so between two topics, in seconds.
GAP = 0.35
RATE = 16_000

TOPICS: list[tuple[str, tuple[str, ...], list[str]]] = [
    (
        "volcanoes",
        (
            "volcano",
            "volcanoes",
            "volcanic",
            "magma",
            "lava",
            "eruption",
            "eruptions",
            "erupts",
            "crater",
            "ash",
            "molten",
            "rock",
            "pumice",
            "tremors",
            "earthquakes",
            "geologists",
        ),
        [
            "A volcano forms where molten rock from deep inside the earth reaches the surface.",
            "That molten rock is called magma while it is underground, and lava once it erupts.",
            "Pressure builds in the magma chamber as gas bubbles grow inside the rising rock.",
            "When the pressure becomes too great, the volcano erupts through its crater.",
            "Some eruptions are gentle rivers of glowing lava that flow for many kilometres.",
            "Others are violent explosions that throw ash and pumice high into the sky.",
            "Volcanic ash can ground aeroplanes and bury whole towns under grey dust.",
            "Geologists watch volcanoes with seismometers that record tiny earthquakes.",
            "A swarm of small tremors often warns that magma is moving toward the surface.",
        ],
    ),
    (
        "bread",
        (
            "bread",
            "dough",
            "yeast",
            "flour",
            "baking",
            "baker",
            "loaf",
            "oven",
            "sourdough",
            "crust",
            "gluten",
            "kneading",
            "crumb",
            "proof",
        ),
        [
            "Good bread needs only four ingredients: flour, water, salt and yeast.",
            "Kneading the dough develops gluten, the stretchy protein that traps gas.",
            "The yeast eats the sugars in the flour and releases carbon dioxide.",
            "Those tiny bubbles make the dough rise slowly in a warm kitchen.",
            "A sourdough starter replaces bought yeast with wild yeast and bacteria.",
            "After shaping the loaf, the baker lets it rest for a final proof.",
            "A very hot oven with steam gives the crust its shine and crackle.",
            "The loaf is ready when it sounds hollow as you tap the bottom.",
            "Letting the bread cool completely keeps the crumb from turning gummy.",
        ],
    ),
    (
        "honeybees",
        (
            "bee",
            "bees",
            "honeybee",
            "honeybees",
            "hive",
            "colony",
            "honey",
            "queen",
            "pollen",
            "nectar",
            "worker",
            "workers",
            "beekeepers",
            "wax",
            "forager",
            "flowers",
            "dance",
        ),
        [
            "A honeybee colony can hold fifty thousand workers and one queen.",
            "The queen lays up to two thousand eggs a day during the summer.",
            "Worker bees fly from flower to flower collecting nectar and pollen.",
            "Back at the hive they turn the nectar into honey by evaporating its water.",
            "Bees store the honey in wax cells and cap them to keep it fresh.",
            "A forager tells her sisters where the flowers are with a waggle dance.",
            "The angle of the dance points the way relative to the sun.",
            "Beekeepers open the hive gently and use smoke to keep the bees calm.",
            "Without bees, many fruit trees and crops would never be pollinated.",
        ],
    ),
    (
        "chess",
        (
            "chess",
            "pawn",
            "pawns",
            "knight",
            "knights",
            "bishop",
            "bishops",
            "king",
            "board",
            "opening",
            "rook",
            "castling",
            "checkmate",
            "endgame",
            "game",
            "piece",
            "squares",
        ),
        [
            "Chess is played on a board of sixty four squares between two players.",
            "Each side starts with eight pawns, two knights, two bishops, two rooks,"
            " a queen and a king.",
            "The knight is the only piece that can jump over the others.",
            "A strong opening controls the centre of the board with pawns and knights.",
            "Castling moves the king to safety and brings a rook into the game.",
            "Players try to avoid moving the same piece twice in the opening.",
            "In the endgame the king becomes an active piece that helps the pawns advance.",
            "A pawn that reaches the last rank is promoted, usually to a queen.",
            "The game ends in checkmate when the king is attacked and cannot escape.",
        ],
    ),
    (
        "electric cars",
        (
            "electric",
            "battery",
            "batteries",
            "car",
            "cars",
            "charging",
            "charger",
            "chargers",
            "lithium",
            "motor",
            "range",
            "braking",
            "petrol",
        ),
        [
            "An electric car stores its energy in a large lithium ion battery pack.",
            "The battery drives an electric motor that delivers full torque from standstill.",
            "Range depends on the size of the battery, the speed and the weather.",
            "Cold winter days can reduce the range because the battery must be heated.",
            "Fast chargers on the motorway can fill most of the battery in half an hour.",
            "At home, most drivers plug the car in overnight on a slower charger.",
            "Regenerative braking turns the motor into a generator that recharges the battery.",
            "Electric cars have far fewer moving parts than petrol engines,"
            " so servicing is cheaper.",
            "Battery prices have fallen sharply, which makes electric cars more affordable.",
        ],
    ),
]


def speak(text: str, path: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(path), text],
        check=True,
        capture_output=True,
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as scratch:
        pcm = bytearray()
        topics = []
        silence = b"\x00\x00" * round(GAP * RATE)
        for name, keywords, lines in TOPICS:
            start = len(pcm) / 2 / RATE
            for index, line in enumerate(lines):
                raw = Path(scratch) / f"{name}-{index}.wav"
                speak(line, raw)
                resampled = Path(scratch) / f"{name}-{index}-16k.wav"
                subprocess.run(
                    [
                        ffmpeg,
                        "-v",
                        "error",
                        "-y",
                        "-i",
                        str(raw),
                        "-ac",
                        "1",
                        "-ar",
                        str(RATE),
                        "-c:a",
                        "pcm_s16le",
                        str(resampled),
                    ],
                    check=True,
                )
                with wave.open(str(resampled)) as wav:
                    pcm += wav.readframes(wav.getnframes())
                pcm += silence
            end = len(pcm) / 2 / RATE
            topics.append(
                {
                    "name": name,
                    "start_seconds": round(start, 3),
                    "end_seconds": round(end, 3),
                    # The words of the topic: nouns and names only it uses.
                    "keywords": list(keywords),
                    "sentences": lines,
                }
            )
        joined = Path(scratch) / "talk.wav"
        with wave.open(str(joined), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(bytes(pcm))
        subprocess.run(
            [
                ffmpeg,
                "-v",
                "error",
                "-y",
                "-i",
                str(joined),
                "-c:a",
                "libopus",
                "-b:a",
                "24k",
                str(OUT / "talk.opus"),
            ],
            check=True,
        )
    duration = len(pcm) / 2 / RATE
    (OUT / "talk.json").write_text(
        json.dumps(
            {
                "made_by": "scripts/make_topic_talk.py (espeak-ng en-us, 165 wpm)",
                "duration_seconds": round(duration, 3),
                "gap_seconds": GAP,
                "topics": topics,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"{OUT}: {duration:.1f} s, boundaries at", [t["start_seconds"] for t in topics[1:]])


if __name__ == "__main__":
    main()
