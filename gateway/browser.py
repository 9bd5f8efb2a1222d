"""The browser port (``REELMILL_BROWSER_LISTEN``): the public API over the Connect protocol and
gRPC-Web, resumable-upload writes and signed artifact URLs over plain HTTP, and the web
console's static files, on one HTTP/1.1 port served by uvicorn inside the gateway process.

One code path: every RPC is forwarded, as bytes, through a grpc.aio channel to the gateway's own
native port on loopback, so the servicers, authentication (``authorization`` / ``x-api-key``
headers become the same metadata), rate limits, call limits, error mapping, metrics and
tracing are exactly those of a native call. The adapter only translates envelopes and codecs:

- Connect unary: ``POST /reelmill.v1.JobService/GetJob`` with ``application/proto`` or
  ``application/json`` (proto3 JSON); errors are Connect's JSON error with the HTTP status of
  the code, and ``google.rpc.Status`` details (ErrorInfo, RetryInfo) as Connect error details.
- Connect server streaming (WatchJob, WatchBatch, DownloadArtifact): ``application/connect+proto``
  or ``+json`` envelopes; the end-stream message carries the error.
- gRPC-Web: ``application/grpc-web(+proto)`` and ``application/grpc-web-text(+proto)`` (base64),
  unary and server streaming, the status in a trailer frame (``grpc-status``,
  ``grpc-message``, ``grpc-status-details-bin``).
- Client streaming cannot run in a browser (fetch has no streaming request bodies over
  HTTP/1.1): UploadVideo and WriteUpload answer ``unimplemented`` here. A browser writes a
  resumable upload with ``PUT /uploads/{upload_id}?offset=N`` and the bytes as the body: the
  body is forwarded as it arrives to the native WriteUpload stream (in messages of at most 1 MiB,
  so memory stays constant), and the answer is ``{"committedSize": "N"}``; errors as Connect's.

Compression is not accepted (browsers do not compress requests): a compressed envelope, or a
``content-encoding``/``connect-content-encoding``/``grpc-encoding`` other than identity, is
refused. A request body longer than ``REELMILL_MAX_MESSAGE_MIB`` is ``resource_exhausted``.
CORS: origins in ``REELMILL_CORS_ORIGINS`` get the CORS headers, preflights included.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import mimetypes
import os
import re
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from gateway.artifact_urls import ArtifactSigner
from gateway.store import Store
from reelmill.v1 import job_service_pb2
from runtime.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReelmillError,
    ResourceExhausted,
    Unimplemented,
    to_status,
)
from runtime.storage import ObjectStore

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Connect's code names and HTTP statuses (connectrpc.com/docs/protocol#error-codes).
CONNECT_CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}
#: Request headers passed on to the native call as metadata.
FORWARDED = ("authorization", "x-api-key", "traceparent", "tracestate")
ALLOWED_HEADERS = (
    "authorization, x-api-key, content-type, connect-protocol-version, connect-timeout-ms, "
    "connect-accept-encoding, connect-content-encoding, grpc-timeout, x-grpc-web, "
    "x-user-agent, range, traceparent, tracestate"
)
EXPOSED_HEADERS = (
    "grpc-status, grpc-message, grpc-status-details-bin, grpc-encoding, "
    "connect-content-encoding, content-encoding, content-length, content-range, accept-ranges"
)
#: Bytes of one upload message forwarded to WriteUpload.
UPLOAD_MESSAGE_BYTES = 1024 * 1024
#: Bytes of one artifact read.
ARTIFACT_CHUNK = 256 * 1024
_UPLOAD_PATH = re.compile(r"^/uploads/([^/]{1,128})$")
_ARTIFACT_PATH = re.compile(r"^/artifacts/([A-Za-z0-9_.=-]{1,1024})/(.{1,1024})$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".vtt": "text/vtt; charset=utf-8",
    ".srt": "application/x-subrip",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}


class Failure(Exception):
    """A call's failure: its code, message and serialized ``google.rpc.Status`` (or b"")."""

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(cls, error: ReelmillError) -> Failure:
        status = to_status(error)
        details = b""
        for key, value in status.trailing_metadata:
            if key == "grpc-status-details-bin":
                details = value if isinstance(value, bytes) else value.encode()
        return cls(error.code, error.message, details)

    @classmethod
    def of_rpc(cls, error: grpc.aio.AioRpcError) -> Failure:
        details = b""
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                details = value
        return cls(error.code(), error.details() or "", details)

    def connect_json(self) -> dict[str, Any]:
        name, _ = CONNECT_CODES.get(self.code, ("unknown", 500))
        body: dict[str, Any] = {"code": name, "message": self.message}
        if self.details:
            with contextlib.suppress(DecodeError):
                status = status_pb2.Status.FromString(self.details)
                body["details"] = [
                    {
                        "type": detail.type_url.rsplit("/", 1)[-1],
                        "value": base64.b64encode(detail.value).decode().rstrip("="),
                    }
                    for detail in status.details
                ]
        return body

    @property
    def http_status(self) -> int:
        return CONNECT_CODES.get(self.code, ("unknown", 500))[1]


