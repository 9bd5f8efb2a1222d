"""gateway.protojson.parse gives what ``json_format.ParseDict(..., ignore_unknown_fields=True)``
gives, and raises what it raises: for random messages of every type the gateway stores as JSON
(and of a test type with every field kind), in every spelling ``MessageToDict`` writes, and for
those dicts broken in many ways. Dicts ``MessageToDict`` writes must take the fast path."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import protojson
from reelmill.v1 import job_pb2, media_pb2, pipeline_pb2, vision_pb2

#: The types gateway/convert.py and gateway/pipeline/base.py read from JSONB columns.
ROOTS: list[type[Message]] = [
    media_pb2.MediaInfo,
    media_pb2.Transcript,
    media_pb2.VideoMetadata,
    media_pb2.Clip,
    media_pb2.Video,
    vision_pb2.Scenes,
    vision_pb2.OnScreenText,
    job_pb2.JobError,
    job_pb2.JobEvent,
    pipeline_pb2.PipelineSpec,
]

F = FieldDescriptor
_PROTO = descriptor_pb2.FieldDescriptorProto
_WKT_FILES = [
    "google/protobuf/any.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/wrappers.proto",
]
_SCALARS = {
    "int32": F.TYPE_INT32,
    "int64": F.TYPE_INT64,
    "uint32": F.TYPE_UINT32,
    "uint64": F.TYPE_UINT64,
    "sint32": F.TYPE_SINT32,
    "sint64": F.TYPE_SINT64,
    "fixed32": F.TYPE_FIXED32,
    "fixed64": F.TYPE_FIXED64,
    "sfixed32": F.TYPE_SFIXED32,
    "sfixed64": F.TYPE_SFIXED64,
    "float": F.TYPE_FLOAT,
    "double": F.TYPE_DOUBLE,
    "bool": F.TYPE_BOOL,
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
}
_WKT_FIELDS = {
    "timestamp": ".google.protobuf.Timestamp",
    "duration": ".google.protobuf.Duration",
    "struct": ".google.protobuf.Struct",
    "value": ".google.protobuf.Value",
    "list_value": ".google.protobuf.ListValue",
    "any": ".google.protobuf.Any",
    "field_mask": ".google.protobuf.FieldMask",
    "empty": ".google.protobuf.Empty",
    "int32_wrapper": ".google.protobuf.Int32Value",
    "int64_wrapper": ".google.protobuf.Int64Value",
    "uint64_wrapper": ".google.protobuf.UInt64Value",
    "float_wrapper": ".google.protobuf.FloatValue",
    "double_wrapper": ".google.protobuf.DoubleValue",
    "bool_wrapper": ".google.protobuf.BoolValue",
    "string_wrapper": ".google.protobuf.StringValue",
    "bytes_wrapper": ".google.protobuf.BytesValue",
}


def _kinds_file() -> descriptor_pb2.FileDescriptorProto:
    """``reelmill_test.Kinds``: a proto3 message with a field of every kind json_format knows."""
    file = descriptor_pb2.FileDescriptorProto(
        name="reelmill_test/protojson_kinds.proto",
        package="reelmill_test",
        syntax="proto3",
        dependency=_WKT_FILES,
    )
    file.enum_type.add(name="Color").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=name, number=number)
        for number, name in enumerate(["COLOR_UNSPECIFIED", "RED", "GREEN", "BLUE"])
    )
    kinds = file.message_type.add(name="Kinds")
    number = iter(range(1, 1000))

    def add(
        name: str, kind: int, type_name: str = "", repeated: bool = False, **extra: Any
    ) -> None:
        field = kinds.field.add(name=name, number=next(number), type=kind, **extra)
        field.label = _PROTO.LABEL_REPEATED if repeated else _PROTO.LABEL_OPTIONAL
        if type_name:
            field.type_name = type_name

    for name, kind in _SCALARS.items():
        add(f"f_{name}", kind)
        add(f"r_{name}", kind, repeated=True)
    add("color", F.TYPE_ENUM, ".reelmill_test.Color")
    add("null", F.TYPE_ENUM, ".google.protobuf.NullValue")
    add("colors", F.TYPE_ENUM, ".reelmill_test.Color", repeated=True)
    add("child", F.TYPE_MESSAGE, ".reelmill_test.Kinds")
    add("children", F.TYPE_MESSAGE, ".reelmill_test.Kinds", repeated=True)
    for name, type_name in _WKT_FIELDS.items():
        add(name, F.TYPE_MESSAGE, type_name)
    for name in ["timestamp", "duration", "value", "struct", "int64_wrapper"]:
        add(f"{name}s", F.TYPE_MESSAGE, _WKT_FIELDS[name], repeated=True)
    maps = {
        "int32_string": (F.TYPE_INT32, F.TYPE_STRING, ""),
        "int64_double": (F.TYPE_INT64, F.TYPE_DOUBLE, ""),
        "uint32_color": (F.TYPE_UINT32, F.TYPE_ENUM, ".reelmill_test.Color"),
        "uint64_float": (F.TYPE_UINT64, F.TYPE_FLOAT, ""),
        "sint64_int64": (F.TYPE_SINT64, F.TYPE_INT64, ""),
        "fixed32_bool": (F.TYPE_FIXED32, F.TYPE_BOOL, ""),
        "bool_bytes": (F.TYPE_BOOL, F.TYPE_BYTES, ""),
        "string_string": (F.TYPE_STRING, F.TYPE_STRING, ""),
        "string_kinds": (F.TYPE_STRING, F.TYPE_MESSAGE, ".reelmill_test.Kinds"),
        "string_duration": (F.TYPE_STRING, F.TYPE_MESSAGE, ".google.protobuf.Duration"),
        "string_value": (F.TYPE_STRING, F.TYPE_MESSAGE, ".google.protobuf.Value"),
    }
    for name, (key, value, type_name) in maps.items():
        entry = kinds.nested_type.add(name=f"Map{name.title().replace('_', '')}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=F.LABEL_OPTIONAL)
        value_field = entry.field.add(name="value", number=2, type=value, label=F.LABEL_OPTIONAL)
        if type_name:
            value_field.type_name = type_name
        add(f"map_{name}", F.TYPE_MESSAGE, f".reelmill_test.Kinds.{entry.name}", repeated=True)
    kinds.oneof_decl.add(name="choice")
    add("c_string", F.TYPE_STRING, oneof_index=0)
    add("c_int64", F.TYPE_INT64, oneof_index=0)
    add("c_color", F.TYPE_ENUM, ".reelmill_test.Color", oneof_index=0)
    add("c_child", F.TYPE_MESSAGE, ".reelmill_test.Kinds", oneof_index=0)
    add("c_duration", F.TYPE_MESSAGE, ".google.protobuf.Duration", oneof_index=0)
    for name, kind, type_name in [
        ("o_int32", F.TYPE_INT32, ""),
        ("o_string", F.TYPE_STRING, ""),
        ("o_double", F.TYPE_DOUBLE, ""),
        ("o_color", F.TYPE_ENUM, ".reelmill_test.Color"),
    ]:
        kinds.oneof_decl.add(name=f"_{name}")
        add(name, kind, type_name, oneof_index=len(kinds.oneof_decl) - 1, proto3_optional=True)
    return file


def _closed_file() -> descriptor_pb2.FileDescriptorProto:
    """``reelmill_test.Closed``: proto2, whose enums are closed."""
    file = descriptor_pb2.FileDescriptorProto(
        name="reelmill_test/protojson_closed.proto", package="reelmill_test", syntax="proto2"
    )
    file.enum_type.add(name="Size").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=name, number=number)
        for name, number in [("SMALL", 1), ("LARGE", 5)]
    )
    closed = file.message_type.add(name="Closed")
    closed.field.add(name="size", number=1, type=F.TYPE_ENUM, type_name=".reelmill_test.Size")
    closed.field.add(
        name="sizes",
        number=2,
        type=F.TYPE_ENUM,
        type_name=".reelmill_test.Size",
        label=F.LABEL_REPEATED,
    )
    closed.field.add(name="count", number=3, type=F.TYPE_INT32, default_value="7")
    return file


def _message_class(file: descriptor_pb2.FileDescriptorProto, name: str) -> type[Message]:
    pool = descriptor_pool.Default()
    for dependency in [
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    ]:
        assert dependency.DESCRIPTOR  # the files Kinds imports are in the pool
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


Kinds = _message_class(_kinds_file(), "reelmill_test.Kinds")
Closed = _message_class(_closed_file(), "reelmill_test.Closed")


def _reachable(roots: list[type[Message]]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    stack = [cast(Descriptor, root.DESCRIPTOR) for root in roots]
    while stack:
        descriptor = stack.pop()
        if descriptor.full_name not in seen:
            seen[descriptor.full_name] = descriptor
            stack.extend(f.message_type for f in descriptor.fields if f.message_type)
    return [d for d in seen.values() if not d.GetOptions().map_entry]


def _class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


# -- random messages ----------------------------------------------------------------------

_TS_MIN, _TS_MAX = -62_135_596_800, 253_402_300_799
_DURATION_MAX = 315_576_000_000
_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRINGS = ["", "a", "héllo wörld", "clip 🎬 ✂", 'line\nbreak "quoted" \\ \t', "\u00a0 ", "x" * 300]


def _nanos(rng: random.Random) -> int:
    return rng.choice(
        [0, rng.randrange(1000) * 1_000_000, rng.randrange(10**6) * 1000, rng.randrange(10**9)]
    )


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind in _RANGES:
        low, high = _RANGES[kind]
        return rng.choice([0, 1, low, high, rng.randint(low, high), rng.randint(-5, 5) % high])
    if kind == F.TYPE_DOUBLE:
        edges = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1.7976931348623157e308, 5e-324]
        return rng.choice([*edges, rng.uniform(-1e6, 1e6), float(rng.randint(-(2**60), 2**60))])
    if kind == F.TYPE_FLOAT:
        # Not float32's largest: MessageToDict writes it as 3.4028235e+38, which ParseDict
        # refuses as too large (test_bad_input_raises_what_parse_dict_raises).
        edges = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45]
        return rng.choice([*edges, rng.uniform(-1e6, 1e6), rng.random()])
    if kind == F.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == F.TYPE_STRING:
        return rng.choice([*_STRINGS, "".join(rng.choices("abcxyz _-./:", k=rng.randrange(12)))])
    if kind == F.TYPE_BYTES:  # b"\xfb\xff" has "+" and "/" in base64
        return rng.choice([b"", b"\x00", b"\xfb\xff\xfe", rng.randbytes(rng.randrange(1, 40))])
    enum = field.enum_type
    assert enum is not None, kind
    numbers = [v.number for v in enum.values]
    if enum.full_name == "google.protobuf.NullValue":
        return 0  # written as null, whatever the number
    if not enum.is_closed and rng.random() < 0.1:
        return rng.choice([77, -3])  # an unknown value of an open enum: written as a number
    return rng.choice(numbers)


def _json_value(rng: random.Random, depth: int) -> Any:
    kinds = ["null", "number", "string", "bool"] + (["struct", "list"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "struct":
        return {rng.choice(_STRINGS[:4]): _json_value(rng, depth + 1) for _ in range(3)}
    if kind == "list":
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {
        "null": None,
        "number": rng.choice([0.0, -2.5, 1e300, float(rng.randint(-1000, 1000))]),
        "string": rng.choice(_STRINGS),
        "bool": rng.random() < 0.5,
    }[kind]


def _fill_wkt(message: Any, rng: random.Random, depth: int) -> bool:
    """Fills a well-known-type message; False when ``message`` is not one."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = rng.choice([0, _TS_MIN, _TS_MAX, rng.randint(_TS_MIN, _TS_MAX)])
        message.nanos = _nanos(rng)
    elif name == "google.protobuf.Duration":
        seconds = rng.choice([0, _DURATION_MAX, -_DURATION_MAX, rng.randint(-(10**6), 10**6)])
        nanos = _nanos(rng)
        message.seconds = seconds
        message.nanos = -nanos if seconds < 0 or (seconds == 0 and rng.random() < 0.5) else nanos
    elif name == "google.protobuf.Struct":
        message.update({key: _json_value(rng, 1) for key in rng.sample(_STRINGS, 3)})
    elif name == "google.protobuf.Value":
        struct = struct_pb2.Struct()
        struct.update({"v": _json_value(rng, depth)})
        message.CopyFrom(struct.fields["v"])
    elif name == "google.protobuf.ListValue":
        message.extend([_json_value(rng, depth) for _ in range(rng.randrange(4))])
    elif name == "google.protobuf.Any":
        packed: Message = rng.choice(
            [
                job_pb2.JobError(code="NOT_FOUND", reason="VIDEO_NOT_FOUND", message="gone"),
                duration_pb2.Duration(seconds=3, nanos=500_000_000),
                struct_pb2.Value(string_value="s"),
            ]
        )
        message.Pack(packed)
    elif name == "google.protobuf.FieldMask":
        message.paths.extend(rng.sample(["media_info", "spec.transcode", "labels", "a.b_c"], 2))
    elif name == "google.protobuf.Empty":
        pass
    elif name.startswith("google.protobuf.") and name.endswith("Value"):
        message.value = _scalar(message.DESCRIPTOR.fields_by_name["value"], rng)
    else:
        return False
    return True


