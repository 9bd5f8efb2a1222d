"""The gateway's browser port against real processes (ingest and transcode, the local store),
with a real HTTP client (http.client) speaking the wire formats a browser's client sends:

- Connect unary (JSON and proto), Connect server streaming (WatchJob), gRPC-Web (binary and
  text): the same answers as native gRPC, errors with their ErrorInfo reason as Connect error
  details / grpc-status-details-bin, authentication and CORS (preflight, exposed headers);
- the browser's resumable upload (StartUpload, PUT /uploads/{id}?offset=N, FinishUpload);
- signed artifact URLs of the local store: GetArtifactUrl gives http URLs; a range request;
  the HLS playlist's relative segment URLs resolve under the same URL; expired, tampered and
  another job's URLs are refused (403);
- hostile requests: malformed envelopes, bad content types, oversized bodies, missing auth,
  client-streaming methods, bad timeouts, path tricks on the artifact route.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import struct
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from reelmill.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, pipeline_pb2
from tests.conftest import SuiteEnv
from tests.media import make_clip
from tests.servers import free_port
from tests.suite import Suite, run_suite, token

pytestmark = pytest.mark.e2e

ORIGIN = "http://console.example"
SERVICE = "/reelmill.v1.JobService/"
SPEC = pipeline_pb2.PipelineSpec(
    transcode=pipeline_pb2.TranscodeSpec(
        ladder=[pipeline_pb2.LadderRung(height=120)], preset="ultrafast", hls=True
    ),
    audio=pipeline_pb2.AudioSpec(disabled=True),
    scenes=pipeline_pb2.ScenesSpec(disabled=True),
)


@pytest.fixture(scope="module")
def browser_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv, browser_port: int) -> Iterator[Suite]:
    env = {
        **suite_env("local"),
        "REELMILL_BROWSER_LISTEN": f"127.0.0.1:{browser_port}",
        "REELMILL_CORS_ORIGINS": ORIGIN,
        "REELMILL_MAX_MESSAGE_MIB": "2",
    }
    with run_suite(env, services=("ingest", "transcode")) as running:
        yield running


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def connect(
        self, method: str, message: dict[str, Any], bearer: str | None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"content-type": "application/json", "connect-protocol-version": "1"}
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        status, _, body = self.request(
            "POST", SERVICE + method, json.dumps(message).encode(), headers
        )
        return status, json.loads(body)


def reason_of(error: dict[str, Any]) -> str:
    for detail in error.get("details", []):
        if detail["type"] == "google.rpc.ErrorInfo":
            value = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
            return error_details_pb2.ErrorInfo.FromString(value).reason
    return ""


def frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


@pytest.fixture(scope="module")
def http_(suite: Suite, browser_port: int) -> Http:
    client = Http(browser_port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.request("GET", "/healthz")[0] == 200:
                return client
        except OSError:
            pass
        assert time.monotonic() < deadline, "the browser port never answered"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def owner() -> str:
    return token()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=4, width=320, height=240)


@pytest.fixture(scope="module")
def finished_job(http_: Http, owner: str, clip: Path) -> dict[str, Any]:
    """A clip uploaded the browser's way and transcoded, watched over Connect streaming."""
    data = clip.read_bytes()
    status, started = http_.connect(
        "StartUpload",
        {"header": {"filename": "clip.mp4", "sizeBytes": str(len(data))}},
        owner,
    )
    assert status == 200, started
    upload_id = started["upload"]["id"]
    # Two writes, the second resuming from the committed size.
    half = len(data) // 2
    status, _, body = http_.request(
        "PUT",
        f"/uploads/{upload_id}?offset=0",
        data[:half],
        {"authorization": f"Bearer {owner}", "origin": ORIGIN},
    )
    assert status == 200, body
    committed = int(json.loads(body)["committedSize"])
    assert 0 <= committed <= half
    status, _, body = http_.request(
        "PUT",
        f"/uploads/{upload_id}?offset={committed}",
        data[committed:],
        {"authorization": f"Bearer {owner}"},
    )
    assert status == 200, body
    assert json.loads(body)["committedSize"] == str(len(data))
    status, finished = http_.connect("FinishUpload", {"uploadId": upload_id}, owner)
    assert status == 200, finished
    video = finished["video"]
    assert video["sha256"] == hashlib.sha256(data).hexdigest()
    spec = json_format.MessageToDict(SPEC)
    status, created = http_.connect("CreateJob", {"videoId": video["id"], "spec": spec}, owner)
    assert status == 200, created
    job_id = created["job"]["id"]

    request = json.dumps({"jobId": job_id}).encode()
    status, headers, body = http_.request(
        "POST",
        SERVICE + "WatchJob",
        envelope(request),
        {"content-type": "application/connect+json", "authorization": f"Bearer {owner}"},
    )
    assert status == 200 and headers["content-type"] == "application/connect+json"
    received = frames(body)
    assert received[-1][0] == 0x02 and json.loads(received[-1][1]) == {}, received[-1]
    events = [json.loads(data) for flags, data in received if flags == 0]
    assert [int(e["event"]["sequence"]) for e in events] == list(range(1, len(events) + 1))
    status, got = http_.connect("GetJob", {"jobId": job_id}, owner)
    assert got["job"]["state"] == "JOB_STATE_SUCCEEDED", got
    return got["job"]


