"""Video-platform pages (YouTube, Vimeo, TikTok, Instagram, ...) through yt-dlp as a library.

yt-dlp only *extracts* here: which single file holds the video. The media bytes then travel
the same guarded download as any URL (``services.ingest.fetch``), so yt-dlp never fetches
media itself. Its extraction requests (pages, JSON APIs) do need the network; they go through
``_GuardedRH``, the only request handler the ``YoutubeDL`` here has: each request and redirect
hop passes ``NetGuard.check_url`` and every connection the guard's resolver-pinning backend,
exactly as downloads do. What yt-dlp might do outside its request handlers is not guarded:
it may run a JavaScript runtime (deno/node, when installed) as a subprocess for YouTube's
signature challenges, with scripts yt-dlp ships; remote script components stay disabled.

A URL is a platform URL when one of yt-dlp's extractors other than its "generic" one claims
it (``PlatformExtractor.matches``). The file chosen is a single progressive format (video and
audio in one file, plain http(s), not HLS/DASH), the best one within the size limit.

yt-dlp's errors become ours (``download_error``): a private, removed, geo-blocked,
login-walled or live video is FAILED_PRECONDITION with the platform's own reason, shortened
and stripped of yt-dlp's advice; network trouble is ``Transient``.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from functools import cached_property
from typing import Any

import httpx2
from yt_dlp import YoutubeDL  # type: ignore[import-untyped]
from yt_dlp.extractor import gen_extractor_classes  # type: ignore[import-untyped]
from yt_dlp.networking import RequestDirector, RequestHandler, Response  # type: ignore[import-untyped]
from yt_dlp.networking._helper import get_redirect_method  # type: ignore[import-untyped]
from yt_dlp.networking.exceptions import (  # type: ignore[import-untyped]
    HTTPError,
    RequestError,
    TransportError,
)
from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError  # type: ignore[import-untyped]

from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ReelmillError,
    Unavailable,
)
from runtime.netguard import NetGuard, redirect_target
from services.ingest.fetch import Transient, too_large

log = logging.getLogger(__name__)

#: Progressive formats only: one file with video and audio, over plain http(s).
PROGRESSIVE = "best[protocol^=http][protocol!*=dash]"
#: Largest extraction response (a page or JSON document) read into memory.
PAGE_LIMIT = 32 * 1024 * 1024
MAX_REDIRECTS = 5
MESSAGE_LIMIT = 200
_DROPPED_HEADERS = frozenset({"host", "content-length", "accept-encoding", "range", "connection"})


@dataclass(frozen=True)
class PlatformMedia:
    """The file an extractor chose, and how to ask for it."""

    url: str
    headers: Mapping[str, str]
    #: Bytes, when the platform says.
    size: int | None
    extractor: str
    video_id: str
    title: str = ""
    format_id: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


class _Refused(RequestError):
    """A request the guard refused; carries our error out through yt-dlp untouched."""

    def __init__(self, error: ReelmillError) -> None:
        super().__init__(error.message)
        self.error = error


# -- the request handler -----------------------------------------------------------------------


class _Body(io.RawIOBase):
    """An httpx response body as a file, refusing to grow past ``limit`` bytes."""

    def __init__(self, response: httpx2.Response, limit: int) -> None:
        self._response = response
        self._chunks: Iterator[bytes] = response.iter_bytes()
        self._pending = b""
        self._read = 0
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx2.TransportError as exc:
                raise TransportError(cause=exc) from exc
            self._read += len(self._pending)
            if self._read > self._limit:
                raise TransportError(f"a response exceeded {self._limit} bytes")
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._response.close()
        super().close()


class _Headers:
    """Every header line of a response, for yt-dlp's ``Response`` (httpx merges repeats)."""

    def __init__(self, headers: httpx2.Headers) -> None:
        self._headers = headers

    def items(self) -> list[tuple[str, str]]:
        return self._headers.multi_items()