def random_message(cls: type[Message], rng: random.Random, density: float = 0.7) -> Message:
    message = cls()
    _fill(message, rng, 0, density)
    return message


def _fill(message: Any, rng: random.Random, depth: int, density: float) -> None:
    if _fill_wkt(message, rng, depth) or depth > 3:
        return
    descriptor = message.DESCRIPTOR
    chosen = {oneof.name: rng.choice([None, *oneof.fields]) for oneof in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] is not field:
            continue
        if oneof is None and rng.random() > density:
            continue
        count = rng.randrange(4 if depth < 2 else 2)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            entries = getattr(message, field.name)
            for _ in range(count):
                key = _scalar(key_field, rng)
                if value_field.message_type is None:
                    entries[key] = _scalar(value_field, rng)
                else:
                    _fill(entries[key], rng, depth + 1, density)
        elif field.message_type is not None:
            if field.is_repeated:
                for _ in range(count if depth < 3 else 0):
                    _fill(getattr(message, field.name).add(), rng, depth + 1, density)
            else:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(child, rng, depth + 1, density)
        elif field.is_repeated:
            getattr(message, field.name).extend(_scalar(field, rng) for _ in range(count))
        else:
            setattr(message, field.name, _scalar(field, rng))


def _dicts(message: Message) -> Iterator[dict[str, Any]]:
    """Every spelling of ``message`` MessageToDict writes: proto and json names, with or without
    fields at their defaults."""
    for preserving in (True, False):
        for defaults in (False, True):
            yield json_format.MessageToDict(
                message,
                preserving_proto_field_name=preserving,
                always_print_fields_with_no_presence=defaults,
            )


