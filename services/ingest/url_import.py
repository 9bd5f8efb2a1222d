"""Importing a URL: a direct media URL or a video-platform page, stored like an upload.

``UrlImporter.import_url`` yields ``DownloadProgress`` while the bytes arrive, then the
``IngestedMedia``. Each attempt is: (for a platform URL) extract the file to fetch, then
download it through the SSRF guard into ``Ingestor.store`` — the same scratch file, two-phase
object write, checks and probe as an upload. A ``Transient`` failure (connect errors,
timeouts, HTTP 408/425/429/5xx, a connection cut mid-body) aborts that attempt, leaving
nothing, and the next one starts from scratch after a capped, jittered exponential backoff
(a ``Retry-After`` is honoured up to the cap). After the last attempt: UNAVAILABLE
URL_UNAVAILABLE.

Limits: the size limit is the request's ``max_bytes`` or the service's, whichever is smaller
(RESOURCE_EXHAUSTED DOWNLOAD_TOO_LARGE, from Content-Length up front or from the bytes
counted); the time limit — the request's timeout, the service's, or the caller's deadline,
whichever is soonest — bounds extraction, downloads and backoffs, retries included
(DEADLINE_EXCEEDED DOWNLOAD_TIMEOUT), not the probe, which has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpcore2
import httpx2

from reelmill.retry import Backoff, retry
from runtime.errors import DeadlineExceeded, InvalidArgument, Unavailable
from runtime.netguard import NetGuard
from services.ingest.fetch import DownloadProgress, Transient, download
from services.ingest.ingest import IngestedMedia, Ingestor, finish
from services.ingest.platforms import PlatformExtractor, PlatformMedia

log = logging.getLogger(__name__)

ImportUpdate = DownloadProgress | IngestedMedia
#: Waits between attempts: 0.5 s before the second, doubling up to 10 s (jittered); a
#: ``Retry-After`` raises a wait up to 10 s.
BACKOFF = Backoff(initial=0.5, maximum=10.0)


@dataclass(frozen=True)
class ImportRequest:
    url: str
    key: str
    #: "" for the store's bucket.
    bucket: str = ""
    #: 0 for the service's limit.
    max_bytes: int = 0
    #: Seconds; None for the service's limit.
    timeout: float | None = None
    #: Seconds left before the caller's deadline, if it set one.
    caller_remaining: float | None = None


@dataclass(frozen=True)
class ImportConfig:
    max_bytes: int
    #: Seconds.
    timeout: float
    attempts: int = 3
    #: Waits between attempts.
    backoff: Backoff = BACKOFF
    max_redirects: int = 5
    #: Seconds between two progress updates, at most.
    progress_interval: float = 0.25
    connect_timeout: float = 15.0
    #: Seconds without a byte before a read fails (transient).
    read_timeout: float = 30.0


class _Progress:
    """The latest progress, throttled; the consumer wakes on ``changed``."""

    def __init__(self, interval: float) -> None:
        self.changed = asyncio.Event()
        self.latest: DownloadProgress | None = None
        self._interval = interval
        self._last = float("-inf")
        self.attempt = 1

    def report(self, received: int, total: int | None) -> None:
        now = time.monotonic()
        done = total is not None and received >= total
        if received and not done and now - self._last < self._interval:
            return
        self._last = now
        self.latest = DownloadProgress(received=received, total=total, attempt=self.attempt)
        self.changed.set()


class UrlImporter:
    def __init__(
        self,
        ingestor: Ingestor,
        guard: NetGuard,
        config: ImportConfig,
        *,
        platforms: PlatformExtractor | None = None,
        inner_backend: httpcore2.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._ingestor = ingestor
        self._guard = guard
        self._config = config
        self._platforms = platforms if platforms is not None else PlatformExtractor(guard)
        self._inner_backend = inner_backend
        self._verify = verify

    def _check(self, request: ImportRequest) -> tuple[int, float]:
        """The effective (size limit, seconds) for ``request``; raises when it is bad."""
        if not request.url:
            raise InvalidArgument("a URL is required", reason="INVALID_URL")
        if len(request.url) > 8192:
            raise InvalidArgument("the URL is longer than 8192 characters", reason="INVALID_URL")
        self._ingestor.check_destination(request.bucket, request.key)
        if request.max_bytes < 0:
            raise InvalidArgument("max_bytes must not be negative", reason="INVALID_MAX_BYTES")
        if request.timeout is not None and request.timeout <= 0:
            raise InvalidArgument("timeout must be positive", reason="INVALID_TIMEOUT")
        limit = min(request.max_bytes or self._config.max_bytes, self._config.max_bytes)
        seconds = min(request.timeout or self._config.timeout, self._config.timeout)
        if request.caller_remaining is not None:
            seconds = max(min(seconds, request.caller_remaining), 0.001)
        self._guard.check_url(request.url)
        return limit, seconds

    async def import_url(self, request: ImportRequest) -> AsyncIterator[ImportUpdate]:
        """Progress while the bytes arrive, then the stored, probed media."""
        limit, seconds = self._check(request)
        progress = _Progress(self._config.progress_interval)
        task = asyncio.create_task(self._run(request, limit, seconds, progress))
        task.add_done_callback(lambda _: progress.changed.set())
        try:
            while not task.done():
                await progress.changed.wait()
                progress.changed.clear()
                if progress.latest is not None and not task.done():
                    update, progress.latest = progress.latest, None
                    yield update
            yield task.result()
        finally:
            if not task.done():
                task.cancel()
                await finish(_settle(task))

    async def _run(
        self, request: ImportRequest, limit: int, seconds: float, progress: _Progress
    ) -> IngestedMedia:
        deadline = asyncio.get_running_loop().time() + seconds
        monotonic_deadline = time.monotonic() + seconds
        timeout = httpx2.Timeout(
            self._config.read_timeout, connect=min(self._config.connect_timeout, seconds)
        )
        platform = await asyncio.to_thread(self._platforms.matches, request.url)
        async with self._guard.async_client(
            timeout=timeout, inner=self._inner_backend, verify=self._verify
        ) as client:

            async def attempt() -> IngestedMedia:
                try:
                    url, headers = request.url, None
                    if platform is not None:
                        media = await self._extract(
                            request.url, platform, limit, deadline, monotonic_deadline
                        )
                        url, headers = media.url, dict(media.headers)
                    chunks = download(
                        client,
                        self._guard,
                        url,
                        limit=limit,
                        headers=headers,
                        max_redirects=self._config.max_redirects,
                        on_progress=progress.report,
                    )
                    return await self._ingestor.store(
                        request.key,
                        chunks,
                        content_type="",
                        verify=_not_empty,
                        deadline=deadline,
                    )
                except Transient as exc:
                    log.info(
                        "import attempt failed",
                        extra={
                            "attempt": progress.attempt,
                            "error": exc.message,
                            "key": request.key,
                        },
                    )
                    raise

            def next_attempt(made: int, error: Exception, delay: float) -> None:
                progress.attempt = made + 1

            try:
                return await retry(
                    attempt,
                    retry_on=lambda error: isinstance(error, Transient),
                    backoff=self._config.backoff,
                    attempts=self._config.attempts,
                    deadline=deadline,
                    on_retry=next_attempt,
                    retry_after=lambda error: (
                        error.retry_after if isinstance(error, Transient) else None
                    ),
                )
            except Transient as last:
                if progress.attempt < self._config.attempts:  # the next one would end too late
                    raise _timed_out(seconds, last) from None
                raise _unavailable(self._config.attempts, last) from None

    async def _extract(
        self, url: str, key: str, limit: int, deadline: float, monotonic_deadline: float
    ) -> PlatformMedia:
        stop = threading.Event()
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.to_thread(
                    self._platforms.extract,
                    url,
                    key=key,
                    max_bytes=limit,
                    deadline=monotonic_deadline,
                    stop=stop,
                )
        except TimeoutError:
            raise DeadlineExceeded(
                "the platform did not answer in time", reason="DOWNLOAD_TIMEOUT"
            ) from None
        finally:
            stop.set()  # a thread still running stops at its next request


def _not_empty(received: int, sha256: str) -> None:
    if received == 0:
        raise InvalidArgument("the URL returned no bytes", reason="EMPTY_DOWNLOAD")


def _unavailable(attempts: int, last: Transient) -> Unavailable:
    return Unavailable(
        f"the URL could not be fetched after {attempts} attempts: {last.message}",
        reason="URL_UNAVAILABLE",
        metadata={"attempts": str(attempts)}
        | ({"http_status": str(last.status)} if last.status else {}),
    )


def _timed_out(seconds: float, last: Transient) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the download did not succeed within {seconds:g} s (last failure: {last.message})",
        reason="DOWNLOAD_TIMEOUT",
    )


async def _settle(task: asyncio.Task[IngestedMedia]) -> None:
    """Waits for a cancelled import to finish its cleanup; its outcome no longer matters."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