class _CookieResponse:
    """Just enough of a urllib response for ``CookieJar.extract_cookies``."""

    def __init__(self, headers: httpx2.Headers) -> None:
        self._message = Message()
        for name, value in headers.multi_items():
            self._message[name] = value

    def info(self) -> Message:
        return self._message


class _GuardedRH(RequestHandler):
    """yt-dlp's only way out: httpx through the guard, redirects followed hop by hop."""

    _SUPPORTED_URL_SCHEMES = ("http", "https")
    _SUPPORTED_PROXY_SCHEMES = ()
    _SUPPORTED_FEATURES = ()

    def __init__(
        self, *, guard: NetGuard, stop: threading.Event, deadline: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._stop = stop
        self._deadline = deadline
        self._client = guard.client(timeout=httpx2.Timeout(self.timeout))

    def close(self) -> None:
        self._client.close()

    def _check_extensions(self, extensions: dict[str, Any]) -> None:
        super()._check_extensions(extensions)
        for name in ("cookiejar", "timeout", "legacy_ssl", "keep_header_casing"):
            extensions.pop(name, None)

    def _send(self, request: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if self._stop.is_set() or remaining <= 0:
            raise TransportError("the import was cancelled or ran out of time")
        timeout = min(self._calculate_timeout(request), remaining)
        headers = dict(self._get_headers(request))
        headers["Accept-Encoding"] = "gzip, deflate"
        jar = self._get_cookiejar(request)
        method, data, url = request.method, request.data, request.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = self._guard.check_url(url)
                cookie = jar.get_cookie_header(str(target))
                sent = {**headers, "Cookie": cookie} if cookie else headers
                outgoing = self._client.build_request(
                    method, target, headers=sent, content=data, timeout=timeout
                )
                response = self._client.send(outgoing, stream=True)
                jar.extract_cookies(
                    _CookieResponse(response.headers), urllib.request.Request(str(response.url))
                )
                following = redirect_target(response)
            except ReelmillError as exc:
                raise _Refused(exc) from None
            except httpx2.TransportError as exc:
                raise TransportError(cause=exc) from exc
            if following is None:
                break
            response.close()
            new_method = get_redirect_method(method, response.status_code)
            if new_method != method:
                data = None
            method, url = new_method, str(following)
        else:
            raise _Refused(
                FailedPrecondition(
                    f"the platform redirects more than {MAX_REDIRECTS} times",
                    reason="TOO_MANY_REDIRECTS",
                )
            )
        result = Response(
            fp=io.BufferedReader(_Body(response, PAGE_LIMIT)),
            url=str(response.url),
            headers=_Headers(response.headers),
            status=response.status_code,
            reason=response.reason_phrase,
        )
        if not 200 <= response.status_code < 300:
            raise HTTPError(result)
        return result


class _Logger:
    def debug(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        log.info("yt-dlp warning: %s", _sanitize(message))

    def error(self, message: str) -> None:
        log.info("yt-dlp error: %s", _sanitize(message))


class _GuardedYoutubeDL(YoutubeDL):
    def __init__(
        self,
        params: dict[str, Any],
        *,
        guard: NetGuard,
        stop: threading.Event,
        deadline: float,
        extractors: Sequence[type[Any]] | None,
    ) -> None:
        self._guard = guard
        self._stop = stop
        self._deadline = deadline
        super().__init__(params, auto_init=extractors is None)
        for extractor in extractors or ():
            self.add_info_extractor(extractor())

    @cached_property
    def _request_director(self) -> Any:
        logger = _Logger()
        director = RequestDirector(logger=logger)
        director.add_handler(
            _GuardedRH(
                guard=self._guard,
                stop=self._stop,
                deadline=self._deadline,
                logger=logger,
                headers=self.params["http_headers"].copy(),
                cookiejar=self.cookiejar,
                timeout=self.params.get("socket_timeout"),
            )
        )
        return director


# -- extraction --------------------------------------------------------------------------------


class PlatformExtractor:
    """Recognises platform URLs and extracts the file to download. Blocking: use threads."""

    def __init__(
        self,
        guard: NetGuard,
        *,
        extractors: Sequence[type[Any]] | None = None,
        socket_timeout: float = 20.0,
    ) -> None:
        self._guard = guard
        self._extractors = extractors
        self._socket_timeout = socket_timeout

    @cached_property
    def _classes(self) -> tuple[type[Any], ...]:
        found = self._extractors if self._extractors is not None else gen_extractor_classes()
        return tuple(c for c in found if c.ie_key() != "Generic")

    def matches(self, url: str) -> str | None:
        """The key of the extractor that claims ``url`` (e.g. "Youtube"), or None."""
        for extractor in self._classes:
            try:
                if extractor.suitable(url):
                    return str(extractor.ie_key())
            except Exception:  # a broken pattern is that extractor's problem, not ours
                log.debug("extractor %s failed to match", extractor, exc_info=True)
        return None

    def extract(
        self, url: str, *, key: str, max_bytes: int, deadline: float, stop: threading.Event
    ) -> PlatformMedia:
        """The single progressive file for ``url``, through extractor ``key``.

        ``deadline`` is ``time.monotonic()`` time; ``stop`` ends the extraction at its next
        request. Raises domain errors or ``Transient``.
        """
        params: dict[str, Any] = {
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _Logger(),
            "skip_download": True,
            "noplaylist": True,
            "extract_flat": "in_playlist",
            "cachedir": False,
            "check_formats": False,
            "geo_bypass": False,
            "socket_timeout": self._socket_timeout,
            "format": (
                f"{PROGRESSIVE}[filesize<=?{max_bytes}][filesize_approx<=?{max_bytes}]"
                f"/{PROGRESSIVE}"
            ),
        }
        with _GuardedYoutubeDL(
            params, guard=self._guard, stop=stop, deadline=deadline, extractors=self._extractors
        ) as ydl:
            try:
                info = ydl.extract_info(url, download=False, ie_key=key)
            except (DownloadError, ExtractorError, RequestError) as exc:
                raise download_error(exc) from None
            media = _chosen(info, max_bytes)
            cookie = ydl.cookiejar.get_cookie_header(media.url)
        if cookie:
            media = PlatformMedia(
                url=media.url,
                headers={**media.headers, "Cookie": cookie},
                size=media.size,
                extractor=media.extractor,
                video_id=media.video_id,
                title=media.title,
                format_id=media.format_id,
            )
        return media


def _chosen(info: Mapping[str, Any] | None, max_bytes: int) -> PlatformMedia:
    if not info:
        raise FailedPrecondition("the platform returned nothing", reason="VIDEO_UNAVAILABLE")
    if info.get("_type") in ("playlist", "multi_video"):
        raise InvalidArgument(
            "the URL names a playlist or several videos; name one video",
            reason="PLAYLIST_NOT_SUPPORTED",
        )
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming", "post_live"):
        raise FailedPrecondition(
            "the video is a live stream or has not finished processing", reason="VIDEO_LIVE"
        )
    media_url = info.get("url")
    if not isinstance(media_url, str) or info.get("requested_formats"):
        raise FailedPrecondition(
            "the platform offers no single file with both video and audio",
            reason="NO_PROGRESSIVE_FORMAT",
        )
    size = info.get("filesize") or info.get("filesize_approx")
    size = int(size) if isinstance(size, int | float) and size > 0 else None
    if size is not None and size > max_bytes:
        raise too_large(max_bytes, f"would be {size} bytes (the smallest suitable format)")
    headers = {
        str(k): v
        for k, v in (info.get("http_headers") or {}).items()
        if isinstance(v, str) and str(k).lower() not in _DROPPED_HEADERS
    }
    return PlatformMedia(
        url=media_url,
        headers=headers,
        size=size,
        extractor=str(info.get("extractor_key") or info.get("extractor") or ""),
        video_id=str(info.get("id") or ""),
        title=str(info.get("title") or ""),
        format_id=str(info.get("format_id") or ""),
    )


# -- errors ------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PREFIX = re.compile(r"^(?:ERROR:\s*)?(?:\[[^\]]+\]\s*)?(?:[\w-]{1,64}:\s+)?")
_ADVICE = re.compile(
    r"(\s*\(caused by .*$)"
    r"|(\s*;?\s*please report this issue.*$)"
    r"|(\s*Confirm you are on the latest version.*$)"
    r"|(\s*(Use|Use the|See|Try|You might want to|If you)\b[^.]*"
    r"(--|yt-dlp|cookies|VPN|proxy|wiki|FAQ|github)[^.]*(\.|$))",
    re.IGNORECASE | re.DOTALL,
)


def _sanitize(message: str) -> str:
    """The platform's words, without yt-dlp's prefixes, causes and advice, made short."""
    text = _ANSI.sub("", message)
    text = " ".join(text.split())
    text = _PREFIX.sub("", text, count=1)
    text = re.sub(r"https?://\S+", "<url>", text)
    text = _ADVICE.sub("", text).strip(" .;") + "."
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1].rstrip() + "…"
    return text if text != "." else "the platform gave no reason."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and whatever it wraps, as yt-dlp and Python chain them."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        if isinstance(exc_info, tuple) and len(exc_info) > 1:
            pending.append(exc_info[1])
        cause = getattr(current, "cause", None)
        pending.append(cause if isinstance(cause, BaseException) else None)
        pending.extend((current.__cause__, current.__context__))


_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (
            r"not available (in|from) your (country|location|region)|geo.?(restrict|block)"
            r"|blocked in your (country|region)|(country|region) restriction",
            "VIDEO_GEO_BLOCKED",
        ),
        (r"\bprivate\b", "VIDEO_PRIVATE"),
        (
            r"removed|deleted|no longer available|terminated|copyright|taken down"
            r"|does not exist|doesn't exist|been blocked",
            "VIDEO_REMOVED",
        ),
        (
            r"sign in|log ?in|login|members[- ]only|confirm your age|age[- ]restrict|inappropriate"
            r"|not a bot|cookies|premium|subscri|purchase|rent(ed|al)?\b|paid",
            "VIDEO_LOGIN_REQUIRED",
        ),
        (r"live event|is live|live stream|premiere|will begin|upcoming", "VIDEO_LIVE"),
        (r"requested format is not available|no video formats", "NO_PROGRESSIVE_FORMAT"),
    )
)


