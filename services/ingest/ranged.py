"""A seekable read-only file over HTTP range requests: the framing checks of
``services.ingest.structure`` read a few boxes of a stored object through its (presigned) URL
instead of a local copy of the whole file."""

from __future__ import annotations

import io
from typing import BinaryIO

import urllib3

#: Each range request reads at least this much (the structure checks read 16-byte headers).
READ_AHEAD = 64 * 1024


class HttpRangeFile(io.RawIOBase):
    """``size`` bytes at ``url``, read with ``Range`` requests; ``OSError`` when the server
    does not answer with the range asked for."""

    def __init__(self, url: str, size: int, *, timeout: float) -> None:
        super().__init__()
        self._url = url
        self._size = size
        self._position = 0
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout), retries=False
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._position >= self._size or not len(buffer):
            return 0
        last = min(self._position + len(buffer), self._size) - 1
        try:
            response = self._http.request(
                "GET", self._url, headers={"Range": f"bytes={self._position}-{last}"}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise OSError(f"range request failed: {type(exc).__name__}") from exc
        data = response.data
        if response.status != 206 or len(data) != last - self._position + 1:
            raise OSError(f"range request answered HTTP {response.status} ({len(data)} bytes)")
        memoryview(buffer)[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._http.clear()
        super().close()


def open_ranged(url: str, size: int, *, timeout: float) -> BinaryIO:
    """A buffered, seekable file over ``url`` (``size`` bytes)."""
    raw = HttpRangeFile(url, size, timeout=timeout)
    return io.BufferedReader(raw, buffer_size=READ_AHEAD)