def test_connect_json_and_proto_answer_as_native_grpc(
    suite: Suite, http_: Http, owner: str, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["id"]
    status, listed = http_.connect("ListJobs", {}, owner)
    assert status == 200 and [j["id"] for j in listed["jobs"]] == [job_id]
    request = job_service_pb2.GetJobRequest(job_id=job_id).SerializeToString()
    status, headers, body = http_.request(
        "POST",
        SERVICE + "GetJob",
        request,
        {"content-type": "application/proto", "authorization": f"Bearer {owner}"},
    )
    assert status == 200 and headers["content-type"] == "application/proto"
    over_connect = job_service_pb2.GetJobResponse.FromString(body).job
    with grpc.insecure_channel(suite.gateway) as channel:
        native = (
            job_service_pb2_grpc.JobServiceStub(channel)
            .GetJob(
                job_service_pb2.GetJobRequest(job_id=job_id),
                metadata=[("authorization", f"Bearer {owner}")],
            )
            .job
        )
    assert over_connect == native
    assert over_connect.state == job_pb2.JOB_STATE_SUCCEEDED


def test_grpc_web_binary_and_text(http_: Http, owner: str, finished_job: dict[str, Any]) -> None:
    request = envelope(job_service_pb2.GetJobRequest(job_id=finished_job["id"]).SerializeToString())
    status, headers, body = http_.request(
        "POST",
        SERVICE + "GetJob",
        request,
        {"content-type": "application/grpc-web+proto", "authorization": f"Bearer {owner}"},
    )
    assert status == 200
    got = frames(body)
    assert got[0][0] == 0
    assert job_service_pb2.GetJobResponse.FromString(got[0][1]).job.id == finished_job["id"]
    assert got[-1][0] == 0x80 and b"grpc-status: 0" in got[-1][1]

    status, headers, body = http_.request(
        "POST",
        SERVICE + "WatchJob",
        base64.b64encode(
            envelope(job_service_pb2.WatchJobRequest(job_id=finished_job["id"]).SerializeToString())
        ),
        {"content-type": "application/grpc-web-text", "authorization": f"Bearer {owner}"},
    )
    assert status == 200 and headers["content-type"] == "application/grpc-web-text+proto"
    # Each frame is base64 on its own (a multiple of 4 characters).
    text = body.decode()
    decoded = b"".join(base64.b64decode(text[i : i + 4]) for i in range(0, len(text), 4))
    got = frames(decoded)
    assert got[-1][0] == 0x80 and b"grpc-status: 0" in got[-1][1]
    assert len(got) > 2


def test_errors_carry_their_reason(http_: Http, owner: str) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    status, error = http_.connect("GetJob", {"jobId": missing}, owner)
    assert status == 404 and error["code"] == "not_found"
    assert reason_of(error) == "JOB_NOT_FOUND"

    status, error = http_.connect("GetJob", {"jobId": missing}, None)
    assert status == 401 and error["code"] == "unauthenticated"
    assert reason_of(error) == "MISSING_CREDENTIALS"

    status, error = http_.connect("GetJob", {"jobId": missing}, "not-a-token")
    assert status == 401 and reason_of(error) == "INVALID_TOKEN"

    # gRPC-Web: the status and its details in the trailer frame.
    status, _, body = http_.request(
        "POST",
        SERVICE + "GetJob",
        envelope(job_service_pb2.GetJobRequest(job_id=missing).SerializeToString()),
        {"content-type": "application/grpc-web+proto", "authorization": f"Bearer {owner}"},
    )
    trailer = dict(
        line.split(": ", 1) for line in frames(body)[-1][1].decode().strip().split("\r\n")
    )
    assert trailer["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    details = trailer["grpc-status-details-bin"]
    details_status = status_pb2.Status.FromString(
        base64.b64decode(details + "=" * (-len(details) % 4))
    )
    info = error_details_pb2.ErrorInfo()
    details_status.details[0].Unpack(info)
    assert info.reason == "JOB_NOT_FOUND"

    # A streaming call's error comes in the end-stream message.
    status, _, body = http_.request(
        "POST",
        SERVICE + "WatchJob",
        envelope(json.dumps({"jobId": missing}).encode()),
        {"content-type": "application/connect+json", "authorization": f"Bearer {owner}"},
    )
    assert status == 200
    end = frames(body)[-1]
    assert end[0] == 0x02
    assert reason_of(json.loads(end[1])["error"]) == "JOB_NOT_FOUND"


def test_cors(http_: Http) -> None:
    status, headers, _ = http_.request(
        "OPTIONS",
        SERVICE + "GetJob",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in headers["access-control-allow-headers"]
    status, headers, _ = http_.request(
        "OPTIONS", SERVICE + "GetJob", headers={"origin": "http://evil.example"}
    )
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers, _ = http_.request(
        "POST",
        SERVICE + "GetJob",
        b"{}",
        {"content-type": "application/json", "origin": ORIGIN},
    )
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "grpc-status-details-bin" in headers["access-control-expose-headers"]


def test_hostile_requests_get_precise_statuses(http_: Http, owner: str) -> None:
    auth = {"authorization": f"Bearer {owner}"}
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        # (path, body, headers, HTTP status, Connect code or "" for plain)
        ("GetJob", b"{}", {"content-type": "text/plain"}, 415, ""),
        ("GetJob", b"{", {"content-type": "application/json"}, 400, "invalid_argument"),
        ("GetJob", b"\xff\xff\xff", {"content-type": "application/proto"}, 400, "invalid_argument"),
        ("GetJob", b'{"jobId": 5}', {"content-type": "application/json"}, 400, "invalid_argument"),
        ("GetJob", b"x" * (3 * 1024 * 1024), {"content-type": "application/json"}, 429, ""),
        (
            "GetJob",
            b"{}",
            {"content-type": "application/json", "content-encoding": "gzip"},
            501,
            "",
        ),
        (
            "GetJob",
            b"{}",
            {"content-type": "application/json", "connect-timeout-ms": "soon"},
            400,
            "",
        ),
        ("Nope", b"{}", {"content-type": "application/json"}, 501, "unimplemented"),
        ("WatchJob", b"{}", {"content-type": "application/json"}, 415, ""),
        ("GetJob", envelope(b"{}"), {"content-type": "application/connect+json"}, 415, ""),
        ("UploadVideo", b"{}", {"content-type": "application/json"}, 415, ""),
    ]
    for method, body, headers, want, code in cases:
        status, _, data = http_.request("POST", SERVICE + method, body, {**auth, **headers})
        assert status == want, (method, headers, status, data[:300])
        if code:
            assert json.loads(data)["code"] == code, data
    # Streaming envelopes: the error in the end-stream message (Connect) or trailer (gRPC-Web).
    streams = [
        (b"", "application/connect+json", "invalid_argument"),
        (b"\x00\x00\x00", "application/connect+json", "invalid_argument"),
        (envelope(b"{}")[:-1], "application/connect+json", "invalid_argument"),
        (envelope(b"{}") + envelope(b"{}"), "application/connect+json", "invalid_argument"),
        (envelope(b"{}", flags=1), "application/connect+json", "invalid_argument"),
        (envelope(b"{}", flags=4), "application/connect+json", "invalid_argument"),
        (envelope(b"{}"), "application/connect+json", "unauthenticated"),
    ]
    for body, content_type, code in streams:
        headers = {"content-type": content_type}
        if code != "unauthenticated":
            headers.update(auth)
        status, _, data = http_.request("POST", SERVICE + "WatchJob", body, headers)
        assert status == 200
        end = frames(data)[-1]
        assert end[0] == 0x02 and json.loads(end[1])["error"]["code"] == code, (body, end)
    status, _, data = http_.request(
        "POST",
        SERVICE + "WriteUpload",
        envelope(b""),
        {"content-type": "application/connect+proto", **auth},
    )
    end = frames(data)[-1]
    assert json.loads(end[1])["error"]["code"] == "unimplemented"
    status, _, data = http_.request(
        "POST", SERVICE + "GetJob", b"!!!", {"content-type": "application/grpc-web-text", **auth}
    )
    assert b"grpc-status: 3" in base64.b64decode(data)[5:]
    status, _, _ = http_.request("GET", SERVICE + "GetJob", headers=auth)
    assert status == 415
    # Uploads: no credentials, a bad offset, an unknown upload.
    status, _, data = http_.request("PUT", "/uploads/abc?offset=0", b"x")
    assert status == 401 and reason_of(json.loads(data)) == "MISSING_CREDENTIALS"
    status, _, data = http_.request("PUT", "/uploads/abc?offset=-1", b"x", auth)
    assert status == 400 and reason_of(json.loads(data)) == "BAD_WRITE_OFFSET"
    missing = "00000000-0000-4000-8000-000000000000"
    status, _, data = http_.request("PUT", f"/uploads/{missing}?offset=0", b"x", auth)
    assert status == 404 and reason_of(json.loads(data)) == "UPLOAD_NOT_FOUND"
    status, _, _ = http_.request("GET", f"/uploads/{missing}", headers=auth)
    assert status == 405


def _artifact_url(http_: Http, owner: str, job_id: str, name: str, **extra: Any) -> str:
    status, answer = http_.connect(
        "GetArtifactUrl", {"jobId": job_id, "artifactName": name, **extra}, owner
    )
    assert status == 200, answer
    url: str = answer["url"]
    return url


def test_artifacts_over_http(
    http_: Http, owner: str, finished_job: dict[str, Any], clip: Path
) -> None:
    job_id = finished_job["id"]
    names = [a["name"] for a in finished_job["artifacts"]]
    rendition = next(n for n in names if n.endswith(".mp4"))
    url = _artifact_url(http_, owner, job_id, rendition)
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "http" and parts.port == http_.port
    status, headers, whole = http_.request("GET", parts.path)
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert headers["accept-ranges"] == "bytes"
    status, headers, part = http_.request("GET", parts.path, headers={"range": "bytes=10-99"})
    assert status == 206 and part == whole[10:100]
    assert headers["content-range"] == f"bytes 10-99/{len(whole)}"
    status, _, tail = http_.request("GET", parts.path, headers={"range": "bytes=-16"})
    assert status == 206 and tail == whole[-16:]
    status, headers, _ = http_.request("GET", parts.path, headers={"range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"

    # The HLS playlist's relative URLs resolve under the URL it was given with.
    playlist = next(n for n in names if n.endswith("master.m3u8"))
    hls_url = urllib.parse.urlsplit(_artifact_url(http_, owner, job_id, playlist)).path
    status, headers, body = http_.request("GET", hls_url)
    assert status == 200 and headers["content-type"] == "application/vnd.apple.mpegurl"
    fetched = 0
    pending = [(hls_url, body)]
    while pending:
        base, text = pending.pop()
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                target = urllib.parse.urljoin(base, line)
                status, _, data = http_.request("GET", target)
                assert status == 200, (target, data[:200])
                fetched += 1
                if target.endswith(".m3u8"):
                    pending.append((target, data))
    assert fetched >= 2  # the variant playlist and its segments

    # Refused: expired, tampered with, another job's artifact, another name, path tricks.
    short = urllib.parse.urlsplit(
        _artifact_url(http_, owner, job_id, rendition, expiresIn="1s")
    ).path
    time.sleep(2.1)
    status, _, body = http_.request("GET", short)
    assert status == 403 and b"expired" in body
    token_part = parts.path.split("/")[2]
    fields = token_part.split(".")
    fields[2] = str(int(fields[2]) + 3600)  # a later expiry
    status, _, _ = http_.request("GET", parts.path.replace(token_part, ".".join(fields)))
    assert status == 403
    other_job = "00000000-0000-4000-8000-000000000000"
    fields = token_part.split(".")
    fields[1] = other_job
    status, _, _ = http_.request("GET", parts.path.replace(token_part, ".".join(fields)))
    assert status == 403
    other_name = next(n for n in names if n != rendition and not n.startswith("hls/"))
    status, _, _ = http_.request("GET", f"/artifacts/{token_part}/{other_name}")
    assert status == 403
    for trick in ("../x", "a//b", "%2e%2e/x"):
        status, _, _ = http_.request("GET", f"/artifacts/{token_part}/{trick}")
        assert status in (403, 404), trick
    status, _, _ = http_.request("GET", "/artifacts/garbage/x.mp4")
    assert status == 403
    # Another owner's URL for the same job is no URL for this one's artifacts.
    status, error = http_.connect(
        "GetArtifactUrl", {"jobId": job_id, "artifactName": rendition}, token()
    )
    assert status == 404 and reason_of(error) == "JOB_NOT_FOUND"
