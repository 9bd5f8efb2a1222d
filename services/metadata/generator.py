"""Metadata end to end: the transcript in, metadata (and the caller's JSON) and artifacts out.

The engine is the one asked for; unspecified is Gemini when configured, else extractive. An
empty transcript always goes to the extractive generator (there is nothing for a language model
to read; it would only guess from the file name). Results are cached by the SHA-256 of the
canonical request (transcript, media facts, file name) + engine + model + options; a hit still
writes the artifacts under the requested prefix (deterministic keys: a retry overwrites).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from typing import Any

from runtime.cache import ResultCache, cache_key
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.shared_cache import SharedCache, TieredCache, dumps_result, loads_result, source_digest
from runtime.storage import ObjectStore
from runtime.storage.keys import normalize_prefix
from services.metadata import extractive, knowledge
from services.metadata.gemini import GeminiGenerator
from services.metadata.model import (
    Artifact,
    ArtifactKind,
    Engine,
    Metadata,
    MetadataOptions,
    Outcome,
    Source,
)
from services.metadata.schema import Filled, fill_schema, parse_schema, validation_error
from services.metadata.topics import Bounds

log = logging.getLogger(__name__)

ARTIFACT_DIR = "metadata/"
MAX_TAGS = 100
#: Bounds of the chapter bounds a spec may ask for.
MAX_CHAPTER_SECONDS = 3600.0
MAX_MIN_CHAPTERS = 50
DEFAULT_MAX_TAGS = 10


def metadata_dict(metadata: Metadata) -> dict[str, Any]:
    return {
        "title": metadata.title,
        "description": metadata.description,
        "tags": list(metadata.tags),
        "keywords": list(metadata.keywords),
        "chapters": [
            {
                "start_seconds": c.start,
                "end_seconds": c.end,
                "title": c.title,
                "summary": c.summary,
                "keyphrases": list(c.keyphrases),
                "segment_ids": list(c.segment_ids),
                "id": c.id,
            }
            for c in metadata.chapters
        ],
        "summary": metadata.summary,
        "show_notes": metadata.show_notes,
        "engine": metadata.engine,
        "model": metadata.model,
    }


def chapter_bounds(options: MetadataOptions) -> Bounds:
    """The spec's chapter bounds, checked: INVALID_ARGUMENT ``INVALID_CHAPTER_BOUNDS``."""
    low, high, fewest = (
        options.min_chapter_seconds,
        options.max_chapter_seconds,
        options.min_chapters,
    )
    if not 0 < low <= MAX_CHAPTER_SECONDS:
        raise InvalidArgument(
            f"min_chapter_duration must be more than 0 s and at most {MAX_CHAPTER_SECONDS:g} s,"
            f" got {low:g} s",
            reason="INVALID_CHAPTER_BOUNDS",
        )
    if high < 0 or (high and high < low):
        raise InvalidArgument(
            f"max_chapter_duration must be unset or at least min_chapter_duration ({low:g} s),"
            f" got {high:g} s",
            reason="INVALID_CHAPTER_BOUNDS",
        )
    if not 1 <= fewest <= MAX_MIN_CHAPTERS:
        raise InvalidArgument(
            f"min_chapters must be between 1 and {MAX_MIN_CHAPTERS}, got {fewest}",
            reason="INVALID_CHAPTER_BOUNDS",
        )
    return Bounds(min_seconds=low, max_seconds=high, min_segments=fewest)


def known_values(metadata: Metadata, source: Source) -> dict[str, Any]:
    """What the extractive schema filler may put into a caller's schema."""
    text = source.text
    return {
        "title": metadata.title,
        "description": metadata.description,
        "summary": metadata.summary,
        "show_notes": metadata.show_notes,
        "tags": list(metadata.tags),
        "keywords": list(metadata.keywords),
        "chapters": list(metadata.chapters),
        "language": source.language,
        "duration": round(source.duration, 3),
        "filename": source.filename,
        "transcript": text,
        "on_screen_text": source.screen_text,
        "word_count": len(text.split()),
        "engine": metadata.engine,
        "model": metadata.model,
    }


def _source_dict(source: Source) -> dict[str, Any]:
    data = dataclasses.asdict(source)
    data["segments"] = [[s.start, s.end, s.text, s.id] for s in source.segments]
    data["on_screen"] = [[s.start, s.end, s.text] for s in source.on_screen]
    return data


