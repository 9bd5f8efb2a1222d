"""Protobuf JSON dicts -> messages: ``json_format.ParseDict``'s results at a fraction of its cost.

JSONB columns hold ``MessageToDict(message, preserving_proto_field_name=True)``, and every job
read parses several of them back. ``ParseDict`` is pure Python: it looks up every key, then checks,
converts and sets every value one at a time, about 0.2 ms a job, ~10 ms for a page of 50.
:func:`parse` builds a plan once per message type. The plan maps each key the type accepts (the
field name and its lowerCamelCase ``json_name``) to a converter for that field's kind. It turns
the dict into constructor arguments (nested dicts for messages, lists, maps) and makes the message
in one call to the C constructor.

The fast path only takes input shaped the way ``MessageToDict`` writes it: exact JSON types,
int64s as decimal strings, ``"NaN"``/``"Infinity"``, enum names, canonical RFC 3339 timestamps
(``Z``) and ``"1.5s"`` durations. It gives up on anything else: a value of another type or
spelling, a null (except for a Value or a NullValue), a field given under both its names, two
members of one oneof, an extension key. Then the whole dict is parsed again by ``ParseDict``, so
the result or the error (``json_format.ParseError``) is always the one ``ParseDict`` gives. Every
other well-known type (Struct, Value, ListValue, Any, FieldMask, the wrappers) goes to
``ParseDict`` wherever it occurs.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

#: A JSON value to the constructor argument for its field, given the nesting depth a message
#: value has there (ParseDict's limit); raises when the fast path does not take the value.
_Convert = Callable[[Any, int], Any]

#: ``ParseDict``'s default ``max_recursion_depth``: it refuses messages nested deeper.
_MAX_DEPTH = 100
_FLOAT_MAX = float.fromhex("0x1.fffffep+127")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DURATION_SECONDS_MAX = 315_576_000_000
_EPOCH = datetime(1970, 1, 1)
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
_DURATION = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,9}))?s")
_NULL_VALUE = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)


class _GiveUp(Exception):
    """The fast path does not take this input; ``ParseDict`` decides."""


def parse(data: dict[str, Any] | None, cls: type[M]) -> M:
    """A new ``cls`` from ``data``, as ``ParseDict(data, cls(), ignore_unknown_fields=True)``
    makes it (or raising its ``ParseError``); empty or None ``data`` gives ``cls()``."""
    if not data:
        return cls()
    convert = _converter(cast(Descriptor, cls.DESCRIPTOR))
    with contextlib.suppress(Exception):  # what the fast path does not take, ParseDict decides
        arguments = convert(data, 1)
        if type(arguments) is dict:  # (not when cls is a well-known type)
            return cls(**arguments)
    return _fallback(data, cls)


def _fallback(data: dict[str, Any], cls: type[M]) -> M:
    message = cls()
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return message


# -- plans ----------------------------------------------------------------------------------

_CONVERTERS: dict[Descriptor, _Convert] = {}
_BUILDING = threading.Lock()


def _converter(message_type: Descriptor) -> _Convert:
    """The converter of a message type's JSON, built on first use."""
    convert = _CONVERTERS.get(message_type)
    if convert is None:
        with _BUILDING:
            # Plans are published together with every plan they reach, all of them complete.
            building: dict[Descriptor, _Convert] = {}
            convert = _build(message_type, building)
            _CONVERTERS.update(building)
    return convert


def _build(message_type: Descriptor, building: dict[Descriptor, _Convert]) -> _Convert:
    convert = _CONVERTERS.get(message_type) or building.get(message_type)
    if convert is not None:
        return convert
    name = message_type.full_name
    if name == "google.protobuf.Timestamp":
        convert = _timestamp
    elif name == "google.protobuf.Duration":
        convert = _duration
    elif name.startswith("google.protobuf."):
        convert = _by_parse_dict(message_type)  # Struct, Value, Any, FieldMask, wrappers, ...
    else:
        plan = _Plan()
        convert = building[message_type] = plan.arguments  # first: recursive types reach it
        plan.populate(message_type, building)
    building.setdefault(message_type, convert)
    return convert


