"""Is a media file whole? Cheap structural checks on the container's own framing.

A demuxer happily reads the first half of a cut file, and cannot open at all a cut MP4 whose
index (``moov``) was to come last. Both are "truncated", not "not a video", and both are told by
the framing alone, without reading the payload:

- ISO BMFF (MP4, MOV, 3GP, M4A): every top-level box declares its size; a box that runs past
  the end of the file, or media data (``mdat``) with no ``moov``/``moof`` index, is truncated.
- Matroska/WebM: the Segment declares its size (unless written live); a Segment that runs past
  the end of the file is truncated.

Other containers return ``None`` here; the probe then relies on the demuxer's index.

Self-contained or not: an ISO BMFF track may keep its samples in other files or at URLs (a data
reference, ``dref``, whose entry lacks the "in this file" flag). FFmpeg does not follow them by
default, but such a file is not the whole media: ``find_external_reference`` finds them.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: Top-level ISO BMFF box types a file may start with.
_BMFF_FIRST = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
_EBML_ID = 0x1A45DFA3
_SEGMENT_ID = 0x18538067
_MAX_BOXES = 1_000_000
#: Boxes on the way from ``moov`` down to a track's data references.
_DREF_PATH = (b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref")
#: Data reference entry flag: the data is in this file.
_SELF_CONTAINED = 0x000001


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """A file to read from its start: ``source`` opened, or (a seekable handle) rewound."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield handle
    else:
        source.seek(0)
        yield source


def find_truncation(path: Path | BinaryIO, size: int) -> str | None:
    """How the file at ``path`` (``size`` bytes; or an open seekable handle on it) is cut
    short; ``None`` if it looks whole or its container is not one this module knows."""
    with _opened(path) as handle:
        head = handle.read(16)
        if len(head) >= 8 and head[4:8] in _BMFF_FIRST:
            return _bmff(handle, size)
        if len(head) >= 4 and int.from_bytes(head[:4], "big") == _EBML_ID:
            return _ebml(handle, size)
    return None


def _is_fourcc(value: bytes) -> bool:
    return len(value) == 4 and all(0x20 <= b < 0x7F for b in value)


def _bmff(handle: BinaryIO, size: int) -> str | None:
    offset = 0
    seen: set[bytes] = set()
    for _ in range(_MAX_BOXES):
        if offset >= size:
            break
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            if header.strip(b"\0"):
                return f"the file ends inside a box header at byte {offset}"
            break
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if not _is_fourcc(box_type):
            break  # not boxes any more (trailing bytes): the demuxer judges the rest
        header_size = 8
        if box_size == 1:
            if len(header) < 16:
                return f"the file ends inside the '{box_type.decode()}' box header"
            (box_size,) = struct.unpack(">Q", header[8:16])
            header_size = 16
        elif box_size == 0:
            box_size = size - offset  # "to the end of the file"
        if box_size < header_size:
            break  # malformed: the demuxer judges
        if offset + box_size > size:
            return (
                f"the '{box_type.decode()}' box at byte {offset} declares {box_size} bytes "
                f"but only {size - offset} remain"
            )
        seen.add(box_type)
        offset += box_size
    if b"mdat" in seen and not seen & {b"moov", b"moof"}:
        return "the file has media data but no index ('moov'); it was never finalised"
    return None


def _read_vint(handle: BinaryIO, *, keep_marker: bool) -> tuple[int, int, bool] | None:
    """An EBML variable-length integer: (value, length, all value bits set)."""
    first = handle.read(1)
    if not first:
        return None
    lead = first[0]
    length = 1
    while length <= 8 and not lead & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        return None
    rest = handle.read(length - 1)
    if len(rest) != length - 1:
        return None
    raw = int.from_bytes(first + rest, "big")
    value_bits = 7 * length
    value = raw & ((1 << value_bits) - 1)
    unknown = value == (1 << value_bits) - 1
    return (raw if keep_marker else value), length, unknown


def _ebml(handle: BinaryIO, size: int) -> str | None:
    handle.seek(0)
    element = _read_vint(handle, keep_marker=True)
    header_size = _read_vint(handle, keep_marker=False)
    if element is None or header_size is None or element[0] != _EBML_ID:
        return None
    body_start = element[1] + header_size[1]
    if body_start + header_size[0] > size:
        return "the file ends inside its EBML header"
    handle.seek(body_start + header_size[0])
    segment = _read_vint(handle, keep_marker=True)
    segment_size = _read_vint(handle, keep_marker=False)
    if segment is None or segment_size is None:
        return "the file ends before its Segment"
    if segment[0] != _SEGMENT_ID or segment_size[2]:
        return None  # not a Segment, or written live with an unknown size
    segment_start = body_start + header_size[0] + segment[1] + segment_size[1]
    if segment_start + segment_size[0] > size:
        return (
            f"the Segment declares {segment_size[0]} bytes but only {size - segment_start} remain"
        )
    return None


def _children(handle: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The boxes between ``start`` and ``end``: (type, body start, body end)."""
    boxes: list[tuple[bytes, int, int]] = []
    offset = start
    while offset + 8 <= end and len(boxes) < _MAX_BOXES:
        handle.seek(offset)
        header = handle.read(16)
        box_size, box_type = struct.unpack(">I4s", header[:8])
        header_size = 8
        if box_size == 1 and len(header) == 16:
            (box_size,) = struct.unpack(">Q", header[8:16])
            header_size = 16
        elif box_size == 0:
            box_size = end - offset
        if box_size < header_size or offset + box_size > end or not _is_fourcc(box_type):
            break  # malformed: the demuxer judges
        boxes.append((box_type, offset + header_size, offset + box_size))
        offset += box_size
    return boxes


def find_external_reference(path: Path | BinaryIO, size: int) -> bool:
    """Whether an ISO BMFF file's tracks refer to data outside the file (URLs, other files)."""
    with _opened(path) as handle:
        if handle.read(8)[4:8] not in _BMFF_FIRST:
            return False
        level = [(b"", 0, size)]
        for wanted in _DREF_PATH:
            level = [
                child
                for _, start, end in level
                for child in _children(handle, start, end)
                if child[0] == wanted
            ]
        for _, start, end in level:
            # FullBox (version, flags), entry count, then entries that are FullBoxes too.
            for _entry, entry_start, _entry_end in _children(handle, start + 8, end):
                handle.seek(entry_start)
                flags = int.from_bytes(handle.read(4)[1:], "big")
                if not flags & _SELF_CONTAINED:
                    return True
    return False
