"""SHA-256 whose state can be saved and resumed in another process.

A resumable upload arrives over many calls, possibly through different ingest processes, and
its SHA-256 must still be the digest of the whole file, computed once on the way in (reading
the object back would double the I/O of every resumed upload). ``hashlib`` cannot export a
hash's state, so this drives OpenSSL's SHA-256 (the same ``libcrypto`` ``hashlib`` uses) through
its public low-level API, ``SHA256_Init``/``SHA256_Update``/``SHA256_Final`` on a
``SHA256_CTX`` (``openssl/sha.h``: eight 32-bit words of chaining state, the bit count as two
32-bit halves, a 64-byte block buffer and its fill). ``state()`` packs that in a fixed,
byte-order-independent form; ``Sha256.resume`` unpacks it. ``update`` releases the GIL.

The module checks itself against ``hashlib`` on import, so a ``libcrypto`` whose context does
not have this layout fails at start rather than producing wrong digests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct

_VERSION = 1
#: version, eight chaining words, byte count; then the partial block's bytes.
_HEAD = struct.Struct("<B8IQ")
BLOCK = 64


class _Context(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("nl", ctypes.c_uint32),
        ("nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * BLOCK),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _load() -> ctypes.CDLL:
    names = ["libcrypto.so.3", "libcrypto.so.1.1", ctypes.util.find_library("crypto")]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "SHA256_Update"):
            break
    else:
        raise ImportError("no libcrypto with SHA256_Init/Update/Final found")
    context = ctypes.POINTER(_Context)
    lib.SHA256_Init.argtypes = [context]
    lib.SHA256_Update.argtypes = [context, ctypes.c_char_p, ctypes.c_size_t]
    lib.SHA256_Final.argtypes = [ctypes.c_char_p, context]
    for function in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
        function.restype = ctypes.c_int
    return lib


_lib = _load()


class BadHashState(ValueError):
    """The bytes given to ``Sha256.resume`` are not a state ``state()`` wrote."""


class Sha256:
    """``hashlib.sha256`` with ``state()`` and ``Sha256.resume(state)``."""

    def __init__(self) -> None:
        self._context = _Context()
        if _lib.SHA256_Init(ctypes.byref(self._context)) != 1:
            raise RuntimeError("SHA256_Init failed")

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        bits: int = (self._context.nh << 32) | self._context.nl
        return bits >> 3

    def update(self, data: bytes) -> None:
        if data and _lib.SHA256_Update(ctypes.byref(self._context), data, len(data)) != 1:
            raise RuntimeError("SHA256_Update failed")

    def hexdigest(self) -> str:
        """The digest of what was hashed so far (the hash can go on)."""
        final = _Context.from_buffer_copy(self._context)
        out = ctypes.create_string_buffer(32)
        if _lib.SHA256_Final(out, ctypes.byref(final)) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw.hex()

    def state(self) -> bytes:
        """The state after what was hashed so far: at most 113 bytes."""
        context = self._context
        partial = bytes(context.data)[: context.num]
        return _HEAD.pack(_VERSION, *context.h, self.size) + partial

    @classmethod
    def resume(cls, state: bytes) -> Sha256:
        """A hash that goes on from ``state``; ``BadHashState`` when it is not one."""
        if len(state) < _HEAD.size:
            raise BadHashState("hash state too short")
        version, *words, size = _HEAD.unpack_from(state)
        partial = state[_HEAD.size :]
        if version != _VERSION or len(partial) != size % BLOCK:
            raise BadHashState("hash state has an unknown version or a bad length")
        hasher = cls()
        context = hasher._context
        for index, word in enumerate(words):
            context.h[index] = word
        bits = size * 8
        context.nl = bits & 0xFFFFFFFF
        context.nh = (bits >> 32) & 0xFFFFFFFF
        ctypes.memmove(context.data, partial, len(partial))
        context.num = len(partial)
        return hasher


def _self_check() -> None:
    data = bytes(range(256)) * 41 + b"reelmill"
    for cut in (0, 1, 63, 64, 65, 1000, len(data)):
        first = Sha256()
        first.update(data[:cut])
        second = Sha256.resume(first.state())
        second.update(data[cut:])
        if second.hexdigest() != hashlib.sha256(data).hexdigest() or second.size != len(data):
            raise ImportError("libcrypto's SHA256_CTX does not have the expected layout")


_self_check()