class _Plan:
    """How one message type's JSON becomes its constructor's arguments."""

    __slots__ = ("fields", "nulls", "oneofs")

    def __init__(self) -> None:
        #: Key -> (field name, the JSON type whose values are taken as they are, converter).
        self.fields: dict[str, tuple[str, type | None, _Convert]] = {}
        #: Key -> the argument a null gives: a Value's null_value, a NullValue.
        self.nulls: dict[str, Any] = {}
        #: The fields of each oneof with more than one.
        self.oneofs: tuple[tuple[str, ...], ...] = ()

    def populate(self, message_type: Descriptor, building: dict[Descriptor, _Convert]) -> None:
        fields = message_type.fields
        entries = {field.name: (field.name, *_field_converter(field, building)) for field in fields}
        # ParseDict looks a key up among json_names first, then among names.
        by_key = {field.name: field for field in fields} | {f.json_name: f for f in fields}
        for key, field in by_key.items():
            self.fields[key] = entries[field.name]
            null = _null(field)
            if null is not None:
                self.nulls[key] = null
        self.oneofs = tuple(
            tuple(field.name for field in oneof.fields)
            for oneof in message_type.oneofs
            if len(oneof.fields) > 1
        )

    def arguments(self, data: Any, depth: int) -> dict[str, Any]:
        if type(data) is not dict or depth > _MAX_DEPTH:
            raise _GiveUp
        arguments: dict[str, Any] = {}
        fields = self.fields
        unknown = 0
        for key, value in data.items():
            field = fields.get(key)
            if field is None:
                if type(key) is not str or key.startswith("["):
                    raise _GiveUp  # an extension: ParseDict looks it up even when ignoring
                unknown += 1  # an unknown field, ignored
                continue
            name, exact, convert = field
            # A float is finite if value - value is 0.0 (ParseDict wants "NaN" and "Infinity").
            kind = type(value)
            if kind is exact and (kind is not float or value - value == 0.0):
                arguments[name] = value
            elif value is None:
                if key not in self.nulls:
                    raise _GiveUp  # null clears a field (and is no oneof member)
                arguments[name] = self.nulls[key]
            else:
                arguments[name] = convert(value, depth + 1)  # the depth of a message value
        if len(arguments) + unknown < len(data):
            raise _GiveUp  # a field under both its names: ParseDict merges, or refuses a oneof
        for members in self.oneofs:
            if sum(member in arguments for member in members) > 1:
                raise _GiveUp  # ParseDict refuses a second member
        return arguments


def _field_converter(
    field: FieldDescriptor, building: dict[Descriptor, _Convert]
) -> tuple[type | None, _Convert]:
    """The JSON type taken as it is, or the converter, of a field's values."""
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        key = _map_key(message_type.fields_by_name["key"])
        value_field = message_type.fields_by_name["value"]
        if value_field.message_type is not None:
            value = _build(value_field.message_type, building)
        else:
            value = _scalar(value_field)
        return None, _map(key, value)
    if message_type is not None:
        convert = _build(message_type, building)
        return None, (_list(convert) if field.is_repeated else convert)
    exact = None if field.type == FieldDescriptor.TYPE_BYTES else _EXACT.get(field.cpp_type)
    if field.is_repeated:
        if exact is not None and exact is not float:
            return None, _exact_list(exact)
        return None, _list(_scalar(field))
    return exact, _scalar(field)


def _null(field: FieldDescriptor) -> Any:
    """What a null gives a field, when ParseDict sets something for it, or None."""
    if field.is_repeated or field.containing_oneof is not None:
        return None
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.Value":
        return _NULL_VALUE
    if field.enum_type is not None and field.enum_type.full_name == "google.protobuf.NullValue":
        return 0
    return None


# -- messages, lists, maps ----------------------------------------------------------------


def _list(convert: _Convert) -> _Convert:
    def items(value: Any, depth: int) -> list[Any]:
        if type(value) is not list:
            raise _GiveUp
        return [convert(item, depth) for item in value]

    return items


def _exact_list(kind: type) -> _Convert:
    kinds = {kind}

    def exact_items(value: Any, depth: int) -> Any:
        if type(value) is not list or not set(map(type, value)) <= kinds:
            raise _GiveUp
        return value

    return exact_items


def _map(key: _Convert, convert: _Convert) -> _Convert:
    def entries(value: Any, depth: int) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _GiveUp
        return {key(k, depth): convert(v, depth) for k, v in value.items()}

    return entries


# -- well-known types ---------------------------------------------------------------------