def download_error(exc: BaseException) -> Exception:
    """The domain error (or ``Transient``) for a yt-dlp failure; see the module docstring."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, _Refused):
            return cause.error
    message = getattr(exc, "msg", None) or str(exc)
    for cause in causes:
        if isinstance(cause, ExtractorError) and cause.orig_msg:
            message = cause.orig_msg
            break
    reason_text = _sanitize(message)
    if any(isinstance(c, GeoRestrictedError) for c in causes):
        return _unavailable(reason_text, "VIDEO_GEO_BLOCKED")
    for cause in causes:
        if isinstance(cause, HTTPError):
            status = int(cause.status)
            if status in (404, 410):
                return NotFound(
                    f"the platform has no such video (HTTP {status})",
                    reason="URL_NOT_FOUND",
                    metadata={"http_status": str(status)},
                )
            if status in (408, 425, 429) or status >= 500:
                return Transient(f"the platform answered HTTP {status}", status=status)
        elif isinstance(cause, TransportError):
            return Transient(f"the platform could not be reached: {reason_text}")
    for pattern, reason in _RULES:
        if pattern.search(message):
            return _unavailable(reason_text, reason)
    if re.search(r"unable to extract|failed to parse|unable to download", message, re.I):
        return Unavailable(
            f"the platform's page could not be read: {reason_text}", reason="EXTRACTION_FAILED"
        )
    if re.search(r"unsupported url", message, re.I):
        return InvalidArgument("the platform does not support this URL", reason="UNSUPPORTED_URL")
    return _unavailable(reason_text, "VIDEO_UNAVAILABLE")


def _unavailable(reason_text: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(f"the platform says: {reason_text}", reason=reason)