class Disconnected(Exception):
    """The client went away."""


@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


def methods(files: Iterable[FileDescriptor]) -> dict[str, Method]:
    """Every method of every service of ``files``, by path ("/pkg.Service/Method")."""
    table: dict[str, Method] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                table[path] = Method(
                    path,
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type),
                    method.client_streaming,
                    method.server_streaming,
                )
    return table


def parse_timeout(headers: Mapping[str, str]) -> float | None:
    """The deadline a Connect (``connect-timeout-ms``) or gRPC-Web (``grpc-timeout``) call asks."""
    text = headers.get("connect-timeout-ms")
    if text is not None:
        if not text.isdigit() or len(text) > 10:
            raise InvalidArgument("connect-timeout-ms must be a positive integer")
        return int(text) / 1000
    text = headers.get("grpc-timeout")
    if text is not None:
        unit = _TIMEOUT_UNITS.get(text[-1:])
        if unit is None or not text[:-1].isdigit() or len(text) > 9:
            raise InvalidArgument("grpc-timeout is malformed")
        return int(text[:-1]) * unit
    return None


def envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def single_message(body: bytes) -> bytes:
    """The one message of an enveloped request body (Connect streaming, gRPC-Web)."""
    if len(body) < 5:
        raise InvalidArgument("the request body is not an enveloped message (too short)")
    flags, length = struct.unpack(">BI", body[:5])
    if flags & 0x01:
        raise InvalidArgument("compressed messages are not accepted")
    if flags != 0:
        raise InvalidArgument(f"unexpected envelope flags 0x{flags:02x}")
    if length != len(body) - 5:
        raise InvalidArgument(
            f"the envelope declares {length} bytes but {len(body) - 5} follow: send exactly one "
            "message"
        )
    return body[5:]


def grpc_web_trailer(failure: Failure | None) -> bytes:
    if failure is None:
        text = "grpc-status: 0\r\n"
    else:
        text = (
            f"grpc-status: {failure.code.value[0]}\r\n"
            f"grpc-message: {urllib.parse.quote(failure.message, safe=' ')}\r\n"
        )
        if failure.details:
            text += (
                "grpc-status-details-bin: "
                f"{base64.b64encode(failure.details).decode().rstrip('=')}\r\n"
            )
    return envelope(0x80, text.encode())


