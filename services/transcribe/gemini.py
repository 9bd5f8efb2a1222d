"""The Gemini engine: transcription with timestamps through structured output.

The decoded audio goes to Gemini as 16 kHz mono FLAC: inline when small, through the Files API
(uploaded, used, deleted) when larger. The response must be JSON that validates against
``GeminiTranscript``; anything else is retried like a transient failure. Gemini gives segment
times only, no word timings and no language probability.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncGenerator
from typing import Any

from google.genai import types
from pydantic import BaseModel, Field

from runtime.errors import Unavailable
from runtime.genai import GeminiClient, parse_as
from runtime.tasks import shielded
from services.transcribe.audio import Samples, encode_flac
from services.transcribe.model import Language, Segment, TranscribeOptions
from services.transcribe.whisper import normalize_language

log = logging.getLogger(__name__)

NAME = "gemini"
#: Largest audio sent inline (the whole request may not exceed 20 MB).
INLINE_LIMIT = 14 * 1024 * 1024
#: Seconds to wait for an uploaded file to become usable.
UPLOAD_READY_TIMEOUT = 300.0

PROMPT = """\
Transcribe the speech in this audio recording verbatim, in the language it is spoken.
Split it into segments of one sentence or at most about 15 seconds each. For each segment give
start_seconds and end_seconds, measured from the start of the recording, and the text.
Give the main spoken language as an ISO 639-1 code in "language".
If there is no speech (silence, music, noise), return an empty list of segments.
"""


class GeminiSegment(BaseModel):
    start_seconds: float = Field(ge=0)
    end_seconds: float = Field(ge=0)
    text: str


class GeminiTranscript(BaseModel):
    language: str = Field(description="ISO 639-1 code of the main spoken language")
    segments: list[GeminiSegment]


def build_config() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=GeminiTranscript,
        temperature=0.0,
    )


def build_prompt(options: TranscribeOptions) -> str:
    if options.language:
        return PROMPT + f"The speech is in the language with ISO 639-1 code {options.language!r}.\n"
    return PROMPT


parse_transcript = parse_as(GeminiTranscript, "a transcript")


class GeminiEngine:
    name = NAME

    def __init__(self, client: GeminiClient, *, inline_limit: int = INLINE_LIMIT) -> None:
        self._client = client
        self._inline_limit = inline_limit
        self.model_name = client.model

    def cache_parts(self) -> dict[str, Any]:
        """Nothing besides the model and the options (the prompt is this package's code)."""
        return {}

    async def prepare(self, options: TranscribeOptions) -> None:
        """Nothing to load; Gemini takes any language."""

    async def transcribe(
        self, samples: Samples, options: TranscribeOptions
    ) -> AsyncGenerator[Language | Segment, None]:
        audio = await asyncio.to_thread(encode_flac, samples)
        uploaded: types.File | None = None
        try:
            if len(audio) <= self._inline_limit:
                part = types.Part.from_bytes(data=audio, mime_type="audio/flac")
            else:
                uploaded = await self._upload(audio)
                part = types.Part.from_uri(
                    file_uri=uploaded.uri or "", mime_type=uploaded.mime_type or "audio/flac"
                )
            result = await self._client.generate(
                [build_prompt(options), part],
                build_config(),
                parse_transcript,
                what="transcribe",
            )
        finally:
            if uploaded is not None and uploaded.name:
                await shielded(self._delete(uploaded.name))
        language = normalize_language(result.language) or options.language
        yield Language(options.language or language, 1.0 if options.language else 0.0)
        ordered = sorted(result.segments, key=lambda s: (s.start_seconds, s.end_seconds))
        for index, segment in enumerate(ordered):
            yield Segment(
                id=index,
                start=segment.start_seconds,
                end=max(segment.end_seconds, segment.start_seconds),
                text=segment.text,
            )

    async def _upload(self, audio: bytes) -> types.File:
        files = self._client.client.aio.files

        async def upload() -> types.File:
            return await files.upload(
                file=io.BytesIO(audio), config=types.UploadFileConfig(mime_type="audio/flac")
            )

        uploaded = await self._client.call(upload, what="upload")
        name = uploaded.name or ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPLOAD_READY_TIMEOUT
        while uploaded.state == types.FileState.PROCESSING:
            if loop.time() > deadline:
                await shielded(self._delete(name))
                raise Unavailable(
                    "gemini did not process the upload in time", reason="GEMINI_UNAVAILABLE"
                )
            await asyncio.sleep(1.0)
            uploaded = await self._client.call(lambda: files.get(name=name), what="file state")
        if uploaded.state == types.FileState.FAILED:
            await shielded(self._delete(name))
            raise Unavailable("gemini could not process the audio", reason="GEMINI_UNAVAILABLE")
        return uploaded

    async def _delete(self, name: str) -> None:
        try:
            await self._client.client.aio.files.delete(name=name)
        except Exception as exc:  # it expires on its own after 48 h
            log.warning("could not delete the uploaded audio: %r", exc)
