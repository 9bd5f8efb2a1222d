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
    on_screen_text/screen_text     the text the OCR stage read on screen

Chapter items are objects filled from that chapter alone (start/start_seconds/time/timestamp,
end/end_seconds, duration, title/name/heading/label, summary, keywords/keyphrases, and the
video's language), or strings "MM:SS Title". Values are converted to the type the schema asks
for (a list joined into a string, a number written as text, a time as "MM:SS" where a string is
wanted, a number rounded where an integer is wanted, a string cut to ``maxLength``, an array cut
to ``maxItems``). A required object with no matching name is filled from the names around it
(a required ``video`` object gets the title), once per schema: one that recurses into itself is
not filled again below.

It never invents a value. The rule, field by field (a field is a property, an array item, or
the document itself):

- A value that matched and, converted, validates against the field's schema is written (a
  list found empty, such as the chapters of a silent video, is written as ``[]``: that is what
  the content says).
- ``const`` is always written: the schema fixes the value, there is nothing to invent.
- A field with no match (nothing known by that name, or known to be empty: an empty string, a
  duration of 0), or whose matched value cannot be made valid (a ``pattern``, a ``minimum``, an
  ``enum`` it is not in: numbers are not clamped, enums are not guessed), is *unfilled*. An
  unfilled required field gets the schema's ``default`` when it declares one (the caller's own
  value for "unknown"), else ``null`` when the field's schema declares null (``type`` with
  "null", a null ``enum`` member, an ``anyOf``/``oneOf`` branch of type null), else it stays
  absent. An unfilled optional field stays absent: the first ``enum`` value, the ``minimum``,
  ``false``, ``""``, ``[]`` and ``default`` are never written for it (absence already means the
  ``default`` to a reader of the schema). Either way its JSON Pointer (RFC 6901: "/rating",
  "/chapters/0/summary", "~0" for "~" and "~1" for "/" in a name) is listed in
  ``Filled.unfilled``, in document order.
- Arrays hold only real items: an item that cannot be made valid is left out (an array left
  with none is unfilled), and an array shorter than ``minItems`` keeps its real items and is
  listed as unfilled; it is never padded. An object or array that breaks a rule of its own
  (``minProperties``, ``uniqueItems``, ...) keeps what it has and is listed too.
- ``anyOf``/``oneOf`` take the first branch that fills from the content and validates, else
  the first that fills partially, else the field is unfilled; ``allOf`` merges its object
  branches.

``Filled.complete`` says whether the document validates against the whole schema. It is false
when a required field is absent (the document is returned anyway, partial, with what is real);
a required field written as its ``default`` or as ``null`` still validates, so the document
can be complete with such pointers listed in ``unfilled``: they tell the caller which values
the content did not provide. A schema that is hard to fill is not an error (ask the Gemini
engine for a complete one); only a schema whose local ``$ref`` cannot be followed is
INVALID_ARGUMENT (INVALID_JSON_SCHEMA).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.protocols import Validator

from runtime.errors import InvalidArgument
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
    "on_screen_text": ("onscreentext", "screentext", "ocrtext"),
    "word_count": ("wordcount", "words", "numwords"),
    "engine": ("engine", "generator"),
    "model": ("model",),
    # inside chapters
    "start": (
        "start",
        "startseconds",
        "starttime",
        "time",
        "timestamp",
        "offset",
        "at",
        "startsec",
        "begin",
    ),
    "end": ("end", "endseconds", "endtime", "endsec", "until", "stop", "finish"),
}
_BY_ALIAS = {alias: field for field, aliases in _SYNONYMS.items() for alias in aliases}
#: Fields holding a time in seconds: "MM:SS" where the schema wants a string.
_TIMES = ("start", "end", "duration")


@dataclass(frozen=True)
class Filled:
    """What ``fill_schema`` made of a schema (see the module's docstring for the rule)."""

    #: The document, partial when ``complete`` is false; ``None`` when not even its top level
    #: could be filled.
    document: Any
    #: JSON Pointers (RFC 6901) of the fields the content did not fill, in document order.
    unfilled: tuple[str, ...]
    #: Whether ``document`` validates against the schema.
    complete: bool


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


def _best_error(instance: Any, schema: Mapping[str, Any]) -> Any:
    validator = validator_for(schema)(schema)
    try:
        return jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except referencing.exceptions.Unresolvable as exc:
        raise invalid_schema(f"unresolvable reference {exc}") from None