def _timestamp(value: Any, depth: int) -> dict[str, int]:
    """``Timestamp.FromJsonString`` for the form ``MessageToDict`` writes (UTC, ``Z``)."""
    match = _TIMESTAMP.fullmatch(value) if type(value) is str else None
    if match is None or depth > _MAX_DEPTH:
        raise _GiveUp
    year, month, day, hour, minute, second, fraction = match.groups()
    delta = (  # datetime() refuses what strptime does (month 13, February 30, second 60)
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second)) - _EPOCH
    )
    # round(float("0." + fraction) * 1e9), as ParseDict has it, is exact up to 9 digits.
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return {"seconds": delta.days * 86_400 + delta.seconds, "nanos": nanos}


def _duration(value: Any, depth: int) -> dict[str, int]:
    """``Duration.FromJsonString`` for ``[-]digits[.up to 9 digits]s``."""
    match = _DURATION.fullmatch(value) if type(value) is str else None
    if match is None or depth > _MAX_DEPTH:
        raise _GiveUp
    sign, whole, fraction = match.groups()
    seconds = int(whole)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    if seconds > _DURATION_SECONDS_MAX:
        raise _GiveUp
    return {"seconds": -seconds, "nanos": -nanos} if sign else {"seconds": seconds, "nanos": nanos}


def _by_parse_dict(message_type: Descriptor) -> _Convert:
    """A well-known type parsed by ParseDict, as a message (a dict would mean another thing
    to the constructor of a Struct or Value field)."""
    cls = message_factory.GetMessageClass(message_type)
    takes_null = message_type.full_name == "google.protobuf.Value"

    def parsed(value: Any, depth: int) -> Message:
        if depth > _MAX_DEPTH or (value is None and not takes_null):
            raise _GiveUp
        message = cls()
        json_format.ParseDict(
            value, message, ignore_unknown_fields=True, max_recursion_depth=_MAX_DEPTH + 1 - depth
        )
        return message

    return parsed


# -- scalars ------------------------------------------------------------------------------

#: Kinds whose JSON values are taken as they are when of exactly this type (never bool for int;
#: the constructor checks ranges and refuses surrogates), a finite float for a double.
_EXACT: dict[int, type] = {
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_BOOL: bool,
    FieldDescriptor.CPPTYPE_STRING: str,  # not bytes, whose base64 _bytes decodes
    FieldDescriptor.CPPTYPE_DOUBLE: float,
}


def _scalar(field: FieldDescriptor) -> _Convert:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if field.enum_type is not None:
        return _enum(field.enum_type)
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return _integer
    return _exact(_EXACT[field.cpp_type])


def _exact(kind: type) -> _Convert:
    def exact(value: Any, depth: int) -> Any:
        if type(value) is not kind:
            raise _GiveUp
        return value

    return exact


def _map_key(field: FieldDescriptor) -> _Convert:
    """Map keys are JSON strings."""
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return _bool_key
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return _exact(str)
    return _integer


def _integer(value: Any, depth: int) -> Any:
    """int64s are written as decimal strings: int() of one is ParseDict's, but for spaces."""
    if type(value) is str and " " not in value:
        return int(value)
    if type(value) is int:
        return value
    raise _GiveUp


def _double(value: Any, depth: int) -> Any:
    if type(value) is float:
        if math.isfinite(value):  # ParseDict wants NaN and the infinities as strings
            return value
    elif type(value) is int:
        return float(value)
    elif type(value) is str and value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    raise _GiveUp


def _float(value: Any, depth: int) -> Any:
    if type(value) is float and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        raise _GiveUp  # ParseDict refuses a float beyond float32's range (and NaN, infinities)
    return _double(value, depth)


def _bytes(value: Any, depth: int) -> Any:
    if type(value) is not str:
        raise _GiveUp
    encoded = value.encode("utf-8")  # as ParseDict: standard or URL-safe base64, padded or not
    return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))


def _bool_key(value: Any, depth: int) -> Any:
    if value == "true":
        return True
    if value == "false":
        return False
    raise _GiveUp


def _enum(enum: EnumDescriptor) -> _Convert:
    numbers = {value.name: value.number for value in enum.values}
    known = set(numbers.values())
    closed = enum.is_closed

    def number(value: Any, depth: int) -> Any:
        if type(value) is str:
            if value in numbers:
                return numbers[value]
        elif type(value) is int and (value in known or not closed):
            return value
        raise _GiveUp  # a custom JSON name, a number in a string, an unknown name (skipped)

    return number
