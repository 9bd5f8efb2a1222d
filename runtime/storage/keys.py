"""Object keys: what every backend accepts.

A key is a relative, already-normalised ``/``-separated path: no leading ``/``, no empty, ``.``
or ``..`` segments, no trailing ``/``, no NUL or other control characters, at most 1024 bytes
of UTF-8. Keys are rejected rather than normalised, so two different keys never name the same
object (and a key can never leave the local store's directory). An output prefix
(``normalize_prefix``) is a key with a trailing ``/``.
"""

from __future__ import annotations

from runtime.errors import InvalidArgument

MAX_KEY_BYTES = 1024


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="BAD_OBJECT_KEY")


def _check_characters(value: str, what: str) -> None:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _bad(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(f"{what} contains a control character")
    if "\\" in value:
        raise _bad(f"{what} contains a backslash")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{what} is not valid UTF-8") from None


def validate_key(key: str) -> str:
    """Returns ``key`` when it is a valid object key; raises ``InvalidArgument`` otherwise."""
    if not key:
        raise _bad("object key is empty")
    _check_characters(key, "object key")
    if key.startswith("/"):
        raise _bad("object key must be relative (it starts with '/')")
    if key.endswith("/"):
        raise _bad("object key must not end with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise _bad("object key has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: like a key, but may be empty, end with '/' or stop mid-segment."""
    if not prefix:
        return prefix
    _check_characters(prefix, "object prefix")
    if prefix.startswith("/"):
        raise _bad("object prefix must be relative (it starts with '/')")
    segments = prefix.split("/")
    # The last segment is a partial name ("" after a trailing '/'); the others are full names.
    for segment in segments[:-1]:
        if segment in ("", ".", ".."):
            raise _bad("object prefix has an empty, '.' or '..' segment")
    if segments[-1] in (".", ".."):
        raise _bad("object prefix has a '.' or '..' segment")
    return prefix


def normalize_prefix(prefix: str) -> str:
    """An output prefix (where a job writes its objects): whole key segments, returned ending in
    '/'. ``InvalidArgument`` with reason ``INVALID_OUTPUT_PREFIX`` when empty or not such a
    prefix."""
    if not prefix:
        raise InvalidArgument("output_prefix is required", reason="INVALID_OUTPUT_PREFIX")
    try:
        validate_key(prefix.rstrip("/") or "/")
    except InvalidArgument:
        raise InvalidArgument(
            "output_prefix must be a relative key prefix such as 'jobs/123/'",
            reason="INVALID_OUTPUT_PREFIX",
        ) from None
    return prefix if prefix.endswith("/") else prefix + "/"