def validation_error(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``instance`` does not validate against ``schema``; ``None`` when it does."""
    error = _best_error(instance, schema)
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{error.message[:200]} at {path}"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _field(name: str) -> str | None:
    return _BY_ALIAS.get(_key(name))


def _child(pointer: str, name: str | int) -> str:
    """The JSON Pointer (RFC 6901) of ``name`` under ``pointer``."""
    return f"{pointer}/{str(name).replace('~', '~0').replace('/', '~1')}"


class _Absent:
    """No value: the field is left out of the document."""

    def __repr__(self) -> str:
        return "ABSENT"


_ABSENT: Any = _Absent()


@dataclass(frozen=True)
class _Mark:
    unfilled: int
    content: int


class _Filler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root
        self._validator = validator_for(root)(root)
        specification = referencing.jsonschema.specification_with(
            str(root.get("$schema", "")), default=referencing.jsonschema.DRAFT202012
        )
        self._resolver = referencing.Registry().resolver_with_root(
            specification.create_resource(root)
        )
        #: Pointers of the fields left unfilled so far, in document order.
        self.unfilled: list[str] = []
        #: How many values have been written from the content so far.
        self._content = 0
        #: The (unresolved) schemas of the objects being filled from their parent's names, so a
        #: schema that recurses into itself is not filled again and again from the same names.
        self._borrowing: set[int] = set()

    # --- bookkeeping ---------------------------------------------------------------------------

    def _mark(self) -> _Mark:
        return _Mark(len(self.unfilled), self._content)

    def _undo(self, mark: _Mark) -> None:
        del self.unfilled[mark.unfilled :]
        self._content = mark.content

    def _valid(self, instance: Any, schema: Any) -> bool:
        """Whether ``instance`` validates against ``schema``, a part of the root schema (its
        references resolve against the root)."""
        validator = self._validator.evolve(schema=schema)
        try:
            return next(iter(validator.iter_errors(instance)), None) is None
        except referencing.exceptions.Unresolvable as exc:
            raise invalid_schema(f"unresolvable reference {exc}") from None

    def _resolve(self, schema: Any, depth: int) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            if depth > MAX_DEPTH:
                raise invalid_schema("its references nest too deep")
            pointer = schema["$ref"]
            try:
                target = self._resolver.lookup(pointer).contents
            except referencing.exceptions.Unresolvable:
                raise invalid_schema(f"cannot follow $ref {pointer!r}") from None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) and rest else target
            depth += 1
        return schema

    # --- the walk ------------------------------------------------------------------------------

    def fill(
        self,
        schema: Any,
        value: Any,
        scope: Mapping[str, Any],
        pointer: str,
        required: bool,
        depth: int,
        fallback: bool = True,
    ) -> Any:
        """A value for ``schema`` at ``pointer`` from ``value`` (what the name matched, or
        ``None``), or ``_ABSENT``. ``fallback`` false (an ``anyOf`` branch being tried) leaves
        the ``const``/``default``/``null`` of an unfilled field to the caller."""
        if depth > MAX_DEPTH:
            self.unfilled.append(pointer)
            return _ABSENT
        raw = schema
        schema = self._resolve(schema, depth)
        if schema is False:
            if required:
                self.unfilled.append(pointer)
            return _ABSENT
        if not isinstance(schema, dict):
            schema = {}
        if "const" in schema:
            if fallback or value == schema["const"]:
                return copy.deepcopy(schema["const"])
            self.unfilled.append(pointer)
            return _ABSENT
        for combinator in ("anyOf", "oneOf"):
            if isinstance(schema.get(combinator), list):
                return self._choose(schema, combinator, value, scope, pointer, required, depth)
        if isinstance(schema.get("allOf"), list):
            merged = self._merge_all(schema, depth)
            return self.fill(merged, value, scope, pointer, required, depth + 1, fallback)
        if value is not None:
            mark = self._mark()
            filled = self._convert(schema, value, scope, pointer, depth)
            if filled is not _ABSENT:
                return filled
            self._undo(mark)
        return self._missing(raw, schema, scope, pointer, required, depth, fallback)

    def _missing(
        self,
        raw: Any,
        schema: dict[str, Any],
        scope: Mapping[str, Any],
        pointer: str,
        required: bool,
        depth: int,
        fallback: bool,
    ) -> Any:
        """The field at ``pointer`` has no usable value of its own."""
        root = pointer == ""
        if (root or required) and _objectish(schema) and id(raw) not in self._borrowing:
            # A required object (or the document itself) is filled from the names around it.
            mark = self._mark()
            self._borrowing.add(id(raw))
            try:
                filled = self._object(schema, None, scope, pointer, depth)
            finally:
                self._borrowing.discard(id(raw))
            if root or self._content > mark.content:
                return filled
            self._undo(mark)
        self.unfilled.append(pointer)
        if not (fallback and required):
            return _ABSENT
        if "default" in schema:
            return copy.deepcopy(schema["default"])
        if self._declares_null(schema, depth) and self._valid(None, schema):
            return None
        return _ABSENT

    def _choose(
        self,
        schema: dict[str, Any],
        combinator: str,
        value: Any,
        scope: Mapping[str, Any],
        pointer: str,
        required: bool,
        depth: int,
    ) -> Any:
        """The first branch that fills cleanly, else the first that fills partially."""
        base = {k: v for k, v in schema.items() if k != combinator}
        partial: tuple[Any, list[str], int] | None = None
        for branch in schema[combinator]:
            resolved = self._resolve(branch, depth)
            merged = {**base, **resolved} if isinstance(resolved, dict) else resolved
            mark = self._mark()
            candidate = self.fill(merged, value, scope, pointer, required, depth + 1, False)
            if candidate is not _ABSENT and (value is not None or self._content > mark.content):
                if len(self.unfilled) == mark.unfilled:
                    return candidate
                if partial is None:
                    partial = (candidate, self.unfilled[mark.unfilled :], self._content)
            self._undo(mark)
        if partial is not None:
            candidate, unfilled, self._content = partial
            self.unfilled.extend(unfilled)
            return candidate
        return self._missing(base, schema, scope, pointer, required, depth, True)

    def _merge_all(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
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
        return combined

    def _declares_null(self, schema: Any, depth: int) -> bool:
        schema = self._resolve(schema, depth)
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return False
        declared = schema.get("type")
        if declared == "null" or (isinstance(declared, list) and "null" in declared):
            return True
        if isinstance(schema.get("enum"), list) and None in schema["enum"]:
            return True
        if "const" in schema and schema["const"] is None:
            return True
        return any(
            self._declares_null(branch, depth + 1)
            for combinator in ("anyOf", "oneOf")
            for branch in schema.get(combinator, ())
        )

    def _convert(
        self, schema: dict[str, Any], value: Any, scope: Mapping[str, Any], pointer: str, depth: int
    ) -> Any:
        """``value`` as the schema's type, or ``_ABSENT`` when it cannot be made valid."""
        kind = _type(schema, value)
        if kind == "object":
            if not isinstance(value, Mapping):
                return _ABSENT
            if "properties" not in schema:
                result: Any = _plain(value)
            else:
                return self._object(schema, value, scope, pointer, depth)
        elif kind == "array":
            return self._array(schema, value, scope, pointer, depth)
        else:
            result = _SCALARS[kind](schema, value)
            if result is _ABSENT:
                return _ABSENT
            if isinstance(result, str):
                result = _enum_spelling(schema, result)
        if not self._valid(result, schema):
            return _ABSENT
        self._content += 1
        return result

    def _object(
        self,
        schema: dict[str, Any],
        value: Mapping[str, Any] | None,
        scope: Mapping[str, Any],
        pointer: str,
        depth: int,
    ) -> dict[str, Any]:
        if value is not None:
            scope = value  # a chapter's names are its own, not the video's
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = [name for name in schema.get("required", ()) if isinstance(name, str)]
        others = schema.get("additionalProperties", True)
        mark = self._mark()
        result: dict[str, Any] = {}
        names = [*properties, *(name for name in required if name not in properties)]
        for name in names:
            field = _field(name)
            matched = _known(field, scope.get(field)) if field else None
            if field in _TIMES and _is_number(matched):
                matched = _Seconds(matched)
            subschema = properties.get(name, others)
            filled = self.fill(
                subschema, matched, scope, _child(pointer, name), name in required, depth + 1
            )
            if filled is not _ABSENT:
                result[name] = filled
        if len(self.unfilled) == mark.unfilled and not self._valid(result, schema):
            self.unfilled.append(pointer)  # a rule of the object's own (minProperties, ...)
        return result

    def _array(
        self, schema: dict[str, Any], value: Any, scope: Mapping[str, Any], pointer: str, depth: int
    ) -> Any:
        items_schema = schema.get("items", {})
        if isinstance(items_schema, list):  # draft 4-7 tuple form
            items_schema = items_schema[0] if items_schema else {}
        values = list(value) if isinstance(value, list | tuple) else [value]
        limit = schema.get("maxItems")
        mark = self._mark()
        result: list[Any] = []
        for item in values:
            if isinstance(limit, int) and len(result) >= limit:
                break
            item_mark = self._mark()
            filled = self.fill(
                items_schema,
                _item(item, scope),
                scope,
                _child(pointer, len(result)),
                True,
                depth + 1,
                False,
            )
            if filled is _ABSENT:
                self._undo(item_mark)  # a real item the schema cannot take is left out
                continue
            result.append(filled)
        if values and not result:
            self._undo(mark)
            return _ABSENT
        if len(self.unfilled) == mark.unfilled and not self._valid(result, schema):
            self.unfilled.append(pointer)  # too few real items for minItems, say: not padded
        return result


def _objectish(schema: Mapping[str, Any]) -> bool:
    declared = schema.get("type")
    return (
        declared == "object"
        or (isinstance(declared, list) and "object" in declared)
        or (declared is None and "properties" in schema)
    )


def _type(schema: Mapping[str, Any], value: Any) -> str:
    declared = schema.get("type")
    natural = _natural_type(value)
    if declared is None:
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return natural
    types = [declared] if isinstance(declared, str) else list(declared)
    if natural in types:
        return natural
    if natural == "integer" and "number" in types:
        return "number"
    non_null = [t for t in types if t != "null"]
    return non_null[0] if non_null else "null"


def _string(schema: Mapping[str, Any], value: Any) -> Any:
    if isinstance(value, list | tuple):
        text = ", ".join(part for part in (_as_text(v) for v in value) if part)
    else:
        text = _as_text(value)
    if isinstance(schema.get("maxLength"), int):
        text = text[: schema["maxLength"]]
    return text if text else _ABSENT


def _number(schema: Mapping[str, Any], value: Any) -> Any:
    # Not clamped to minimum/maximum: a number out of range is not the content's.
    return float(value) if _is_number(value) else _ABSENT  # a float, not _Seconds


def _integer(schema: Mapping[str, Any], value: Any) -> Any:
    return round(float(value)) if _is_number(value) else _ABSENT


def _boolean(schema: Mapping[str, Any], value: Any) -> Any:
    return value if isinstance(value, bool) else _ABSENT


def _null(schema: Mapping[str, Any], value: Any) -> Any:
    return _ABSENT  # a value cannot be written as null


_SCALARS = {
    "string": _string,
    "number": _number,
    "integer": _integer,
    "boolean": _boolean,
    "null": _null,
}


class _Seconds(float):
    """A time: a number where the schema wants one, "MM:SS" where it wants text."""


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _known(field: str, value: Any) -> Any:
    """``value``, or ``None`` when it says nothing (empty text; a duration of 0 is unknown)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if field == "duration" and _is_number(value) and value <= 0:
        return None
    return value


def _enum_spelling(schema: Mapping[str, Any], text: str) -> str:
    """The ``enum`` member ``text`` is, spelled as the schema spells it ("EN" for "en")."""
    options = schema.get("enum")
    if isinstance(options, list) and text not in options:
        for option in options:
            if isinstance(option, str) and option.casefold() == text.casefold():
                return option
    return text


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


def _item(value: Any, scope: Mapping[str, Any]) -> Any:
    """An array item as the filler sees it: a chapter becomes its own names."""
    if not isinstance(value, Chapter):
        return value
    ends = value.end > value.start
    return {
        "start": value.start,
        "end": value.end if ends else None,
        "duration": round(value.end - value.start, 3) if ends else None,
        "title": value.title or None,
        "summary": value.summary or None,
        "keywords": list(value.keyphrases) or None,
        "language": scope.get("language") or None,
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON, for a schema that takes anything."""
    if isinstance(value, Chapter):
        value = _item(value, {})
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, _Seconds):
        return clock(value)
    if isinstance(value, Chapter):
        return f"{clock(value.start)} {value.title}"
    if isinstance(value, Mapping):
        if _is_number(value.get("start")) and value.get("title"):
            return f"{clock(float(value['start']))} {value['title']}"
        return json.dumps(_plain(value), ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _error_pointer(instance: Any, schema: Mapping[str, Any]) -> str:
    error = _best_error(instance, schema)
    path = list(error.absolute_path) if error is not None else []
    pointer = ""
    for part in path:
        pointer = _child(pointer, part)
    return pointer


def fill_schema(schema: Mapping[str, Any], known: Mapping[str, Any]) -> Filled:
    """``schema`` filled from ``known`` (keyed by the field names above), never with invented
    values: what the content does not give is left out (or null) and listed in ``unfilled``;
    ``complete`` says whether the document validates. ``InvalidArgument``
    (INVALID_JSON_SCHEMA) only for a ``$ref`` that cannot be followed."""
    filler = _Filler(schema)
    document = filler.fill(schema, None, known, "", True, 0)
    unfilled = list(dict.fromkeys(filler.unfilled))
    if document is _ABSENT:
        return Filled(None, tuple(unfilled) or ("",), False)
    complete = validation_error(document, schema) is None
    if not complete and not unfilled:
        unfilled.append(_error_pointer(document, schema))  # a rule the walk does not follow
    return Filled(document, tuple(unfilled), complete)
