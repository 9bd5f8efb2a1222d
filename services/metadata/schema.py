"""Caller-provided JSON Schemas: checking them, and filling them offline.

``parse_schema`` accepts a JSON Schema (draft 4 to 2020-12, picked by ``$schema``, default
2020-12) of at most 64 KiB whose references all stay inside the document; anything else is
INVALID_ARGUMENT with reason INVALID_JSON_SCHEMA.

``fill_schema`` is how the extractive generator answers a schema without a language model. It
walks the schema and fills each value from what the generator knows, matched by property name:

    title/headline/name/heading    the title          tags/hashtags        the tags
    description/abstract/blurb     the description    keywords/topics      the keywords
    summary/synopsis/tldr/overview the summary        chapters/sections    the chapters
    show_notes/notes               the show notes     language/lang        the language
    duration/duration_seconds/length                  the duration (seconds)
    filename/file_name             the file name      transcript/text      the transcript
    word_count/words               the word count     engine, model        the generator

Chapter items are objects filled by the same rule (start/start_seconds/time/timestamp/offset,
title/name/heading/label), or strings "MM:SS Title". Values are converted to the type the
schema asks for (a list joined into a string, a number written as text, ...); a property with no
match gets its ``const``, first ``enum`` value, ``default``, or the type's empty value (within
``minimum``/``maximum``; strings cut to ``maxLength``; arrays cut to ``maxItems`` and padded to
``minItems``). Optional properties are filled only when they match a name or have a default.
``anyOf``/``oneOf`` take the first branch whose filled value validates; ``allOf`` merges its
object branches. The result is validated against the schema before it is returned; a schema the
rules cannot satisfy (a ``pattern`` on a required string, say) is FAILED_PRECONDITION with
reason SCHEMA_NOT_FILLABLE: ask the Gemini engine for it instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import jsonschema.exceptions
import referencing.exceptions
from jsonschema.protocols import Validator

from runtime.errors import FailedPrecondition, InvalidArgument
from services.metadata.model import Chapter
from services.metadata.text import clock

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "title": ("title", "headline", "name", "videotitle", "heading", "label", "chaptertitle"),
    "description": ("description", "desc", "abstract", "blurb", "longdescription"),
    "summary": ("summary", "synopsis", "tldr", "overview", "shortsummary", "recap"),
    "show_notes": ("shownotes", "notes"),
    "tags": ("tags", "hashtags", "labels"),
    "keywords": ("keywords", "keyphrases", "topics", "themes", "subjects", "categories"),
    "chapters": ("chapters", "sections", "timestamps", "outline", "segments", "parts"),
    "language": ("language", "lang", "languagecode", "locale"),
    "duration": ("duration", "durationseconds", "length", "lengthseconds", "runtime"),
    "filename": ("filename", "file", "sourcefile"),
    "transcript": ("transcript", "text", "fulltext", "transcription"),
    "word_count": ("wordcount", "words", "numwords"),
    "engine": ("engine", "generator"),
    "model": ("model",),
    # inside chapters
    "start": ("start", "startseconds", "time", "timestamp", "offset", "at", "startsec", "begin"),
}
_BY_ALIAS = {alias: field for field, aliases in _SYNONYMS.items() for alias in aliases}


def invalid_schema(message: str) -> InvalidArgument:
    return InvalidArgument(f"json_schema is not usable: {message}", reason="INVALID_JSON_SCHEMA")


def _external_refs(node: Any, depth: int = 0) -> str | None:
    if depth > MAX_DEPTH:
        raise invalid_schema(f"it nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if (
                key in ("$ref", "$dynamicRef")
                and isinstance(value, str)
                and not value.startswith("#")
            ):
                return value
            found = _external_refs(value, depth + 1)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _external_refs(value, depth + 1)
            if found:
                return found
    return None


def parse_schema(text: str) -> dict[str, Any]:
    """The caller's schema as a dict, checked; ``InvalidArgument`` (INVALID_JSON_SCHEMA) when
    it is not JSON, not a schema, too large, or refers outside itself."""
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise invalid_schema(f"it is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_schema(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(schema, dict):
        raise invalid_schema("the top level must be a JSON object")
    external = _external_refs(schema)
    if external:
        raise invalid_schema(f"$ref {external!r} points outside the schema")
    try:
        validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise invalid_schema(f"{exc.message} at {path}") from None
    return schema


def validator_for(schema: Mapping[str, Any]) -> type[Validator]:
    cls: type[Validator] = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    return cls


def validation_error(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``instance`` does not validate against ``schema``; ``None`` when it does."""
    validator = validator_for(schema)(schema)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except referencing.exceptions.Unresolvable as exc:
        raise invalid_schema(f"unresolvable reference {exc}") from None
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{error.message[:200]} at {path}"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _field(name: str) -> str | None:
    return _BY_ALIAS.get(_key(name))