# -- comparing ----------------------------------------------------------------------------


def _outcome(run: Callable[[], Message]) -> tuple[Any, ...]:
    try:
        message = run()
    except Exception as error:
        return ("raised", type(error), str(error))
    return ("parsed", type(message), message.SerializeToString(deterministic=True))


def assert_same(data: Any, cls: type[Message]) -> tuple[Any, ...]:
    """parse and ParseDict agree on ``data``: the same message, or the same error."""

    def parse_dict() -> Message:
        message = cls()
        json_format.ParseDict(copy.deepcopy(data), message, ignore_unknown_fields=True)
        return message

    expected = _outcome(parse_dict)
    actual = _outcome(lambda: protojson.parse(copy.deepcopy(data), cls))
    assert actual == expected, data
    return actual


@pytest.fixture
def fast_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails a test whose parse falls back to ParseDict for the whole dict."""

    def refuse(data: dict[str, Any], cls: type[Message]) -> Message:
        raise AssertionError(f"fell back to ParseDict for {cls.__name__}: {str(data)[:300]}")

    monkeypatch.setattr(protojson, "_fallback", refuse)


def _same_message(actual: Message, expected: Message) -> None:
    assert type(actual) is type(expected)
    assert actual.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    if "nan" not in str(expected):
        assert actual == expected


# -- tests --------------------------------------------------------------------------------


#: Messages per type: Kinds nests a copy of every field kind in every field, and is large.
_ROUNDS: dict[type[Message], int] = {Kinds: 30, job_pb2.JobEvent: 100}


@pytest.mark.parametrize("cls", [*ROOTS, Kinds, Closed], ids=lambda cls: cls.__name__)
def test_random_messages_parse_as_parse_dict_parses_them(
    cls: type[Message], fast_only: None
) -> None:
    rng = random.Random(f"protojson {cls.DESCRIPTOR.full_name}")
    for _ in range(_ROUNDS.get(cls, 150)):
        message = random_message(cls, rng, density=rng.choice([0.3, 0.7, 1.0]))
        for data in _dicts(message):
            parsed = protojson.parse(data, cls)
            expected = cls()
            json_format.ParseDict(data, expected, ignore_unknown_fields=True)
            _same_message(parsed, expected)
            _same_message(parsed, message)


@pytest.mark.parametrize(
    "descriptor", _reachable([*ROOTS, Kinds, Closed]), ids=lambda d: d.full_name
)
def test_a_message_with_every_field_set_keeps_every_field(
    descriptor: Descriptor, fast_only: None
) -> None:
    """Every field of every type set (each oneof member in turn) survives the round trip: a
    field parse dropped or misread would fail here."""
    cls = _class(descriptor)
    members = max([len(oneof.fields) for oneof in descriptor.oneofs] or [1])
    rng = random.Random(descriptor.full_name)
    for turn in range(members):
        message: Any = cls()
        if _fill_wkt(message, rng, 0):
            continue
        expected_fields = set()
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and field is not oneof.fields[turn % len(oneof.fields)]:
                continue
            if field.enum_type is None or field.enum_type.full_name != "google.protobuf.NullValue":
                expected_fields.add(field.name)  # a NullValue is never other than its default
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields
                entries = getattr(message, field.name)
                key = _everything_scalar(key_field)
                if value_field.message_type is None:
                    entries[key] = _everything_scalar(value_field)
                else:
                    _fill(entries[key], rng, 2, 1.0)
            elif field.message_type is not None:
                child = getattr(message, field.name).add() if field.is_repeated else None
                if child is None:
                    child = getattr(message, field.name)
                    child.SetInParent()
                _fill(child, rng, 2, 1.0)
            elif field.is_repeated:
                getattr(message, field.name).extend([_everything_scalar(field)] * 2)
            else:
                setattr(message, field.name, _everything_scalar(field))
        for data in _dicts(message):
            parsed = protojson.parse(data, cls)
            _same_message(parsed, message)
            assert {f.name for f, _ in parsed.ListFields()} == expected_fields


def _everything_scalar(field: FieldDescriptor) -> Any:
    """A value that is not the field's default, so the field is written."""
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    return {
        F.TYPE_DOUBLE: -2.25,
        F.TYPE_FLOAT: 0.5,
        F.TYPE_BOOL: True,
        F.TYPE_STRING: "s",
        F.TYPE_BYTES: b"\xfb\x01",
    }.get(field.type, 3)