def content_type_of(name: str, stored: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext in CONTENT_TYPES:
        return CONTENT_TYPES[ext]
    if stored and stored != "application/octet-stream":
        return stored
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range; None when unsatisfiable.
    Raises ValueError when malformed (the whole object is sent then, as RFC 9110 allows)."""
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ValueError(header)
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            return None
        return max(size - length, 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return start, end


def allowed_origins(value: Sequence[str]) -> frozenset[str]:
    return frozenset(origin.rstrip("/") for origin in value if origin)


class BrowserApp:
    """The ASGI application of the browser port."""

    def __init__(
        self,
        *,
        native_target: str,
        max_message_bytes: int,
        cors_origins: Sequence[str] = (),
        files: Iterable[FileDescriptor] = (),
        store: Store | None = None,
        objects: ObjectStore | None = None,
        signer: ArtifactSigner | None = None,
        console_dir: Path | None = None,
    ) -> None:
        self.native_target = native_target
        self.max_message_bytes = max_message_bytes
        self.origins = allowed_origins(cors_origins)
        self.any_origin = "*" in self.origins
        self.methods = methods(files)
        self.store = store
        self.objects = objects
        self.signer = signer
        self.console_dir = console_dir.resolve() if console_dir else None
        self._channel: grpc.aio.Channel | None = None

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.native_target,
                options=[
                    ("grpc.max_send_message_length", self.max_message_bytes),
                    ("grpc.max_receive_message_length", self.max_message_bytes),
                ],
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _cors(self, headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
        origin = headers.get("origin", "").rstrip("/")
        if not origin or not (self.any_origin or origin in self.origins):
            return []
        return [
            (b"access-control-allow-origin", origin.encode()),
            (b"vary", b"origin"),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            # Repeated credentials are kept apart so the native side refuses them as such.
            headers[name] = f"{headers[name]},{text}" if name in headers else text
        cors = self._cors(headers)
        path: str = scope["path"]
        verb: str = scope["method"]
        try:
            if verb == "OPTIONS":
                await self._preflight(send, headers, cors)
            elif path.startswith("/reelmill.v1.") or path.startswith("/grpc."):
                await self._rpc(path, verb, headers, receive, send, cors)
            elif _UPLOAD_PATH.match(path):
                await self._upload(scope, headers, receive, send, cors)
            elif path.startswith("/artifacts/"):
                await self._artifact(path, verb, headers, send, cors)
            elif path == "/healthz":
                await self._plain(send, 200, b"ok\n", cors)
            else:
                await self._static(path, verb, send, cors)
        except Disconnected:
            return

    async def _plain(
        self,
        send: Send,
        status: int,
        body: bytes,
        cors: list[tuple[bytes, bytes]],
        extra: Sequence[tuple[bytes, bytes]] = (),
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *cors,
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _connect_error(
        self, send: Send, failure: Failure, cors: list[tuple[bytes, bytes]]
    ) -> None:
        body = json.dumps(failure.connect_json()).encode()
        await self._plain(send, failure.http_status, body, cors, content_type=b"application/json")

    async def _preflight(
        self, send: Send, headers: Mapping[str, str], cors: list[tuple[bytes, bytes]]
    ) -> None:
        if not cors:
            await self._plain(send, 403, b"origin not allowed\n", [])
            return
        await self._plain(
            send,
            204,
            b"",
            cors,
            [
                (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, OPTIONS"),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", b"7200"),
            ],
        )

    async def _body(self, receive: Receive, limit: int, headers: Mapping[str, str]) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ResourceExhausted(
                f"the request body of {declared} bytes exceeds the limit of {limit}",
                reason="RESOURCE_EXHAUSTED",
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise ResourceExhausted(
                    f"the request body exceeds the limit of {limit} bytes",
                    reason="RESOURCE_EXHAUSTED",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _metadata(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        return [(name, headers[name]) for name in FORWARDED if name in headers]

    # -- RPCs --------------------------------------------------------------------------------

    async def _rpc(
        self,
        path: str,
        verb: str,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("application/grpc-web"):
            protocol = "grpc-web-text" if "text" in content_type else "grpc-web"
            if content_type not in (
                "application/grpc-web",
                "application/grpc-web+proto",
                "application/grpc-web-text",
                "application/grpc-web-text+proto",
            ):
                await self._plain(send, 415, b"unsupported gRPC-Web codec\n", cors)
                return
        elif content_type in ("application/connect+proto", "application/connect+json"):
            protocol = "connect-stream"
        elif content_type in ("application/proto", "application/json"):
            protocol = "connect-unary"
        else:
            await self._plain(
                send,
                415,
                b"unsupported content type: send application/proto, application/json, "
                b"application/connect+proto, application/connect+json or application/grpc-web\n",
                cors,
                [(b"accept-post", b"application/json, application/proto")],
            )
            return
        json_codec = content_type.endswith("json")
        method = self.methods.get(path)
        try:
            if verb != "POST":
                await self._plain(send, 405, b"use POST\n", cors, [(b"allow", b"POST")])
                return
            if method is None:
                raise Unimplemented(f"no method {path[:200]}", reason="UNIMPLEMENTED")
            if protocol == "connect-unary" and (method.server_streaming or method.client_streaming):
                await self._plain(
                    send, 415, b"a streaming method needs application/connect+proto|json\n", cors
                )
                return
            if protocol == "connect-stream" and not (
                method.server_streaming or method.client_streaming
            ):
                await self._plain(
                    send, 415, b"a unary method needs application/proto or json\n", cors
                )
                return
            if method.client_streaming:
                raise Unimplemented(
                    f"{path} streams from the client, which browsers cannot: write resumable "
                    "uploads with PUT /uploads/{upload_id}?offset=N",
                    reason="UNIMPLEMENTED",
                )
            encoding = headers.get("content-encoding") or headers.get(
                "connect-content-encoding" if protocol == "connect-stream" else "grpc-encoding",
                "identity",
            )
            if encoding != "identity":
                raise Unimplemented(
                    f"compression {encoding[:40]!r} is not accepted", reason="UNIMPLEMENTED"
                )
            timeout = parse_timeout(headers)
            limit = self.max_message_bytes + 5
            if protocol == "grpc-web-text":
                limit = limit * 4 // 3 + 4
            body = await self._body(receive, limit, headers)
            if protocol == "grpc-web-text":
                try:
                    body = base64.b64decode(body, validate=True)
                except binascii.Error:
                    raise InvalidArgument("the gRPC-Web text body is not base64") from None
            payload = body if protocol == "connect-unary" else single_message(body)
            request = self._decode(method, payload, json_codec)
        except ReelmillError as error:
            failure = Failure.of(error)
            if protocol == "connect-unary":
                await self._connect_error(send, failure, cors)
            else:
                await self._stream_start(send, protocol, content_type, cors)
                await self._stream_end(send, protocol, failure)
            return
        metadata = self._metadata(headers)
        assert method is not None
        if protocol == "connect-unary":
            await self._connect_unary(method, request, metadata, timeout, json_codec, send, cors)
        else:
            await self._streamed(
                method, request, metadata, timeout, protocol, content_type, receive, send, cors
            )

    def _decode(self, method: Method, payload: bytes, json_codec: bool) -> bytes:
        """The request as protobuf bytes, parsed once here so a malformed one is refused as
        INVALID_ARGUMENT with the parser's reason."""
        if json_codec:
            try:
                message = json_format.Parse(
                    payload or b"{}", method.request(), ignore_unknown_fields=True
                )
            except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
                raise InvalidArgument(
                    f"the JSON request does not parse: {str(exc)[:200]}"
                ) from None
            result: bytes = message.SerializeToString()
            return result
        try:
            method.request.FromString(payload)
        except (DecodeError, RecursionError):
            raise InvalidArgument("the protobuf request does not parse") from None
        return payload

    def _encode(self, method: Method, data: bytes, json_codec: bool) -> bytes:
        if not json_codec:
            return data
        message = method.response.FromString(data)
        return json_format.MessageToJson(message, indent=None).encode()

    async def _connect_unary(
        self,
        method: Method,
        request: bytes,
        metadata: list[tuple[str, str]],
        timeout: float | None,
        json_codec: bool,
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        call: Any = self.channel.unary_unary(method.path)
        try:
            response: bytes = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await self._connect_error(send, Failure.of_rpc(error), cors)
            return
        await self._plain(
            send,
            200,
            self._encode(method, response, json_codec),
            cors,
            content_type=b"application/json" if json_codec else b"application/proto",
        )

    async def _stream_start(
        self, send: Send, protocol: str, content_type: str, cors: list[tuple[bytes, bytes]]
    ) -> None:
        if protocol == "connect-stream":
            kind = content_type
        elif protocol == "grpc-web-text":
            kind = "application/grpc-web-text+proto"
        else:
            kind = "application/grpc-web+proto"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind.encode()), *cors],
            }
        )

    async def _stream_message(self, send: Send, protocol: str, data: bytes) -> None:
        frame = envelope(0, data)
        if protocol == "grpc-web-text":
            frame = base64.b64encode(frame)
        await send({"type": "http.response.body", "body": frame, "more_body": True})

    async def _stream_end(self, send: Send, protocol: str, failure: Failure | None) -> None:
        if protocol == "connect-stream":
            end: dict[str, Any] = {} if failure is None else {"error": failure.connect_json()}
            frame = envelope(0x02, json.dumps(end).encode())
        else:
            frame = grpc_web_trailer(failure)
            if protocol == "grpc-web-text":
                frame = base64.b64encode(frame)
        await send({"type": "http.response.body", "body": frame})

    async def _streamed(
        self,
        method: Method,
        request: bytes,
        metadata: list[tuple[str, str]],
        timeout: float | None,
        protocol: str,
        content_type: str,
        receive: Receive,
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        json_codec = protocol == "connect-stream" and content_type.endswith("json")
        await self._stream_start(send, protocol, content_type, cors)
        failure: Failure | None = None
        callable_: Any = (
            self.channel.unary_stream(method.path)
            if method.server_streaming
            else self.channel.unary_unary(method.path)
        )
        call: Any = callable_(request, metadata=metadata, timeout=timeout)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            call.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            if method.server_streaming:
                async for data in call:
                    await self._stream_message(
                        send, protocol, self._encode(method, data, json_codec)
                    )
            else:
                data = await call
                await self._stream_message(send, protocol, self._encode(method, data, json_codec))
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
        except asyncio.CancelledError:
            if watcher.done():
                return  # the client went away
            raise
        finally:
            watcher.cancel()
        await self._stream_end(send, protocol, failure)

    # -- uploads -----------------------------------------------------------------------------

    async def _upload(
        self,
        scope: Scope,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        match = _UPLOAD_PATH.match(scope["path"])
        assert match is not None
        upload_id = match.group(1)
        if scope["method"] not in ("PUT", "POST"):
            await self._plain(send, 405, b"use PUT\n", cors, [(b"allow", b"PUT, POST")])
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offset_text = (query.get("offset") or ["0"])[0]
        if not offset_text.isdigit() or len(offset_text) > 18:
            await self._connect_error(
                send,
                Failure.of(
                    InvalidArgument(
                        "offset must be a non-negative integer", reason="BAD_WRITE_OFFSET"
                    )
                ),
                cors,
            )
            return
        if headers.get("content-encoding", "identity") != "identity":
            await self._connect_error(
                send,
                Failure.of(Unimplemented("compressed uploads are not accepted")),
                cors,
            )
            return
        offset = int(offset_text)
        disconnected = False

        async def messages() -> AsyncIterator[bytes]:
            nonlocal disconnected
            position = offset
            pending = bytearray()
            first = True
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    return
                pending += message.get("body", b"")
                more = bool(message.get("more_body", False))
                while len(pending) >= UPLOAD_MESSAGE_BYTES or (not more and (pending or first)):
                    data = bytes(pending[:UPLOAD_MESSAGE_BYTES])
                    del pending[:UPLOAD_MESSAGE_BYTES]
                    yield job_service_pb2.WriteUploadRequest(
                        upload_id=upload_id if first else "", write_offset=position, data=data
                    ).SerializeToString()
                    first = False
                    position += len(data)

        call: Any = self.channel.stream_unary("/reelmill.v1.JobService/WriteUpload")
        try:
            response_bytes: bytes = await call(
                messages(), metadata=self._metadata(headers), timeout=parse_timeout(headers)
            )
        except ReelmillError as error:
            await self._connect_error(send, Failure.of(error), cors)
            return
        except grpc.aio.AioRpcError as error:
            if disconnected:
                raise Disconnected from None
            await self._connect_error(send, Failure.of_rpc(error), cors)
            return
        if disconnected:
            raise Disconnected
        response = job_service_pb2.WriteUploadResponse.FromString(response_bytes)
        body = json.dumps({"committedSize": str(response.committed_size)}).encode()
        await self._plain(send, 200, body, cors, content_type=b"application/json")

    # -- artifacts ---------------------------------------------------------------------------

    async def _artifact(
        self,
        path: str,
        verb: str,
        headers: Mapping[str, str],
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        if verb not in ("GET", "HEAD"):
            await self._plain(send, 405, b"use GET\n", cors, [(b"allow", b"GET, HEAD")])
            return
        match = _ARTIFACT_PATH.match(path)
        if self.signer is None or self.store is None or self.objects is None:
            await self._plain(send, 404, b"artifact URLs are not served here\n", cors)
            return
        if match is None:
            await self._plain(send, 403, b"not an artifact URL\n", cors)
            return
        token, name = match.group(1), urllib.parse.unquote(match.group(2))
        if (
            name.startswith("/")
            or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))
            or any(ord(c) < 0x20 for c in name)
        ):
            await self._plain(send, 403, b"not an artifact name\n", cors)
            return
        try:
            grant = self.signer.verify(token, name)
            artifact = await self.store.get_artifact(grant.owner, grant.job_id, name)
            info = await self.objects.stat(artifact.object.key)
        except PermissionDenied as denied:
            await self._plain(send, 403, f"{denied.message}\n".encode(), cors)
            return
        except NotFound as missing:
            await self._plain(send, 404, f"{missing.message}\n".encode(), cors)
            return
        except ReelmillError as error:
            failure = Failure.of(error)
            await self._plain(send, failure.http_status, f"{failure.message}\n".encode(), cors)
            return
        size = info.size
        start, end = 0, size
        status = 200
        extra = [
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"private, max-age=60"),
            (b"etag", f'"{artifact.sha256}"'.encode()),
        ]
        if "range" in headers:
            try:
                chosen = parse_range(headers["range"], size)
            except ValueError:
                chosen = (0, size)
            else:
                if chosen is None:
                    await self._plain(
                        send, 416, b"", cors, [(b"content-range", f"bytes */{size}".encode())]
                    )
                    return
                status = 206
                extra.append(
                    (b"content-range", f"bytes {chosen[0]}-{chosen[1] - 1}/{size}".encode())
                )
            start, end = chosen
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type_of(name, artifact.content_type).encode()),
                    (b"content-length", str(end - start).encode()),
                    *cors,
                    *extra,
                ],
            }
        )
        if verb == "HEAD" or end == start:
            await send({"type": "http.response.body", "body": b""})
            return
        async for chunk in self.objects.read_range(artifact.object.key, start, end - start):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # -- the console -------------------------------------------------------------------------

    async def _static(
        self, path: str, verb: str, send: Send, cors: list[tuple[bytes, bytes]]
    ) -> None:
        if verb not in ("GET", "HEAD") or self.console_dir is None:
            await self._plain(send, 404, b"not found\n", cors)
            return
        relative = urllib.parse.unquote(path).lstrip("/") or "index.html"
        target = (self.console_dir / relative).resolve()
        # The console routes by the URL's fragment: nothing else is a page of it.
        if not target.is_relative_to(self.console_dir) or not target.is_file():
            await self._plain(send, 404, b"not found\n", cors)
            return
        body = await asyncio.to_thread(target.read_bytes)
        kind = STATIC_TYPES.get(target.suffix, "application/octet-stream")
        await self._plain(
            send,
            200,
            b"" if verb == "HEAD" else body,
            cors,
            [(b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")],
            content_type=kind.encode(),
        )


def native_target(listen: str, port: int) -> str:
    """Where the browser port reaches the gateway's own native port."""
    host = listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class BrowserServer:
    """The browser port's HTTP server (uvicorn, HTTP/1.1), run as a gateway companion task:
    ``run(port)`` is given the native gRPC port the app forwards to."""

    def __init__(self, listen: str, make_app: Callable[[str], BrowserApp]) -> None:
        self.listen = listen
        self.make_app = make_app
        self._server: Any = None
        self.port = 0

    def bind(self) -> socket.socket:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def run(self, native_port: int) -> None:
        import uvicorn

        sock = self.bind()
        app = self.make_app(native_target(self.listen, native_port))
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            server_header=False,
            # httptools, not h11: streams of small messages cost h11's state machine per
            # write (bench/browser.py: p50 333 ms with h11, 29 ms with httptools).
            http="httptools",
        )
        self._server = uvicorn.Server(config)
        host = self.listen.rpartition(":")[0]
        log.info("browser port listening", extra={"address": f"{host}:{self.port}"})
        try:
            # Not serve(): it would take over SIGTERM/SIGINT, which the gateway handles.
            await self._server._serve(sockets=[sock])
        finally:
            sock.close()
            await app.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
