"""The offline JSON-schema filler never invents a value: what the content does not give is left
out (or null where the schema allows it), listed in ``unfilled`` as a JSON Pointer, and the
document is ``complete`` only when it validates."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from runtime.errors import InvalidArgument
from runtime.storage.local import LocalObjectStore
from services.metadata.generator import MetadataGenerator
from services.metadata.model import Chapter, MetadataOptions, Source, TimedText
from services.metadata.schema import Filled, fill_schema
from services.metadata.text import clock

CHAPTERS = [
    Chapter(0.0, "Making the Dough", end=64.0, summary="Knead the dough.", keyphrases=("dough",)),
    Chapter(64.0, "Rolling It Thin", end=125.5),
]
KNOWN: dict[str, Any] = {
    "title": "Fresh Pasta at Home",
    "description": "How to make fresh pasta with flour and eggs.",
    "summary": "Knead the dough for ten minutes. Roll it thin.",
    "show_notes": "Knead the dough for ten minutes. Roll it thin.\n\n00:00 Making the Dough",
    "tags": ["pasta", "dough", "cooking"],
    "keywords": ["pasta", "fresh pasta", "dough"],
    "chapters": CHAPTERS,
    "language": "en",
    "duration": 125.5,
    "filename": "pasta.mp4",
    "transcript": "Knead the dough for ten minutes. Roll it thin.",
    "on_screen_text": "",
    "word_count": 10,
    "engine": "extractive",
    "model": "extractive-v1",
}


def _texts() -> list[str]:
    texts = [v for v in KNOWN.values() if isinstance(v, str)]
    texts += [
        ", ".join(v) for v in KNOWN.values() if isinstance(v, list) and v and v is not CHAPTERS
    ]
    for chapter in CHAPTERS:
        texts += [chapter.title, chapter.summary, f"{clock(chapter.start)} {chapter.title}"]
        texts += [clock(chapter.start), clock(chapter.end), clock(chapter.end - chapter.start)]
        texts += list(chapter.keyphrases)
    texts.append(", ".join(f"{clock(c.start)} {c.title}" for c in CHAPTERS))
    return texts


HAYSTACK = "\n".join(_texts())
NUMBERS = {KNOWN["duration"], KNOWN["word_count"]} | {
    n for c in CHAPTERS for n in (c.start, c.end, c.end - c.start)
}
NUMBERS |= {round(n) for n in NUMBERS}
#: Enum members nobody said anything about (the filler used to write the first one).
UNSAID = ["beginner", "expert"]


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": required,
        "properties": properties,
    }


CASES: dict[str, tuple[dict[str, Any], dict[str, Any], set[str], bool]] = {
    # name: (schema, expected document, expected unfilled, complete)
    "enum": (
        _obj(["title", "level"], title={"type": "string"}, level={"enum": UNSAID}),
        {"title": "Fresh Pasta at Home"},
        {"/level"},
        False,
    ),
    "enum matching the content": (
        _obj(["language"], language={"enum": ["fr", "EN", "de"]}),
        {"language": "EN"},
        set(),
        True,
    ),
    "integer with a minimum": (
        _obj(["rating"], rating={"type": "integer", "minimum": 1, "maximum": 5}),
        {},
        {"/rating"},
        False,
    ),
    "a number out of range is not clamped": (
        _obj(["duration"], duration={"type": "number", "maximum": 60}),
        {},
        {"/duration"},
        False,
    ),
    "boolean": (
        _obj(["explicit"], explicit={"type": "boolean"}, kids={"type": "boolean"}),
        {},
        {"/explicit", "/kids"},
        False,
    ),
    "string with minLength": (
        _obj(
            ["summary", "headline"],
            summary={"type": "string", "minLength": 1},
            headline={"type": "string", "minLength": 500},
            blurb={"type": "string", "maxLength": 9},
        ),
        {"summary": KNOWN["summary"], "blurb": "How to ma"},
        {"/headline"},
        False,
    ),
    "string with a pattern": (
        _obj(["title"], title={"type": "string", "pattern": "^[A-Z]{3}$"}),
        {},
        {"/title"},
        False,
    ),
    "nested object": (
        _obj(
            ["video"],
            video={
                "type": "object",
                "required": ["title", "rating"],
                "properties": {
                    "title": {"type": "string"},
                    "rating": {"type": "integer", "minimum": 1},
                    "level": {"enum": UNSAID},
                },
            },
        ),
        {"video": {"title": "Fresh Pasta at Home"}},
        {"/video/rating", "/video/level"},
        False,
    ),
    "an object the content says nothing about": (
        _obj(
            ["author"],
            author={"type": "object", "properties": {"email": {"type": "string"}}},
        ),
        {},
        {"/author"},
        False,
    ),
    "array with minItems": (
        _obj(["tags"], tags={"type": "array", "items": {"type": "string"}, "minItems": 5}),
        {"tags": ["pasta", "dough", "cooking"]},
        {"/tags"},
        False,
    ),
    "array items the schema cannot take are left out": (
        _obj(
            ["keywords"],
            keywords={"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
        ),
        {"keywords": ["pasta", "dough"]},
        set(),
        True,
    ),
    "nullable field": (
        _obj(
            ["title", "country", "guest"],
            title={"type": "string"},
            country={"type": ["string", "null"]},
            guest={"anyOf": [{"type": "string", "pattern": "^@"}, {"type": "null"}]},
        ),
        {"title": "Fresh Pasta at Home", "country": None, "guest": None},
        {"/country", "/guest"},
        True,
    ),
    "const and default are the schema's own": (
        _obj(
            ["version", "visibility", "level"],
            version={"const": 2},
            visibility={"enum": ["public", "private"], "default": "private"},
            level={"enum": UNSAID},
            kids={"type": "boolean", "default": False},
        ),
        {"version": 2, "visibility": "private"},
        {"/visibility", "/level", "/kids"},
        False,
    ),
    "chapters from their own values": (
        _obj(
            ["chapters"],
            chapters={
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["start", "title", "summary"],
                    "properties": {
                        "start": {"type": "string"},
                        "end_seconds": {"type": "number"},
                        "title": {"type": "string"},
                        "summary": {"type": "string"},
                        "keyphrases": {"type": "array", "items": {"type": "string"}},
                        "speaker": {"type": "string"},
                    },
                },
            },
        ),
        {
            "chapters": [
                {
                    "start": "00:00",
                    "end_seconds": 64.0,
                    "title": "Making the Dough",
                    "summary": "Knead the dough.",
                    "keyphrases": ["dough"],
                },
                {"start": "01:04", "end_seconds": 125.5, "title": "Rolling It Thin"},
            ]
        },
        # The second chapter has no summary: not the video's, not "".
        {
            "/chapters/0/speaker",
            "/chapters/1/summary",
            "/chapters/1/keyphrases",
            "/chapters/1/speaker",
        },
        False,
    ),
    "draft-07 definitions and escaped pointers": (
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "required": ["a/b", "c~d", "outline"],
            "properties": {
                "a/b": {"type": "string"},
                "c~d": {"$ref": "#/definitions/level"},
                "outline": {"type": "array", "items": {"type": "string"}},
            },
            "definitions": {"level": {"enum": UNSAID}},
        },
        {"outline": ["00:00 Making the Dough", "01:04 Rolling It Thin"]},
        {"/a~1b", "/c~0d"},
        False,
    ),
}


def _leaves(document: Any, pointer: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _leaves(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _leaves(value, f"{pointer}/{index}")
    else:
        yield pointer, document


def _declared(schema: Any) -> list[Any]:
    """Every ``const`` and ``default`` in the schema: values the schema itself gives."""
    found: list[Any] = []
    if isinstance(schema, dict):
        found += [schema[k] for k in ("const", "default") if k in schema]
        for value in schema.values():
            found += _declared(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _declared(value)
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_every_value_is_the_contents_or_the_schemas(name: str) -> None:
    schema, expected, unfilled, complete = CASES[name]
    assert not any(word in HAYSTACK.casefold() for word in UNSAID)
    filled = fill_schema(schema, KNOWN)
    assert filled.document == expected
    assert set(filled.unfilled) == unfilled and len(filled.unfilled) == len(unfilled)
    assert filled.complete is complete
    assert (jsonschema.validators.validator_for(schema)(schema).is_valid(expected)) is complete
    declared = _declared(schema)
    for pointer, leaf in _leaves(filled.document):
        if leaf is None:
            assert pointer in filled.unfilled, pointer
        elif any(leaf == value and type(leaf) is type(value) for value in declared):
            continue  # the schema's const or default
        elif isinstance(leaf, str):
            # The content's text, cut or joined, or an enum's spelling of it ("EN" for "en").
            assert leaf and leaf.casefold() in HAYSTACK.casefold(), (pointer, leaf)
        elif isinstance(leaf, bool):
            pytest.fail(f"{pointer}: {leaf} is nobody's (the content has no booleans)")
        else:
            assert leaf in NUMBERS, (pointer, leaf)


def test_a_required_nullable_field_is_null_listed_and_complete() -> None:
    schema = _obj(
        ["title", "country"], title={"type": "string"}, country={"type": ["string", "null"]}
    )
    filled = fill_schema(schema, KNOWN)
    assert filled == Filled({"title": KNOWN["title"], "country": None}, ("/country",), True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        filled.complete = False  # type: ignore[misc]
    # Optional, it is left out rather than written as null.
    optional = fill_schema({**schema, "required": ["title"]}, KNOWN)
    assert optional == Filled({"title": KNOWN["title"]}, ("/country",), True)


def test_unknown_values_are_not_content() -> None:
    """An empty string (no language detected) and a duration of 0 (unknown) fill nothing."""
    schema = _obj(["language", "duration"], language={"type": "string"}, duration={})
    filled = fill_schema(schema, {**KNOWN, "language": "", "duration": 0.0})
    assert filled == Filled({}, ("/language", "/duration"), False)


def test_a_list_found_empty_is_the_contents_answer() -> None:
    schema = _obj(["chapters", "tags"], chapters={"type": "array"}, tags={"type": "array"})
    assert fill_schema(schema, {**KNOWN, "chapters": [], "tags": []}) == Filled(
        {"chapters": [], "tags": []}, (), True
    )


def test_a_rule_the_walk_does_not_follow_still_makes_the_document_incomplete() -> None:
    schema = {**_obj(["title"], title={"type": "string"}), "not": {"required": ["title"]}}
    filled = fill_schema(schema, KNOWN)
    assert filled.document == {"title": KNOWN["title"]}
    assert filled.complete is False and filled.unfilled == ("",)


def test_a_reference_that_cannot_be_followed_is_an_invalid_schema() -> None:
    with pytest.raises(InvalidArgument) as caught:
        fill_schema(_obj(["title"], title={"$ref": "#/$defs/missing"}), KNOWN)
    assert caught.value.reason == "INVALID_JSON_SCHEMA"


def test_a_schema_that_recurses_into_itself_is_not_filled_forever() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "required": ["title", "child"],
                "properties": {"title": {"type": "string"}, "child": {"$ref": "#/$defs/node"}},
            }
        },
        "$ref": "#/$defs/node",
    }
    filled = fill_schema(schema, KNOWN)
    assert filled.document == {"title": KNOWN["title"], "child": {"title": KNOWN["title"]}}
    assert filled.unfilled == ("/child/child",) and filled.complete is False


async def test_the_generator_reports_unfilled_and_completeness(tmp_path: Path) -> None:
    generator = MetadataGenerator(LocalObjectStore(tmp_path), None, cache_entries=0)
    source = Source(
        (TimedText(0.0, 4.0, "Knead the pasta dough for ten minutes."),),
        duration=4.0,
        language="en",
        filename="pasta.mp4",
    )
    known = _obj(["title", "language"], title={"type": "string"}, language={"type": "string"})
    outcome = await generator.generate(
        source, MetadataOptions(json_schema=json.dumps(known)), "jobs/s1/"
    )
    metadata = outcome.metadata
    assert json.loads(metadata.custom_json) == {"title": metadata.title, "language": "en"}
    assert metadata.unfilled == () and metadata.custom_json_complete is True

    rated = _obj(["title", "rating"], title={"type": "string"}, rating={"type": "integer"})
    outcome = await generator.generate(
        source, MetadataOptions(json_schema=json.dumps(rated)), "jobs/s2/"
    )
    metadata = outcome.metadata
    assert json.loads(metadata.custom_json) == {"title": metadata.title}
    assert metadata.unfilled == ("/rating",) and metadata.custom_json_complete is False
    stored = b"".join(
        [c async for c in LocalObjectStore(tmp_path).read("jobs/s2/metadata/custom.json")]
    )
    assert json.loads(stored) == {"title": metadata.title}