_ODD_VALUES: list[Any] = [
    None,
    "",
    "x",
    "1.5",
    "12",
    " 7",
    "7 ",
    "1e3",
    "0x10",
    "1_000",
    "٣",
    "-0",
    1.5,
    2.0,
    -0.0,
    1e39,
    True,
    False,
    0,
    -1,
    2**31,
    2**64,
    2**70,
    10**400,
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    math.nan,
    math.inf,
    [],
    {},
    [None],
    [1, "a"],
    ["RED", 2],
    {"a": 1},
    {"@type": "type.googleapis.com/reelmill.v1.JobError", "code": "X"},
    ("a", "b"),
    b"abc",
    "2024-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:00.5+01:00",
    "2024-01-01t00:00:00Z",
    "2024-01-01T23:59:60Z",
    "0000-01-01T00:00:00Z",
    "1.5s",
    "-0.5s",
    "1.s",
    "+1s",
    "1.0000000001s",
    "315576000001s",
    "AAAA",
    "_-8=",
    "/+8",
    "RED",
    "red",
    "2",
    "LARGE",
    "\ud800",
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copied = copy.copy(value)
    copied[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copied


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _mutations(data: dict[str, Any], other: dict[str, Any], rng: random.Random) -> Any:
    """``data`` broken (or just respelled) one way."""
    paths = list(_paths(data))[1:]
    dicts = [p for p in _paths(data) if isinstance(_get(data, p), dict)]
    choice = rng.randrange(6)
    if choice <= 1 and paths:  # a value of another type or spelling
        return _replaced(data, rng.choice(paths), copy.deepcopy(rng.choice(_ODD_VALUES)))
    if choice == 2:  # an unknown key, or an extension
        where = rng.choice(dicts)
        key = rng.choice(["unknown_field", "unknownField", "[reelmill.ext]", "@type", "", "[x"])
        return _replaced(data, where, {**_get(data, where), key: rng.choice(_ODD_VALUES)})
    if choice == 3:  # a field under both its names
        where = rng.choice(dicts)
        node = _get(data, where)
        keys = [k for k in node if isinstance(k, str) and "_" in k]
        if keys:
            key = rng.choice(keys)
            twin = node[key] if rng.random() < 0.5 else rng.choice(list(node.values()))
            return _replaced(data, where, {**node, _camel(key): copy.deepcopy(twin)})
    if choice == 4 and paths:  # a list as a tuple, a number as a float
        path = rng.choice(paths)
        value = _get(data, path)
        if isinstance(value, list):
            return _replaced(data, path, tuple(value))
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**64:
            return _replaced(data, path, float(value))
    return {**data, **other}  # two messages merged: both oneof members, both names of a field


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@pytest.mark.parametrize("cls", [*ROOTS, Kinds, Closed], ids=lambda cls: cls.__name__)
def test_broken_dicts_parse_or_fail_as_with_parse_dict(cls: type[Message]) -> None:
    rng = random.Random(f"broken {cls.DESCRIPTOR.full_name}")
    outcomes = set()
    for _ in range(_ROUNDS.get(cls, 150) // 2):
        spellings = list(_dicts(random_message(cls, rng)))
        data = rng.choice(spellings)
        other = rng.choice(list(_dicts(random_message(cls, rng))))
        for _ in range(4):
            outcomes.add(assert_same(_mutations(data, other, rng), cls)[0])
    assert outcomes == {"parsed", "raised"}


def test_nesting_deeper_than_parse_dict_allows_fails_as_it_does() -> None:
    innermosts: list[dict[str, Any]] = [
        {"f_int32": 1},
        {"duration": "1.5s"},
        {"timestamps": ["2024-01-01T00:00:00Z"]},
        {"struct": {"a": {"b": [1, {"c": None}]}}},
        {"value": [1, {"x": 2}]},
        {"any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"}},
    ]
    for innermost in innermosts:
        for levels in range(94, 102):
            data: dict[str, Any] = innermost
            for _ in range(levels):
                data = {"child": data}
            assert_same(data, Kinds)


def test_real_rows_parse(fast_only: None) -> None:
    media_info = {
        "container": "mov,mp4,m4a,3gp,3g2,mj2",
        "duration": "634.566s",
        "size_bytes": "158008374",
        "bit_rate": "1992017",
        "video_streams": [
            {
                "codec": "h264",
                "profile": "High",
                "width": 1920,
                "height": 1080,
                "fps": 23.976023976023978,
                "bit_rate": "1861352",
                "pixel_format": "yuv420p",
                "frame_count": "15215",
                "duration": "634.583s",
                "level": 40,
            }
        ],
        "audio_streams": [
            {
                "index": 1,
                "codec": "aac",
                "channels": 2,
                "sample_rate": 48000,
                "bit_rate": "125587",
                "duration": "634.566s",
                "language": "eng",
                "profile": "LC",
            }
        ],
    }
    info = protojson.parse(media_info, media_pb2.MediaInfo)
    assert info.duration.ToMilliseconds() == 634_566
    assert info.size_bytes == 158_008_374
    assert info.video_streams[0].fps == pytest.approx(23.976, abs=1e-3)
    assert info.audio_streams[0].sample_rate == 48_000
    metadata = {
        "title": "Big Buck Bunny",
        "description": "A giant rabbit.",
        "tags": ["animation", "short film"],
        "chapters": [
            {"start_seconds": 0.0, "end_seconds": 61.5, "title": "Morning", "segment_ids": [0, 1]},
            {"start_seconds": 61.5, "end_seconds": 120.0, "title": "Trouble", "id": "c2"},
        ],
        "custom_json": '{"rating": "G"}',
        "engine": "local",
        "custom_json_complete": True,
    }
    spec = {
        "transcode": {"ladder": [{"height": 720}], "hls": True, "preset": "veryfast"},
        "transcribe": {"engine": "TRANSCRIBE_ENGINE_FASTER_WHISPER", "word_timestamps": False},
        "metadata": {
            "knowledge_points": [
                {"id": "k1", "query": "the rabbit wakes up"},
                {"id": "k2", "range": {"start": "1s", "end": "2.500s"}},
            ],
            "min_chapter_duration": "30s",
        },
        "clips": {"ranges": [{"start": "0s", "end": "10s", "container": "CLIP_CONTAINER_MP4"}]},
        "reuse": False,
    }
    event = {
        "job_id": "6f1c",
        "sequence": "42",
        "create_time": "2025-03-01T12:30:45.123456Z",
        "job_state_changed": {"state": "JOB_STATE_FAILED", "error": {"code": "INTERNAL"}},
    }
    for data, cls in [
        (media_info, media_pb2.MediaInfo),
        (metadata, media_pb2.VideoMetadata),
        (spec, pipeline_pb2.PipelineSpec),
        (event, job_pb2.JobEvent),
        ({"code": "NOT_FOUND", "reason": "VIDEO_NOT_FOUND", "message": "no"}, job_pb2.JobError),
    ]:
        assert assert_same(data, cls)[0] == "parsed"
    parsed = protojson.parse(spec, pipeline_pb2.PipelineSpec)
    assert parsed.HasField("reuse")
    assert not parsed.reuse
    assert parsed.metadata.knowledge_points[1].WhichOneof("span") == "range"
    assert parsed.transcribe.HasField("word_timestamps")
    stamp = protojson.parse(event, job_pb2.JobEvent).create_time
    assert (stamp.seconds, stamp.nanos) == (1_740_832_245, 123_456_000)


def test_empty_and_none_give_a_default_message() -> None:
    assert protojson.parse(None, media_pb2.MediaInfo) == media_pb2.MediaInfo()
    assert protojson.parse({}, job_pb2.JobError) == job_pb2.JobError()


def test_unknown_keys_are_ignored(fast_only: None) -> None:
    data = {"code": "INTERNAL", "retryable": True, "details": {"x": [1, None]}, "Code": "no"}
    assert protojson.parse(data, job_pb2.JobError) == job_pb2.JobError(code="INTERNAL")


def test_camel_case_keys_are_accepted(fast_only: None) -> None:
    parsed = protojson.parse(
        {"sizeBytes": "5", "videoStreams": [{"pixelFormat": "p"}]}, media_pb2.MediaInfo
    )
    assert parsed == media_pb2.MediaInfo(
        size_bytes=5, video_streams=[media_pb2.VideoStream(pixel_format="p")]
    )


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"size_bytes": "abc"}, media_pb2.MediaInfo),
        ({"video_streams": [{"width": "wide"}]}, media_pb2.MediaInfo),
        ({"video_streams": [{"width": 1.5}]}, media_pb2.MediaInfo),
        ({"video_streams": {"width": 1}}, media_pb2.MediaInfo),
        ({"duration": "5 minutes"}, media_pb2.MediaInfo),
        ({"create_time": "yesterday"}, media_pb2.Video),
        ({"fps": "fast"}, vision_pb2.Scenes),
        ({"fps": math.nan}, vision_pb2.Scenes),
        ({"custom_json_complete": "true"}, media_pb2.VideoMetadata),
        ({"tags": "a"}, media_pb2.VideoMetadata),
        ({"segments": [None]}, media_pb2.Transcript),
        (
            {"job_state_changed": {}, "stage_updated": {"message": "m"}},
            job_pb2.JobEvent,
        ),
        (
            {"metadata": {"knowledge_points": [{"query": "q", "range": {}}]}},
            pipeline_pb2.PipelineSpec,
        ),
        (
            {"transcribe": {"word_timestamps": True, "wordTimestamps": False}},
            pipeline_pb2.PipelineSpec,
        ),
        ({"[reelmill.v1.ext]": 1}, job_pb2.JobError),
        ({"size": 3}, Closed),
        ({"map_bool_bytes": {"yes": "AA=="}}, Kinds),
        ({"f_float": 1e39}, Kinds),
        ({"r_float": [3.4028235e38]}, Kinds),
        ({"f_uint32": -1}, Kinds),
    ],
)
def test_bad_input_raises_what_parse_dict_raises(data: dict[str, Any], cls: type[Message]) -> None:
    with pytest.raises(json_format.ParseError) as caught:
        protojson.parse(data, cls)
    with pytest.raises(json_format.ParseError) as expected:
        json_format.ParseDict(data, cls(), ignore_unknown_fields=True)
    assert str(caught.value) == str(expected.value)


