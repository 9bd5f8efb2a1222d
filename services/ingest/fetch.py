"""One guarded HTTP download: redirects followed hop by hop, statuses and failures mapped.

``download`` opens a URL through a ``NetGuard`` client (every hop checked by
``NetGuard.check_url``, every connection vetted and pinned by the guard's backend) and yields
its body in chunks, counting them against a limit. Failures that another attempt may cure
raise ``Transient``; the rest raise domain errors. How remote answers map:

    HTTP 2xx                        the body
    HTTP 404, 410                   NotFound            URL_NOT_FOUND
    HTTP 401, 403, 407              FailedPrecondition  URL_ACCESS_DENIED
    HTTP 408, 425, 429, 5xx         Transient           (UNAVAILABLE URL_UNAVAILABLE at the end)
      except 501, 505               FailedPrecondition  URL_REJECTED
    other statuses                  FailedPrecondition  URL_REJECTED
    more than ``max_redirects``     FailedPrecondition  TOO_MANY_REDIRECTS
    connect/read errors, timeouts   Transient
    certificate not valid           FailedPrecondition  TLS_CERTIFICATE_INVALID
    Content-Length or bytes > limit ResourceExhausted   DOWNLOAD_TOO_LARGE

The body is read raw (``Accept-Encoding: identity`` is asked for, and a compressed body is not
inflated), so the limit counts the bytes that arrive and a compression bomb stays one.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

import httpx2

from runtime.errors import FailedPrecondition, NotFound, ResourceExhausted
from runtime.netguard import REDIRECT_STATUSES, NetGuard, redirect_target, retry_after_seconds
from runtime.storage.base import CHUNK_SIZE

log = logging.getLogger(__name__)

USER_AGENT = "reelmill-ingest/0.1"
_SENSITIVE_HEADERS = ("authorization", "cookie", "proxy-authorization")


@dataclass(frozen=True)
class DownloadProgress:
    received: int
    #: Content-Length, when the server sent one.
    total: int | None
    #: 1-based.
    attempt: int


class Transient(Exception):
    """A failure that another attempt may not meet (the server or the network had a moment)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


def too_large(limit: int, detail: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"the download {detail}; the limit is {limit} bytes",
        reason="DOWNLOAD_TOO_LARGE",
        metadata={"limit_bytes": str(limit)},
    )


def check_status(response: httpx2.Response) -> None:
    """Raises for any response that is not a body to store (see the module's table)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    metadata = {"http_status": str(status)}
    if status in (404, 410):
        raise NotFound(
            f"the server has nothing at this URL (HTTP {status})",
            reason="URL_NOT_FOUND",
            metadata=metadata,
        )
    if status in (401, 403, 407):
        raise FailedPrecondition(
            f"the server refuses access to this URL (HTTP {status})",
            reason="URL_ACCESS_DENIED",
            metadata=metadata,
        )
    if status in (408, 425, 429) or (status >= 500 and status not in (501, 505)):
        raise Transient(
            f"the server answered HTTP {status}",
            status=status,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    raise FailedPrecondition(
        f"the server answered HTTP {status}", reason="URL_REJECTED", metadata=metadata
    )


def _certificate_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_failure(exc: httpx2.TransportError) -> Exception:
    """The error for a failed connection or read: ``Transient`` unless retrying cannot help."""
    if _certificate_problem(exc):
        return FailedPrecondition(
            "the server's TLS certificate is not valid for its name",
            reason="TLS_CERTIFICATE_INVALID",
        )
    kind = type(exc).__name__
    return Transient(f"{kind}: {exc}" if str(exc) else kind)


def _content_length(response: httpx2.Response) -> int | None:
    value = response.headers.get("content-length", "")
    if "," in value:  # repeated headers: usable only if they agree
        values = {v.strip() for v in value.split(",")}
        value = values.pop() if len(values) == 1 else ""
    return int(value) if value.isdigit() else None


async def download(
    client: httpx2.AsyncClient,
    guard: NetGuard,
    url: str,
    *,
    limit: int,
    headers: Mapping[str, str] | None = None,
    max_redirects: int = 5,
    on_progress: Callable[[int, int | None], None] = lambda received, total: None,
) -> AsyncGenerator[bytes, None]:
    """The body of ``url`` in chunks of about ``CHUNK_SIZE``; see the module docstring.

    ``on_progress(received, total)`` hears of every network read, not only of whole chunks.
    """
    current = guard.check_url(url)
    request_headers = {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        **(headers or {}),
        "Accept-Encoding": "identity",
    }
    hop = 0
    while True:
        request = client.build_request("GET", current, headers=request_headers)
        try:
            response = await client.send(request, stream=True)
        except httpx2.TransportError as exc:
            raise transport_failure(exc) from exc
        try:
            target = redirect_target(response)
        finally:
            if response.status_code in REDIRECT_STATUSES:
                await response.aclose()
        if target is None:
            break
        hop += 1
        if hop > max_redirects:
            raise FailedPrecondition(
                f"the URL redirects more than {max_redirects} times", reason="TOO_MANY_REDIRECTS"
            )
        log.info("following a redirect", extra={"hop": hop, "host": target.host})
        if target.scheme != current.scheme or target.netloc != current.netloc:
            request_headers = {
                k: v for k, v in request_headers.items() if k.lower() not in _SENSITIVE_HEADERS
            }
        current = guard.check_url(target)

    try:
        check_status(response)
        total = _content_length(response)
        if total is not None and total > limit:
            raise too_large(limit, f"announces {total} bytes")
        received = 0
        on_progress(0, total)
        started = time.monotonic()
        pending = bytearray()  # network reads, gathered into chunks of about CHUNK_SIZE
        try:
            async for piece in response.aiter_raw():
                received += len(piece)
                if received > limit:
                    raise too_large(limit, f"sent more than {limit} bytes")
                on_progress(received, total)
                pending += piece
                if len(pending) >= CHUNK_SIZE:
                    yield bytes(pending)
                    pending.clear()
        except httpx2.TransportError as exc:
            raise transport_failure(exc) from exc
        if pending:
            yield bytes(pending)
        if total is not None and received < total:  # h11 says so too; this is the backstop
            raise Transient(f"the connection closed after {received} of {total} bytes")
        log.info(
            "downloaded",
            extra={
                "host": current.host,
                "bytes": received,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
    finally:
        await response.aclose()
