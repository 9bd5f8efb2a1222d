"""The hostile corpus of the gateway's browser port (real gateway and ingest processes, the
local store): malformed Connect and gRPC-Web envelopes, bad and missing content types,
compression, oversized and lying bodies, bad timeouts, missing, bad and ambiguous credentials,
client-streaming methods, unknown methods, hostile upload writes and artifact URLs (garbage
tokens, traversal, other verbs). Each gets its precise HTTP status and, where the protocol
carries one, its Connect code and ErrorInfo reason (in the JSON error, the end-stream message
or the gRPC-Web trailer); and the port and the gateway still serve afterwards."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.v1 import job_service_pb2 as pb
from tests.conftest import SuiteEnv
from tests.servers import free_port
from tests.suite import Suite, run_suite, token

MAX_MESSAGE_MIB = 1
SERVICE = "/reelmill.v1.JobService/"
OWNER = "hostile-browser"
MISSING = "00000000-0000-4000-8000-000000000000"


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def get_job(job_id: str = MISSING) -> bytes:
    return pb.GetJobRequest(job_id=job_id).SerializeToString()


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: The HTTP status.
    status: int = 200
    #: The Connect code ("" when the answer is plain text or a bare HTTP status).
    code: str = ""
    #: The ErrorInfo reason ("" when none is checked).
    reason: str = ""
    #: Where the error is: "json" (Connect unary), "end" (Connect end-stream), "trailer"
    #: (gRPC-Web), "text" (gRPC-Web text trailer), "" (the status alone).
    where: str = "json"
    #: Send credentials (the owner's bearer token).
    auth: bool = True


JSON = {"content-type": "application/json"}
PROTO = {"content-type": "application/proto"}
STREAM = {"content-type": "application/connect+json"}
WEB = {"content-type": "application/grpc-web+proto"}
WEB_TEXT = {"content-type": "application/grpc-web-text"}
BIG = MAX_MESSAGE_MIB * 1024 * 1024 + 64

CASES: dict[str, Case] = {
    # Content types.
    "no content type": Case("POST", SERVICE + "GetJob", b"{}", {}, 415, where=""),
    "text/plain": Case(
        "POST", SERVICE + "GetJob", b"{}", {"content-type": "text/plain"}, 415, where=""
    ),
    "form": Case(
        "POST",
        SERVICE + "GetJob",
        b"a=b",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        where="",
    ),
    "grpc-web json": Case(
        "POST",
        SERVICE + "GetJob",
        b"",
        {"content-type": "application/grpc-web+json"},
        415,
        where="",
    ),
    "native grpc": Case(
        "POST", SERVICE + "GetJob", b"", {"content-type": "application/grpc"}, 415, where=""
    ),
    "unary type on a stream": Case("POST", SERVICE + "WatchJob", b"{}", JSON, 415, where=""),
    "stream type on unary": Case(
        "POST", SERVICE + "GetJob", envelope(b"{}"), STREAM, 415, where=""
    ),
    "GET": Case("GET", SERVICE + "GetJob", b"", JSON, 405, where=""),
    "PUT on an RPC": Case("PUT", SERVICE + "GetJob", b"{}", JSON, 405, where=""),
    # Methods.
    "unknown method": Case(
        "POST", SERVICE + "Nope", b"{}", JSON, 501, "unimplemented", "UNIMPLEMENTED"
    ),
    "unknown service": Case(
        "POST",
        "/reelmill.v1.NopeService/GetJob",
        b"{}",
        JSON,
        501,
        "unimplemented",
        "UNIMPLEMENTED",
    ),
    "internal service": Case(
        "POST",
        "/reelmill.v1.IngestService/Probe",
        b"{}",
        JSON,
        501,
        "unimplemented",
        "UNIMPLEMENTED",
    ),
    "client streaming over connect": Case(
        "POST",
        SERVICE + "UploadVideo",
        envelope(b"{}"),
        STREAM,
        200,
        "unimplemented",
        "UNIMPLEMENTED",
        "end",
    ),
    "client streaming over grpc-web": Case(
        "POST",
        SERVICE + "WriteUpload",
        envelope(b""),
        WEB,
        200,
        "unimplemented",
        "UNIMPLEMENTED",
        "trailer",
    ),
    # Bodies that do not parse.
    "json truncated": Case(
        "POST", SERVICE + "GetJob", b'{"jobId": ', JSON, 400, "invalid_argument", "INVALID_ARGUMENT"
    ),
    "json wrong type": Case(
        "POST", SERVICE + "GetJob", b'{"jobId": 5}', JSON, 400, "invalid_argument"
    ),
    "json array": Case("POST", SERVICE + "GetJob", b"[]", JSON, 400, "invalid_argument"),
    "json not utf-8": Case(
        "POST", SERVICE + "GetJob", b'{"jobId": "\xff"}', JSON, 400, "invalid_argument"
    ),
    "json deep": Case("POST", SERVICE + "GetJob", b"[" * 100_000, JSON, 400, "invalid_argument"),
    "proto garbage": Case(
        "POST", SERVICE + "GetJob", b"\xff\xff\xff\xff", PROTO, 400, "invalid_argument"
    ),
    "proto truncated": Case(
        "POST", SERVICE + "GetJob", get_job()[:-3], PROTO, 400, "invalid_argument"
    ),
    # Envelopes.
    "empty stream body": Case(
        "POST", SERVICE + "WatchJob", b"", STREAM, 200, "invalid_argument", where="end"
    ),
    "short envelope": Case(
        "POST", SERVICE + "WatchJob", b"\x00\x00\x00", STREAM, 200, "invalid_argument", where="end"
    ),
    "envelope length lies (short)": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}")[:-1],
        STREAM,
        200,
        "invalid_argument",
        where="end",
    ),
    "envelope length lies (huge)": Case(
        "POST",
        SERVICE + "WatchJob",
        b"\x00\xff\xff\xff\xff{}",
        STREAM,
        200,
        "invalid_argument",
        where="end",
    ),
    "two messages": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}") + envelope(b"{}"),
        STREAM,
        200,
        "invalid_argument",
        where="end",
    ),
    "compressed flag": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}", 1),
        STREAM,
        200,
        "invalid_argument",
        where="end",
    ),
    "end-stream flag from the client": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}", 2),
        STREAM,
        200,
        "invalid_argument",
        where="end",
    ),
    "grpc-web trailer flag from the client": Case(
        "POST",
        SERVICE + "GetJob",
        envelope(get_job(), 0x80),
        WEB,
        200,
        "invalid_argument",
        where="trailer",
    ),
    "grpc-web text not base64": Case(
        "POST", SERVICE + "GetJob", b"!!!!", WEB_TEXT, 200, "invalid_argument", where="text"
    ),
    "grpc-web proto garbage": Case(
        "POST",
        SERVICE + "GetJob",
        envelope(b"\xff\xff"),
        WEB,
        200,
        "invalid_argument",
        where="trailer",
    ),
    # Sizes.
    "oversized unary": Case(
        "POST",
        SERVICE + "GetJob",
        b" " * BIG,
        JSON,
        429,
        "resource_exhausted",
        "RESOURCE_EXHAUSTED",
    ),
    "oversized stream": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b" " * BIG),
        STREAM,
        200,
        "resource_exhausted",
        where="end",
    ),
    # Compression and timeouts.
    "gzip unary": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "content-encoding": "gzip"},
        501,
        "unimplemented",
    ),
    "gzip stream": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}"),
        {**STREAM, "connect-content-encoding": "gzip"},
        200,
        "unimplemented",
        where="end",
    ),
    "grpc-encoding": Case(
        "POST",
        SERVICE + "GetJob",
        envelope(get_job()),
        {**WEB, "grpc-encoding": "gzip"},
        200,
        "unimplemented",
        where="trailer",
    ),
    "timeout not a number": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "connect-timeout-ms": "soon"},
        400,
        "invalid_argument",
    ),
    "timeout negative": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "connect-timeout-ms": "-5"},
        400,
        "invalid_argument",
    ),
    "grpc-timeout bad unit": Case(
        "POST",
        SERVICE + "GetJob",
        envelope(get_job()),
        {**WEB, "grpc-timeout": "10X"},
        200,
        "invalid_argument",
        where="trailer",
    ),
    "deadline already short": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(json.dumps({"jobId": MISSING}).encode()),
        {**STREAM, "connect-timeout-ms": "0"},
        200,
        "deadline_exceeded",
        where="end",
    ),
    # Credentials.
    "no credentials": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        JSON,
        401,
        "unauthenticated",
        "MISSING_CREDENTIALS",
        auth=False,
    ),
    "bad token": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "authorization": "Bearer nope"},
        401,
        "unauthenticated",
        "INVALID_TOKEN",
        auth=False,
    ),
    "bad scheme": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "authorization": "Basic dXNlcjpwdw=="},
        401,
        "unauthenticated",
        auth=False,
    ),
    "expired token": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "authorization": f"Bearer {token(OWNER, ttl=-600)}"},
        401,
        "unauthenticated",
        "TOKEN_EXPIRED",
        auth=False,
    ),
    "token and api key": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "x-api-key": "rk_nope"},
        401,
        "unauthenticated",
        "AMBIGUOUS_CREDENTIALS",
    ),
    "unknown api key": Case(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {**JSON, "x-api-key": "rk_" + "x" * 40},
        401,
        "unauthenticated",
        auth=False,
    ),
    "no credentials on a stream": Case(
        "POST",
        SERVICE + "WatchJob",
        envelope(b"{}"),
        STREAM,
        200,
        "unauthenticated",
        "MISSING_CREDENTIALS",
        "end",
        auth=False,
    ),
    "no credentials over grpc-web": Case(
        "POST",
        SERVICE + "GetJob",
        envelope(get_job()),
        WEB,
        200,
        "unauthenticated",
        "MISSING_CREDENTIALS",
        "trailer",
        auth=False,
    ),
    # Upload writes.
    "upload without credentials": Case(
        "PUT",
        "/uploads/x?offset=0",
        b"x",
        {},
        401,
        "unauthenticated",
        "MISSING_CREDENTIALS",
        auth=False,
    ),
    "upload offset negative": Case(
        "PUT", "/uploads/x?offset=-1", b"x", {}, 400, "invalid_argument", "BAD_WRITE_OFFSET"
    ),
    "upload offset not a number": Case(
        "PUT", "/uploads/x?offset=1e9", b"x", {}, 400, "invalid_argument", "BAD_WRITE_OFFSET"
    ),
    "upload offset huge": Case(
        "PUT",
        "/uploads/x?offset=" + "9" * 30,
        b"x",
        {},
        400,
        "invalid_argument",
        "BAD_WRITE_OFFSET",
    ),
    "upload unknown": Case(
        "PUT", f"/uploads/{MISSING}?offset=0", b"x", {}, 404, "not_found", "UPLOAD_NOT_FOUND"
    ),
    "upload not an id": Case(
        "PUT", "/uploads/not-an-id?offset=0", b"x", {}, 400, "invalid_argument"
    ),
    "upload compressed": Case(
        "PUT",
        f"/uploads/{MISSING}?offset=0",
        b"x",
        {"content-encoding": "gzip"},
        501,
        "unimplemented",
    ),
    "upload GET": Case("GET", f"/uploads/{MISSING}", b"", {}, 405, where=""),
    "upload path tricks": Case("PUT", "/uploads/../etc/passwd", b"x", {}, 404, where=""),
    # Artifact URLs.
    "artifact garbage token": Case("GET", "/artifacts/garbage/x.mp4", status=403, where=""),
    "artifact no name": Case("GET", "/artifacts/v1.x", status=403, where=""),
    "artifact traversal": Case(
        "GET", "/artifacts/v1.a.b.c.d.e/../../etc/passwd", status=403, where=""
    ),
    "artifact encoded traversal": Case(
        "GET", "/artifacts/v1.a.b.c.d.e/%2e%2e/x", status=403, where=""
    ),
    "artifact forged token": Case(
        "GET",
        f"/artifacts/v1.{MISSING}.99999999999.aG9zdGlsZQ.eC5tcDQ.{'A' * 43}/x.mp4",
        status=403,
        where="",
    ),
    "artifact POST": Case("POST", "/artifacts/garbage/x.mp4", b"", {}, 405, where=""),
    # The console's files.
    "static traversal": Case("GET", "/../../etc/passwd", status=404, where=""),
    "static POST": Case("POST", "/index.html", b"", {}, 404, where=""),
    "preflight from a stranger": Case(
        "OPTIONS",
        SERVICE + "GetJob",
        headers={"origin": "http://evil.example"},
        status=403,
        where="",
    ),
}


@dataclass
class Port:
    suite: Suite
    port: int

    def request(self, case: Case) -> tuple[int, dict[str, str], bytes]:
        headers = dict(case.headers)
        if case.auth:
            headers.setdefault("authorization", f"Bearer {token(OWNER)}")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(case.method, case.path, body=case.body, headers=headers)
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()


@pytest.fixture(scope="module")
def port(suite_env: SuiteEnv) -> Iterator[Port]:
    browser = free_port()
    env = {
        **suite_env("local"),
        "REELMILL_BROWSER_LISTEN": f"127.0.0.1:{browser}",
        "REELMILL_MAX_MESSAGE_MIB": str(MAX_MESSAGE_MIB),
        "REELMILL_CORS_ORIGINS": "http://console.example",
    }
    with run_suite(env, services=("ingest",)) as suite:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", browser), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the browser port never listened"
                time.sleep(0.2)
        yield Port(suite, browser)


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(body) >= 5:
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


def _reason_json(error: dict[str, object]) -> str:
    for detail in error.get("details", []):  # type: ignore[attr-defined]
        if detail["type"] == "google.rpc.ErrorInfo":
            value = detail["value"]
            data = base64.b64decode(value + "=" * (-len(value) % 4))
            return error_details_pb2.ErrorInfo.FromString(data).reason
    return ""


CONNECT_OF = {code.value[0]: code.name.lower() for code in grpc.StatusCode}
CONNECT_OF[grpc.StatusCode.CANCELLED.value[0]] = "canceled"


def _trailer(frame: bytes) -> tuple[str, str]:
    fields = dict(line.split(": ", 1) for line in frame.decode().strip().split("\r\n"))
    code = CONNECT_OF[int(fields["grpc-status"])]
    reason = ""
    if "grpc-status-details-bin" in fields:
        raw = fields["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        reason = info.reason
    return code, reason


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_browser_request(port: Port, name: str) -> None:
    case = CASES[name]
    status, headers, body = port.request(case)
    assert status == case.status, (name, status, body[:300])
    code, reason = "", ""
    if case.where == "json":
        assert headers["content-type"] == "application/json", headers
        error = json.loads(body)
        code, reason = error["code"], _reason_json(error)
    elif case.where == "end":
        flags, frame = _frames(body)[-1]
        assert flags == 0x02, (flags, frame)
        error = json.loads(frame)["error"]
        code, reason = error["code"], _reason_json(error)
    elif case.where in ("trailer", "text"):
        raw = base64.b64decode(body) if case.where == "text" else body
        flags, frame = _frames(raw)[-1]
        assert flags == 0x80, (flags, frame)
        code, reason = _trailer(frame)
    if case.code:
        assert code == case.code, (name, code, body[:300])
    if case.reason:
        assert reason == case.reason, (name, reason, body[:300])


def test_the_port_and_the_gateway_still_serve(port: Port) -> None:
    status, _, body = port.request(Case("GET", "/healthz", where=""))
    assert status == 200 and body == b"ok\n"
    status, _, body = port.request(Case("POST", SERVICE + "ListJobs", b"{}", JSON, where="json"))
    assert status == 200 and json.loads(body) == {}, body
    with grpc.insecure_channel(port.suite.gateway) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
