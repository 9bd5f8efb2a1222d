"""Calling Gemini through google-genai: one client per process, errors mapped to the domain
tree, transient failures retried with capped, jittered exponential backoff (``reelmill.retry``).

    401/403, or 400 API_KEY_INVALID     Unauthenticated     (GEMINI_UNAUTHENTICATED)
    429                                 ResourceExhausted   (GEMINI_QUOTA_EXHAUSTED)
    5xx, 408, timeouts, network errors  Unavailable         (GEMINI_UNAVAILABLE), retried
    other 4xx                           InvalidArgument     (GEMINI_REJECTED)
    no content (blocked, empty)         FailedPrecondition  (GEMINI_NO_CONTENT)
    anything else                       Internal            (GEMINI_FAILED), not retried

The SDK talks HTTP through an ``httpx2.AsyncClient`` that this module builds; its transport is
the seam tests plug recorded responses into (``GeminiConfig.transport``), so requests go through
the SDK's own request building and response parsing without a network.

The transcribe and metadata services both call Gemini through this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel, ValidationError

from reelmill.retry import Backoff, Uniform, retry
from runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ReelmillError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from runtime.settings import GeminiServiceSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_MESSAGE_LIMIT = 300
#: Waits between attempts: 1 s before the first retry, doubling up to 20 s (jittered).
BACKOFF = Backoff(initial=1.0, maximum=20.0)


@dataclass(frozen=True)
class GeminiConfig:
    api_key: str
    model: str = "gemini-2.5-flash"
    #: Seconds per HTTP request.
    timeout: float = 300.0
    #: Attempts per call when failures are transient.
    max_attempts: int = 4
    #: Waits between those attempts.
    backoff: Backoff = BACKOFF
    #: The HTTP transport under the SDK; ``None`` is the network. Tests pass a recorded one.
    transport: httpx2.AsyncBaseTransport | None = None


def map_error(exc: BaseException) -> ReelmillError:
    """The domain error for a failed Gemini call."""
    if isinstance(exc, ReelmillError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        message = (exc.message or exc.status or "")[:_MESSAGE_LIMIT]
        details = str(exc.details)
        if exc.code in (401, 403) or "API_KEY_INVALID" in details:
            return Unauthenticated(
                f"gemini rejected the credentials: {message}", reason="GEMINI_UNAUTHENTICATED"
            )
        if exc.code == 429:
            return ResourceExhausted(
                f"gemini quota or rate limit exhausted: {message}",
                reason="GEMINI_QUOTA_EXHAUSTED",
            )
        if exc.code >= 500 or exc.code == 408:
            return Unavailable(
                f"gemini is unavailable ({exc.code}): {message}", reason="GEMINI_UNAVAILABLE"
            )
        return InvalidArgument(
            f"gemini refused the request ({exc.code}): {message}", reason="GEMINI_REJECTED"
        )
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return Unavailable("gemini did not answer in time", reason="GEMINI_UNAVAILABLE")
    if isinstance(exc, httpx2.TransportError):
        return Unavailable(
            f"cannot reach gemini: {type(exc).__name__}", reason="GEMINI_UNAVAILABLE"
        )
    # Anything else is a bug on one side or the other: not retried, logged with its traceback.
    return Internal(f"gemini call failed: {exc!r}", reason="GEMINI_FAILED")


def gemini_config(settings: GeminiServiceSettings) -> GeminiConfig | None:
    """The process's Gemini configuration; ``None`` when no key is set (Gemini is then not
    offered)."""
    key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else ""
    if not key:
        return None
    return GeminiConfig(
        api_key=key,
        model=settings.gemini_model,
        timeout=settings.gemini_timeout_seconds,
        max_attempts=settings.gemini_max_attempts,
    )


class GeminiClient:
    """One SDK client (and one HTTP connection pool) for the process."""

    def __init__(
        self,
        config: GeminiConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._uniform = uniform
        self._http = httpx2.AsyncClient(transport=config.transport, timeout=config.timeout)
        self.client = genai.Client(
            api_key=config.api_key,
            http_options=types.HttpOptions(
                timeout=int(config.timeout * 1000), httpx_async_client=self._http
            ),
        )

    @property
    def model(self) -> str:
        return self.config.model

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        """``fn()``, retried while it fails transiently; failures as domain errors."""

        async def once() -> T:
            try:
                return await fn()
            except Exception as exc:
                error = map_error(exc)
                raise error from (exc if isinstance(error, Internal) else None)

        def told(attempt: int, error: Exception, delay: float) -> None:
            log.warning(
                "gemini call failed; retrying",
                extra={
                    "what": what,
                    "attempt": attempt,
                    "delay": round(delay, 2),
                    "error": str(error),
                },
            )

        return await retry(
            once,
            retry_on=lambda error: isinstance(error, Unavailable),
            backoff=self.config.backoff,
            attempts=self.config.max_attempts,
            on_retry=told,
            sleep=self._sleep,
            uniform=self._uniform,
        )

    async def generate(
        self,
        contents: Any,
        config: types.GenerateContentConfig,
        parse: Callable[[str], T],
        *,
        what: str,
    ) -> T:
        """``parse`` of a structured-output response's text, retried as ``call`` does (``parse``
        raises ``Unavailable`` for output that does not validate, which is retried too)."""

        async def once() -> T:
            response = await self.client.aio.models.generate_content(
                model=self.config.model, contents=contents, config=config
            )
            return parse(response_text(response))

        return await self.call(once, what=what)

    async def close(self) -> None:
        await self._http.aclose()


def invalid_output(what: str, problem: str) -> Unavailable:
    """The error for a response that does not validate: UNAVAILABLE (GEMINI_INVALID_OUTPUT), so
    ``GeminiClient.generate`` retries it like a transient failure. ``what`` names the output
    ("a transcript"); ``problem`` is logged, not sent to the caller."""
    log.warning("gemini returned %s that does not validate: %s", what, problem)
    return Unavailable(
        f"gemini returned {what} that does not validate", reason="GEMINI_INVALID_OUTPUT"
    )


def parse_as(model: type[M], what: str) -> Callable[[str], M]:
    """A ``parse`` for ``GeminiClient.generate``: the response's JSON validated as ``model``;
    ``invalid_output`` when it does not validate."""

    def parse(text: str) -> M:
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            raise invalid_output(what, str(exc.errors()[:3])) from None

    return parse


def response_text(response: types.GenerateContentResponse) -> str:
    """The response's text; ``FailedPrecondition`` when Gemini produced none."""
    text = response.text
    if text:
        return text
    reason = ""
    if response.candidates and response.candidates[0].finish_reason is not None:
        reason = str(response.candidates[0].finish_reason.value)
    elif response.prompt_feedback is not None and response.prompt_feedback.block_reason:
        reason = str(response.prompt_feedback.block_reason.value)
    raise FailedPrecondition(
        f"gemini returned no content{f' ({reason})' if reason else ''}",
        reason="GEMINI_NO_CONTENT",
    )