class MetadataGenerator:
    def __init__(
        self,
        store: ObjectStore,
        gemini: GeminiGenerator | None,
        *,
        cache_entries: int,
        shared: SharedCache | None = None,
    ) -> None:
        self._store = store
        self._gemini = gemini
        self.cache: ResultCache[Metadata] = ResultCache(cache_entries)
        #: This process's cache, then the one every replica shares (``runtime.shared_cache``).
        self.results = TieredCache(
            self.cache,
            shared,
            "metadata",
            encode=dumps_result,
            decode=functools.partial(loads_result, Metadata),
        )

    def _engine(self, engine: Engine | None) -> Engine:
        if engine is Engine.GEMINI and self._gemini is None:
            raise FailedPrecondition("gemini is not configured", reason="GEMINI_NOT_CONFIGURED")
        if engine is None:
            return Engine.GEMINI if self._gemini is not None else Engine.EXTRACTIVE
        return engine

    async def generate(
        self, source: Source, options: MetadataOptions, output_prefix: str
    ) -> Outcome:
        prefix = normalize_prefix(output_prefix)
        if options.max_tags < 0 or options.max_tags > MAX_TAGS:
            raise InvalidArgument(
                f"max_tags must be between 0 and {MAX_TAGS}", reason="INVALID_MAX_TAGS"
            )
        max_tags = options.max_tags or DEFAULT_MAX_TAGS
        bounds = chapter_bounds(options)
        knowledge.check(options.knowledge_points)
        schema = parse_schema(options.json_schema) if options.json_schema.strip() else None
        engine = self._engine(options.engine)
        if not source.segments and not source.on_screen:
            engine = Engine.EXTRACTIVE
        gemini = self._gemini if engine is Engine.GEMINI else None
        key = cache_key(
            source=_source_dict(source),
            engine=engine.value,
            model=gemini.model_name if gemini else extractive.MODEL,
            # What of the transcript Gemini is sent (a longer one is cut): it changes the answer.
            gemini_transcript_chars=gemini.transcript_budget if gemini else 0,
            max_tags=max_tags,
            bounds=dataclasses.asdict(bounds),
            schema=schema,
            prompt=options.prompt,
            # Every option, so that one added later is in the key too; and the code itself.
            options=dataclasses.replace(options, engine=engine),
            code=source_digest("services.metadata"),
        )
        metadata, found = await self.results.get(key)
        cached = metadata is not None
        if metadata is None:
            if gemini is not None:
                metadata = await gemini.generate(source, max_tags)
                if options.knowledge_points:  # the caller's chapters, placed offline
                    given = await asyncio.to_thread(
                        extractive.chapters_of,
                        source,
                        bounds,
                        options.knowledge_points,
                        options.overlap,
                    )
                    metadata = dataclasses.replace(metadata, chapters=given.chapters)
                custom = await gemini.custom(source, schema, options.prompt) if schema else None
                filled = (
                    Filled(custom, (), validation_error(custom, schema) is None)
                    if schema is not None
                    else None
                )
            else:
                metadata = await asyncio.to_thread(
                    extractive.generate,
                    source,
                    max_tags,
                    bounds,
                    options.knowledge_points,
                    options.overlap,
                )
                filled = (
                    await asyncio.to_thread(fill_schema, schema, known_values(metadata, source))
                    if schema is not None
                    else None
                )
            if filled is not None:
                metadata = dataclasses.replace(
                    metadata,
                    custom_json=json.dumps(filled.document, ensure_ascii=False, indent=1),
                    unfilled=filled.unfilled,
                    custom_json_complete=filled.complete,
                )
            await self.results.put(key, metadata)
        artifacts = await self.write_artifacts(metadata, prefix)
        log.info(
            "metadata generated",
            extra={"engine": metadata.engine, "cached": cached, "cache": found, "prefix": prefix},
        )
        return Outcome(metadata, artifacts, cached)

    async def write_artifacts(self, metadata: Metadata, prefix: str) -> tuple[Artifact, ...]:
        documents = [
            (
                ArtifactKind.METADATA_JSON,
                json.dumps(metadata_dict(metadata), ensure_ascii=False, indent=1) + "\n",
            )
        ]
        if metadata.custom_json:
            documents.append((ArtifactKind.CUSTOM_METADATA_JSON, metadata.custom_json + "\n"))

        async def write(kind: ArtifactKind, text: str) -> Artifact:
            name = ARTIFACT_DIR + kind.value
            stored = await self._store.put_bytes(
                prefix + name, text.encode("utf-8"), content_type="application/json"
            )
            return Artifact(name=name, kind=kind, stored=stored, stage="metadata")

        return tuple(await asyncio.gather(*(write(kind, text) for kind, text in documents)))