class _Filler:
    def __init__(self, root: Mapping[str, Any], known: Mapping[str, Any]) -> None:
        self._root = root
        self._known = known

    def _resolve(self, schema: Any, depth: int) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            if depth > MAX_DEPTH:
                raise _NotFillable("references nest too deep")
            pointer = schema["$ref"]
            target: Any = self._root
            for part in pointer.lstrip("#").strip("/").split("/") if pointer != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise _NotFillable(f"cannot follow $ref {pointer!r}")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) and rest else target
            depth += 1
        return schema

    def _standalone(self, schema: Any) -> Any:
        """``schema`` with the root's definitions, so its local references resolve."""
        if not isinstance(schema, dict):
            return schema
        defs = {k: self._root[k] for k in ("$defs", "definitions") if k in self._root}
        return {**defs, **schema}

    def fill(self, schema: Any, value: Any, known: Mapping[str, Any], depth: int = 0) -> Any:
        """A value for ``schema``, from ``value`` (what the name matched, or ``None``)."""
        if depth > MAX_DEPTH:
            raise _NotFillable("the schema nests too deep")
        schema = self._resolve(schema, depth)
        if schema is True or schema == {}:
            return value if value is not None else None
        if not isinstance(schema, dict):
            raise _NotFillable("a schema that accepts nothing")
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            options = list(schema["enum"])
            return value if value in options else options[0]
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                base = {k: v for k, v in schema.items() if k != combinator}
                for branch in schema[combinator]:
                    merged = (
                        {**base, **self._resolve(branch, depth)}
                        if isinstance(branch, dict)
                        else branch
                    )
                    try:
                        candidate = self.fill(merged, value, known, depth + 1)
                    except _NotFillable:
                        continue
                    if validation_error(candidate, self._standalone(merged)) is None:
                        return candidate
                raise _NotFillable(f"no {combinator} branch could be filled")
        if "allOf" in schema:
            combined: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for branch in schema["allOf"]:
                branch = self._resolve(branch, depth)
                if isinstance(branch, dict):
                    for key, item in branch.items():
                        if key == "properties" and key in combined:
                            combined[key] = {**combined[key], **item}
                        elif key == "required" and key in combined:
                            combined[key] = [*combined[key], *item]
                        else:
                            combined.setdefault(key, item)
            return self.fill(combined, value, known, depth + 1)
        kind = self._type(schema, value)
        if value is None and "default" in schema:
            return schema["default"]
        return getattr(self, f"_{kind}")(schema, value, known, depth)

    @staticmethod
    def _type(schema: Mapping[str, Any], value: Any) -> str:
        declared = schema.get("type")
        if declared is None:
            if "properties" in schema:
                return "object"
            if "items" in schema:
                return "array"
            declared = _natural_type(value) if value is not None else "null"
        types = [declared] if isinstance(declared, str) else list(declared)
        natural = _natural_type(value) if value is not None else None
        if natural is not None and natural in types:
            return natural
        if natural == "integer" and "number" in types:
            return "number"
        non_null = [t for t in types if t != "null"]
        if value is None and "null" in types and len(types) > 1:
            return "null"
        return non_null[0] if non_null else "null"

    def _object(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        scope = dict(known)
        if isinstance(value, Mapping):
            scope.update(value)
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        result: dict[str, Any] = {}
        for name, subschema in properties.items():
            field = _field(name)
            matched = scope.get(field) if field else None
            if field in ("start", "duration") and isinstance(matched, int | float):
                matched = _Seconds(matched)  # written as "MM:SS" where a string is wanted
            has_default = isinstance(subschema, dict) and "default" in subschema
            if matched is None and name not in required and not has_default:
                continue
            result[name] = self.fill(subschema, matched, scope, depth + 1)
        for name in sorted(required - set(result)):
            result[name] = (
                self.fill({}, None, scope, depth + 1) if name not in properties else result[name]
            )
        return result

    def _array(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        items_schema = schema.get("items", {})
        if isinstance(items_schema, list):  # draft 4-7 tuple form
            items_schema = items_schema[0] if items_schema else {}
        values = (
            list(value) if isinstance(value, list | tuple) else ([] if value is None else [value])
        )
        filled = [self.fill(items_schema, _item(v), known, depth + 1) for v in values]
        if "maxItems" in schema:
            filled = filled[: schema["maxItems"]]
        while len(filled) < schema.get("minItems", 0):
            filled.append(self.fill(items_schema, None, known, depth + 1))
        return filled

    def _string(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        if isinstance(value, list | tuple):
            text = ", ".join(_as_text(v) for v in value)
        else:
            text = _as_text(value) if value is not None else ""
        if "maxLength" in schema:
            text = text[: schema["maxLength"]]
        return text

    def _number(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
        return _clamp(float(number), schema)  # a plain float (not _Seconds) in the output

    def _integer(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
        return round(_clamp(float(number), schema))

    def _boolean(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        return bool(value) if isinstance(value, bool) else False

    def _null(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Any:
        return None


class _NotFillable(Exception):
    pass


class _Seconds(float):
    """A time: a number where the schema wants one, "MM:SS" where it wants text."""


def _natural_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def _item(value: Any) -> Any:
    if isinstance(value, Chapter):
        return {"start": value.start, "title": value.title}
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, _Seconds):
        return clock(value)
    if isinstance(value, Chapter):
        return f"{clock(value.start)} {value.title}"
    if isinstance(value, Mapping) and "start" in value and "title" in value:
        return f"{clock(float(value['start']))} {value['title']}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _clamp(number: float, schema: Mapping[str, Any]) -> float:
    if "minimum" in schema:
        number = max(number, float(schema["minimum"]))
    if "maximum" in schema:
        number = min(number, float(schema["maximum"]))
    return number


def fill_schema(schema: Mapping[str, Any], known: Mapping[str, Any]) -> Any:
    """An instance of ``schema`` filled from ``known`` (keyed by the field names above), checked
    against the schema; ``FailedPrecondition`` (SCHEMA_NOT_FILLABLE) when the rules fall short."""
    try:
        instance = _Filler(schema, known).fill(schema, None, known)
    except _NotFillable as exc:
        raise FailedPrecondition(
            f"the extractive generator cannot fill this schema: {exc}",
            reason="SCHEMA_NOT_FILLABLE",
        ) from None
    problem = validation_error(instance, schema)
    if problem is not None:
        raise FailedPrecondition(
            f"the extractive generator cannot fill this schema: {problem}",
            reason="SCHEMA_NOT_FILLABLE",
        )
    return instance
