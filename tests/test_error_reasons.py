"""Every reason the code can send as ``google.rpc.ErrorInfo.reason`` is a value of the
``reelmill.v1.ErrorReason`` enum (protos/reelmill/v1/error_reason.proto), and every value of
the enum is still produced somewhere: the enum is the list callers in any language read.

The source is read, not run (``ast``): gateway/, runtime/, services/ and reelmill/. A reason is
produced

- by a ``reason="X"`` keyword in any call (``NotFound(..., reason="JOB_NOT_FOUND")``,
  ``Slots(..., reason="SERVICE_BUSY")``);
- by an error class's ``default_reason = "X"`` (sent when an error names no reason, and by
  ``from_rpc_error`` for any code);
- by a parameter named ``reason`` with a default (``reason: str = "BUSY"``), and by the
  constants calls pass to such a parameter of a function of the same module
  (``_unavailable(text, "VIDEO_GEO_BLOCKED")``);
- by unpacking into a name ``reason`` (``for pattern, cls, reason, message in _PATTERNS``,
  ``kind, reason, message = refusal``): the constants at that position of the literal tuples
  the unpacked name holds.

A ``reason=`` whose value is none of those (a variable, an expression) must be explained: a
parameter or unpacked name of the enclosing function (followed by the rules above), a reason
passed on from another error (``x.reason``), or an entry of ``EXPLAINED``; otherwise the test
fails, naming the place, so a new way of making reasons cannot slip past it. Lower-case
reasons are not error reasons: they go only to the purge and stop records (``SINKS``).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from reelmill.v1 import error_reason_pb2

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "runtime", "services", "reelmill")
REASON = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
#: Calls whose ``reason`` is no error reason, with what it is instead.
SINKS = {
    "request_purge": "why objects are purged (a purge row's reason, e.g. video_deleted)",
    "request_job_purge": "the same",
    "discard": "the same, for an upload's staged parts",
    "values": "the purge row's column (an SQL insert)",
    "_stop": "why the orchestrator stops a job's run (logged)",
    "Response": "an HTTP response's reason phrase (the platforms' urllib-style response)",
}
#: Non-constant reasons this test cannot follow by itself, each with where its values come from.
EXPLAINED = {
    # `for pattern, reason in _RULES`: _RULES is built by a comprehension over a literal table,
    # whose reasons the unpacking rule collects at the comprehension's own `for pattern, reason`.
    ("services/ingest/platforms.py", "download_error"),
    # A downstream service's own ErrorInfo reason, passed on (each is produced in its process).
    ("runtime/errors.py", "from_rpc_error"),
}


@dataclass
class Found:
    #: reason -> where it is produced ("path:line")
    produced: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: "path:line" of non-constant reasons no rule explains
    unexplained: list[str] = field(default_factory=list)
    #: "path:line reason" of reasons that are not UPPER_SNAKE outside the sinks
    malformed: list[str] = field(default_factory=list)


def source_files() -> Iterator[Path]:
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.relative_to(ROOT).parts[:2] != ("reelmill", "v1"):  # generated stubs
                yield path


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _constant(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _targets_with_reason(target: ast.AST) -> int | None:
    """The index of the name ``reason`` in a tuple target, if there is one."""
    if isinstance(target, ast.Tuple | ast.List):
        for index, element in enumerate(target.elts):
            if isinstance(element, ast.Name) and element.id == "reason":
                return index
    return None


class _Module:
    def __init__(self, path: Path, found: Found) -> None:
        self.path = path
        self.rel = str(path.relative_to(ROOT))
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.found = found
        # Every assignment to a name in the module (a table, or a refusal tuple).
        self.assigned: dict[str, list[ast.AST]] = defaultdict(list)
        # Functions (and methods) of the module with a parameter named `reason`: its index.
        self.reason_params: dict[str, tuple[int, bool]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assigned[target.id].append(node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                if isinstance(node.target, ast.Name):
                    self.assigned[node.target.id].append(node.value)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                positional = [*node.args.posonlyargs, *node.args.args]
                names = [a.arg for a in positional]
                if names and names[0] in ("self", "cls"):
                    names = names[1:]
                if "reason" in names:
                    self.reason_params[node.name] = (names.index("reason"), True)
                elif any(a.arg == "reason" for a in node.args.kwonlyargs):
                    self.reason_params[node.name] = (-1, False)

    def where(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', 0)}"

    def produce(self, value: str, node: ast.AST, sink: bool = False) -> None:
        if sink:
            return
        if REASON.match(value):
            self.found.produced[value].add(self.where(node))
        else:
            self.found.malformed.append(f"{self.where(node)} {value!r}")

    def scan(self) -> None:
        self._visit(self.tree, [])

    def _visit(self, node: ast.AST, scopes: list[ast.AST]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._parameters(node)
            scopes = [*scopes, node]
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and any(
                        isinstance(t, ast.Name) and t.id == "default_reason"
                        for t in statement.targets
                    )
                    and (value := _constant(statement.value)) is not None
                ):
                    self.produce(value, statement)
        elif isinstance(node, ast.Call):
            self._call(node, scopes)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            index = _targets_with_reason(node.target)
            if index is not None:
                for row in self._rows(node.iter):
                    self._element(row, index)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                index = _targets_with_reason(target)
                if index is not None:
                    for value in self._values(node.value):
                        self._element(value, index)
        for child in ast.iter_child_nodes(node):
            self._visit(child, scopes)

    def _parameters(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = function.args
        positional = [*args.posonlyargs, *args.args]
        defaults = dict(zip([a.arg for a in positional][::-1], args.defaults[::-1], strict=False))
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
            if default is not None:
                defaults[arg.arg] = default
        if (value := _constant(defaults.get("reason"))) is not None:
            self.produce(value, function, sink=function.name in SINKS)

    def _call(self, call: ast.Call, scopes: list[ast.AST]) -> None:
        name = _callee(call)
        sink = name in SINKS
        for keyword in call.keywords:
            if keyword.arg != "reason":
                continue
            if (value := _constant(keyword.value)) is not None:
                self.produce(value, call, sink)
            elif not sink and not self._explained(keyword.value, scopes):
                self.found.unexplained.append(
                    f"{self.where(call)} reason={ast.unparse(keyword.value)}"
                )
        if name in self.reason_params:
            index, positional = self.reason_params[name]
            if positional and index < len(call.args):
                argument = call.args[index]
                if (value := _constant(argument)) is not None:
                    self.produce(value, call, sink)
                elif not sink and not self._explained(argument, scopes):
                    self.found.unexplained.append(
                        f"{self.where(call)} {name}(…, {ast.unparse(argument)})"
                    )

    def _explained(self, value: ast.AST, scopes: list[ast.AST]) -> bool:
        if isinstance(value, ast.Attribute) and value.attr in ("reason", "_reason"):
            return True  # passed on from another error, or a constructor's parameter kept
        if isinstance(value, ast.Name) and scopes:
            function = scopes[-1]
            assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            if (self.rel, function.name) in EXPLAINED:
                return True
            params = {a.arg for a in [*function.args.args, *function.args.kwonlyargs]}
            if value.id in params:
                return function.name in self.reason_params
            local = self._local_constants(value.id, function)
            if local:
                for constant, node in local:
                    self.produce(constant, node)
                return True
            if value.id != "reason":
                return False
            # Unpacked from tables or tuples the module spells out (the rows must resolve).
            for node in ast.walk(function):
                if isinstance(node, ast.Assign):
                    if any(_targets_with_reason(t) is not None for t in node.targets):
                        values = [
                            v
                            for v in self._values(node.value)
                            if not (isinstance(v, ast.Constant) and v.value is None)
                        ]
                        return bool(values) and all(isinstance(v, ast.Tuple) for v in values)
                elif (
                    isinstance(node, ast.For | ast.AsyncFor | ast.comprehension)
                    and _targets_with_reason(node.target) is not None
                ):
                    return bool(self._rows(node.iter))
        return False

    @staticmethod
    def _local_constants(name: str, function: ast.AST) -> list[tuple[str, ast.AST]]:
        """The constants a local name is assigned in ``function``, if it is assigned nothing
        else (``bad = "INVALID_SCENES_SPEC"``)."""
        found: list[tuple[str, ast.AST]] = []
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                if (value := _constant(node.value)) is None:
                    return []
                found.append((value, node))
        return found

    def _values(self, node: ast.AST, depth: int = 0) -> list[ast.AST]:
        """What a name may hold: its literal assignments in the module."""
        if isinstance(node, ast.Name) and depth < 3:
            return [
                v
                for value in self.assigned.get(node.id, [])
                for v in self._values(value, depth + 1)
            ]
        return [node]

    def _rows(self, node: ast.AST) -> list[ast.AST]:
        """The rows of a literal table, or of the tables a name holds."""
        rows: list[ast.AST] = []
        for value in self._values(node):
            if isinstance(value, ast.Tuple | ast.List):
                rows.extend(value.elts)
        return rows

    def _element(self, row: ast.AST, index: int) -> None:
        if (
            isinstance(row, ast.Tuple | ast.List)
            and index < len(row.elts)
            and (value := _constant(row.elts[index])) is not None
        ):
            self.produce(value, row)


def scan() -> Found:
    found = Found()
    for path in source_files():
        _Module(path, found).scan()
    return found


def enum_reasons() -> set[str]:
    return {
        name
        for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }


def test_every_reason_the_code_produces_is_in_the_enum() -> None:
    found = scan()
    assert found.unexplained == [], (
        "reasons this test cannot follow (teach it, or add them to EXPLAINED with their source)"
    )
    assert found.malformed == [], "reasons must be UPPER_SNAKE (or go only to a purge/stop sink)"
    missing = sorted(set(found.produced) - enum_reasons())
    assert missing == [], "add these to protos/reelmill/v1/error_reason.proto: " + ", ".join(
        f"{reason} ({sorted(found.produced[reason])[0]})" for reason in missing
    )


def test_every_enum_value_is_still_produced() -> None:
    unused = sorted(enum_reasons() - set(scan().produced))
    assert unused == [], (
        "no code produces these any more; keep their numbers reserved in error_reason.proto "
        '(`reserved N; reserved "NAME";`) and remove them: ' + ", ".join(unused)
    )


def test_the_scan_sees_each_kind_of_reason() -> None:
    """The rules above find what they are for (a scan that found nothing would pass)."""
    produced = scan().produced
    for reason, path in (
        ("JOB_NOT_FOUND", "gateway/"),  # reason= keyword
        ("INVALID_ARGUMENT", "runtime/errors.py"),  # default_reason
        ("BUSY", "runtime/slots.py"),  # a parameter's default
        ("VIDEO_GEO_BLOCKED", "services/ingest/platforms.py"),  # a table and a helper's arg
        ("CORRUPT_SOURCE", "services/transcode/ffmpeg_runner.py"),  # a table unpacked in a loop
        ("UPLOAD_ID_CHANGED", "gateway/uploads/service.py"),  # a refusal tuple unpacked
    ):
        assert any(place.startswith(path) for place in produced[reason]), (reason, produced[reason])
    assert len(produced) > 150


def test_the_enum_names_are_the_wire_reasons() -> None:
    """ErrorInfo.reason carries the value's name: names stay UPPER_SNAKE and numbers unique."""
    values = error_reason_pb2.ErrorReason.values()
    assert len(set(values)) == len(values)
    assert all(
        REASON.match(name) for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
    )
    assert error_reason_pb2.ErrorReason.Value("JOB_NOT_FOUND") > 0