def test_input_parse_dict_takes_in_other_spellings_is_taken_too() -> None:
    """What the fast path leaves to ParseDict still parses: numbers as strings, floats for
    integers, enum numbers, unknown enum names (skipped), nulls, a field under both names."""
    for data, cls in [
        (
            {"width": "640", "fps": "29.97", "bit_rate": 12.0, "rotation": -90},
            media_pb2.VideoStream,
        ),
        ({"kind": 2, "start_frame": "1e3"}, vision_pb2.Transition),
        ({"kind": "NO_SUCH_KIND", "start_seconds": 1}, vision_pb2.Transition),
        ({"duration": None, "container": "mp4"}, media_pb2.MediaInfo),
        ({"size_bytes": "1", "sizeBytes": "2"}, media_pb2.MediaInfo),
        ({"video_streams": [{"index": 1}], "videoStreams": [{"index": 2}]}, media_pb2.MediaInfo),
        ({"create_time": "2025-03-01T12:30:45.5+02:00"}, media_pb2.Video),
        ({"f_bytes": "-_8", "r_bytes": ["+/8=", "AQ"]}, Kinds),
        ({"size": "LARGE", "sizes": [1, "SMALL"]}, Closed),
    ]:
        assert assert_same(data, cls)[0] == "parsed"


def test_fractional_seconds_convert_exactly(fast_only: None) -> None:
    """Timestamp and Duration nanos from up to 9 fractional digits, in integers, match
    ParseDict's round(float(...) * 1e9)."""
    rng = random.Random("fractions")
    for _ in range(3000):
        digits = "".join(rng.choices("0123456789", k=rng.randint(1, 9)))
        sign = rng.choice(["", "-"])
        data = {
            "duration": f"{sign}{rng.randint(0, 10**6)}.{digits}s",
            "timestamp": f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-"
            f"{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}.{digits}Z",
        }
        assert assert_same(data, Kinds)[0] == "parsed"
