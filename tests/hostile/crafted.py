"""Hostile inputs made in code, deterministically: broken, lying or dangerous media."""

from __future__ import annotations

import random
import struct
import zlib

#: ISO BMFF boxes that hold other boxes (the ones on the way to what we rewrite).
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl"}


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """Top-level boxes of ``data`` as (type, body); 32-bit sizes only (what ffmpeg writes)."""
    boxes = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append((kind, data[offset + 8 : offset + size]))
        offset += size
    return boxes


def _build(boxes: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(struct.pack(">I4s", len(body) + 8, kind) + body for kind, body in boxes)


def rewrite_boxes(data: bytes, kind: bytes, change: object) -> bytes:
    """``data`` with the body of every ``kind`` box replaced by ``change(body)``, parents'
    sizes fixed. Only for files whose ``moov`` comes after ``mdat`` (offsets stay valid)."""

    def walk(body: bytes) -> bytes:
        out = []
        for box_kind, box_body in _boxes(body):
            if box_kind == kind:
                box_body = change(box_body)  # type: ignore[operator]
            elif box_kind in _CONTAINERS:
                box_body = walk(box_body)
            out.append((box_kind, box_body))
        return _build(out)

    return walk(data)


def moov_last(data: bytes) -> bool:
    kinds = [kind for kind, _ in _boxes(data)]
    return kinds.index(b"moov") > kinds.index(b"mdat")


def external_data_reference(data: bytes, location: bytes) -> bytes:
    """Every track's data reference points at ``location`` instead of this file."""
    entry = b"\0\0\0\0" + location + b"\0"  # version 0, flags 0: not in this file
    dref = b"\0\0\0\0" + struct.pack(">I", 1) + struct.pack(">I4s", len(entry) + 8, b"url ")
    return rewrite_boxes(data, b"dref", lambda _body: dref + entry)


def claimed_duration(data: bytes, seconds_per_sample: int) -> bytes:
    """A one-track MP4 whose every sample claims to last ``seconds_per_sample`` (stts), its
    headers (mvhd, tkhd, mdhd) agreeing: a few kilobytes that say they play for hours."""
    [(timescale, samples)] = _track_timing(data)
    seconds = samples * seconds_per_sample

    def stts(body: bytes) -> bytes:
        return body[:4] + struct.pack(">III", 1, samples, seconds_per_sample * timescale)

    def duration_at(offset: int, scale: int | None) -> object:
        def change(body: bytes) -> bytes:
            own = scale or struct.unpack(">I", body[offset - 4 : offset])[0]
            return body[:offset] + struct.pack(">I", seconds * own) + body[offset + 4 :]

        return change

    if b"edts" in data:  # the edit list would cut the presentation back to the real length
        data = rename_box(data, b"edts", b"free")
    data = rewrite_boxes(data, b"stts", stts)
    data = rewrite_boxes(data, b"mdhd", duration_at(16, None))
    data = rewrite_boxes(data, b"mvhd", duration_at(16, None))
    (movie_scale,) = struct.unpack(">I", _find(data, b"mvhd")[12:16])
    return rewrite_boxes(data, b"tkhd", duration_at(20, movie_scale))


def _find(data: bytes, kind: bytes) -> bytes:
    found: list[bytes] = []

    def keep(body: bytes) -> bytes:
        found.append(body)
        return body

    rewrite_boxes(data, kind, keep)
    return found[0]


def _track_timing(data: bytes) -> list[tuple[int, int]]:
    """(timescale, sample count) of each track."""
    scales: list[int] = []
    counts: list[int] = []

    def mdhd(body: bytes) -> bytes:
        scales.append(struct.unpack(">I", body[12:16])[0])
        return body

    def stts(body: bytes) -> bytes:
        (count,) = struct.unpack(">I", body[4:8])
        counts.append(
            sum(struct.unpack(">I", body[8 + 8 * i : 12 + 8 * i])[0] for i in range(count))
        )
        return body

    rewrite_boxes(data, b"mdhd", mdhd)
    rewrite_boxes(data, b"stts", stts)
    return list(zip(scales, counts, strict=True))


def corrupt_box(data: bytes, kind: bytes, seed: int) -> bytes:
    """The ``kind`` box's body replaced by random bytes of the same length."""
    rng = random.Random(seed)
    return rewrite_boxes(data, kind, lambda body: rng.randbytes(len(body)))


def rename_box(data: bytes, old: bytes, new: bytes) -> bytes:
    start = data.index(old)
    return data[:start] + new + data[start + 4 :]


def avi_dimensions(data: bytes, width: int, height: int) -> bytes:
    """An AVI whose main and stream headers declare ``width`` x ``height``."""
    out = bytearray(data)
    main = out.index(b"avih") + 8
    struct.pack_into("<II", out, main + 32, width, height)
    stream_format = out.index(b"strf") + 8
    struct.pack_into("<ii", out, stream_format + 4, width, height)
    return bytes(out)


def png(width: int = 16, height: int = 16) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
