"""IngestService.ImportUrl: the real grpc.aio server, media served from 127.0.0.1, the SSRF
guard, limits, retries, and yt-dlp's extractor matching and error mapping (no live platform).

Every connection the importer opens goes through ``LoopbackOnly``, which records it and fails
the test for any address off loopback: no test here can send traffic anywhere else, even if
the guard were broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpcore2
import pytest
from google.protobuf import duration_pb2
from yt_dlp.extractor.common import InfoExtractor  # type: ignore[import-untyped]
from yt_dlp.networking import Response  # type: ignore[import-untyped]
from yt_dlp.networking.exceptions import HTTPError, TransportError  # type: ignore[import-untyped]
from yt_dlp.utils import (  # type: ignore[import-untyped]
    DownloadError,
    ExtractorError,
    GeoRestrictedError,
)

from reelmill.retry import Backoff
from reelmill.v1 import ingest_service_pb2 as pb
from reelmill.v1 import media_pb2
from reelmill.v1.ingest_service_pb2_grpc import IngestServiceStub
from runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ReelmillError,
    Unavailable,
    error_info,
)
from runtime.netguard import NetGuard, NetPolicy, UrlRefused, classify_address
from runtime.storage import open_store
from services.ingest.fetch import Transient
from services.ingest.platforms import PlatformExtractor, download_error
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings
from services.ingest.url_import import ImportConfig
from tests.inprocess import serve
from tests.media import make_clip
from tests.servers import S3Server
from tests.test_ingest import Ingest

KEY = "videos/v1/source"
#: Retries in tests wait tens of milliseconds.
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1)


# -- a media server on loopback ---------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


class MediaServer:
    """A threaded HTTP/1.0 server on ``host`` with per-path behaviours (``routes``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, str]] = []  # (path, Host header)
        self.scheme = "https" if tls else "http"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.hits.append((path, self.headers.get("Host", "")))
                route = server.routes.get(path)
                if route is None:
                    send(self, b"nothing here", status=404)
                else:
                    route(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = int(self.httpd.server_address[1])
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    *,
    status: int = 200,
    length: bool = True,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/octet-stream")
    if length:
        handler.send_header("Content-Length", str(len(body)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    with contextlib.suppress(OSError):
        handler.wfile.write(body)


def serving(body: bytes, **kwargs: Any) -> Route:
    return lambda handler: send(handler, body, **kwargs)


def redirecting(location: str, status: int = 302) -> Route:
    return lambda handler: send(handler, b"", status=status, headers=[("Location", location)])


def dribbling(total: int, *, every: float = 0.1, for_at_most: float = 10.0) -> Route:
    """Announces ``total`` bytes, then sends 1 KiB per ``every`` seconds (bounded in time)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        stop = time.monotonic() + for_at_most
        with contextlib.suppress(OSError):
            while time.monotonic() < stop:
                handler.wfile.write(b"\0" * 1024)
                handler.wfile.flush()
                time.sleep(every)

    return route


def failing_then(statuses: Sequence[int], then: Route) -> Route:
    """Answers ``statuses`` in turn, then behaves like ``then``."""
    pending = list(statuses)

    def route(handler: BaseHTTPRequestHandler) -> None:
        if pending:
            send(handler, b"try again", status=pending.pop(0), headers=[("Retry-After", "0")])
        else:
            then(handler)

    return route


@pytest.fixture
def server() -> Iterator[MediaServer]:
    media = MediaServer()
    try:
        yield media
    finally:
        media.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_clip(tmp_path_factory.mktemp("url_import") / "clip.mp4", seconds=2).read_bytes()


# -- the service under test ---------------------------------------------------------------------


class LoopbackOnly(httpcore2.AsyncNetworkBackend):
    """Opens sockets for the guard, records them, and refuses anything off loopback."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.connects.append((host, port))
        if not ipaddress.ip_address(host).is_loopback:  # a name here would fail too
            raise AssertionError(f"the test tried to connect to {host}")
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class FakeResolver:
    """Answers from a table, each name's answers in turn (the last one repeats); records calls."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        turns = self.answers.get(host.lower())
        if not turns:
            import socket

            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return turns.pop(0) if len(turns) > 1 else turns[0]


@dataclass
class Env(Ingest):
    backend: LoopbackOnly = field(default_factory=LoopbackOnly)


@pytest.fixture
def importing(
    request: pytest.FixtureRequest, tmp_path: Path, server: MediaServer
) -> Callable[..., contextlib.AbstractAsyncContextManager[Env]]:
    """Starts the ingest service with URL-import settings of the test's choosing."""

    @contextlib.asynccontextmanager
    async def start(
        *,
        allow: Sequence[str] = ("127.0.0.1",),
        storage: str = "local",
        resolver: FakeResolver | None = None,
        extractors: Sequence[type[Any]] | None = None,
        attempts: int = 3,
        backoff: Backoff = FAST_BACKOFF,
        max_bytes: int = 50 * 1024 * 1024,
        verify: ssl.SSLContext | bool = True,
        port: int | None = None,
    ) -> AsyncIterator[Env]:
        common: dict[str, Any] = {
            "scratch_dir": tmp_path / "scratch",
            "probe_timeout_seconds": 30.0,
            "url_import_allow_hosts": ",".join(allow),
            "url_import_allowed_ports": f"80,443,{port or server.port}",
            "url_import_max_bytes": max_bytes,
            "url_import_attempts": attempts,
        }
        if storage == "local":
            settings = IngestSettings(
                storage_backend="local", storage_dir=tmp_path / "objects", **common
            )
        else:
            s3: S3Server = request.getfixturevalue("s3_server")
            settings = IngestSettings(
                storage_backend="s3",
                s3_endpoint=s3.endpoint,
                s3_access_key=s3.access_key,
                s3_secret_key=s3.secret_key,
                s3_bucket=request.getfixturevalue("s3_bucket"),
                s3_part_size_mib=5,
                **common,
            )
        store = open_store(settings)
        guard = NetGuard(settings.net_policy(), **({"resolver": resolver} if resolver else {}))
        backend = LoopbackOnly()
        spec = build_spec(
            settings,
            store,
            guard=guard,
            import_config=ImportConfig(
                max_bytes=settings.url_import_max_bytes,
                timeout=settings.url_import_timeout_seconds,
                attempts=settings.url_import_attempts,
                backoff=backoff,
                progress_interval=0.0,
            ),
            platforms=PlatformExtractor(guard, extractors=extractors)
            if extractors is not None
            else None,
            inner_backend=backend,
            verify=verify,
        )
        async with serve(spec, settings) as channel:
            yield Env(
                stub=IngestServiceStub(channel), store=store, settings=settings, backend=backend
            )

    return start


def import_request(url: str, **fields: Any) -> pb.ImportUrlRequest:
    return pb.ImportUrlRequest(url=url, destination=media_pb2.ObjectRef(key=KEY), **fields)


async def run_import(
    env: Env, url: str, **fields: Any
) -> tuple[list[media_pb2.Progress], pb.IngestVideoResponse]:
    progress: list[media_pb2.Progress] = []
    result: pb.IngestVideoResponse | None = None
    async for update in env.stub.ImportUrl(import_request(url, **fields)):
        if update.HasField("progress"):
            assert result is None, "progress after the result"
            progress.append(update.progress)
        else:
            assert result is None, "two results"
            result = update.result
    assert result is not None
    return progress, result


async def expect_error(
    env: Env, url: str, code: grpc.StatusCode, reason: str, **fields: Any
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_import(env, url, **fields)
    assert caught.value.code() == code, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == reason, (info, caught.value.details())
    assert "Traceback" not in (caught.value.details() or "")
    assert await env.leftovers() == []
    return caught.value


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def only_loopback_server(env: Env, server: MediaServer) -> None:
    assert all(c == ("127.0.0.1", server.port) for c in env.backend.connects), env.backend.connects


# -- imports that work ----------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["local", "s3"])
async def test_imports_and_probes_a_real_clip(
    importing: Any, server: MediaServer, shared_media: Path, storage: str
) -> None:
    data = (shared_media / "video/testvideo.mp4").read_bytes()
    server.routes["/media/testvideo.mp4"] = serving(data)
    async with importing(storage=storage) as env:
        progress, result = await run_import(env, server.url("/media/testvideo.mp4"))

        assert result.object.key == KEY
        assert result.size_bytes == len(data)
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert result.content_type == "video/mp4"
        [video] = result.media_info.video_streams
        assert (video.codec, video.width, video.height, video.frame_count) == (
            "h264",
            1280,
            720,
            720,
        )
        assert progress  # the latest at each moment: a slow reader skips some, never the order
        assert all(f"of {len(data)} bytes" in p.message for p in progress)
        assert all(0.0 <= p.fraction <= 1.0 for p in progress)
        assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
        info = await env.store.stat(KEY)
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await env.leftovers() == [f"object:{KEY}"]
        only_loopback_server(env, server)


async def test_the_same_url_is_refused_without_the_allowlist(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    server.routes["/clip.mp4"] = serving(clip)
    async with importing(allow=()) as env:
        error = await expect_error(
            env,
            server.url("/clip.mp4"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "URL_NOT_ALLOWED",
        )
        assert "loopback" in (error.details() or "")
        assert env.backend.connects == []
    assert server.hits == []
    async with importing() as env:  # the control: with the allowlist it imports
        await run_import(env, server.url("/clip.mp4"))
    assert server.paths() == ["/clip.mp4"]


async def test_redirects_are_followed(importing: Any, server: MediaServer, clip: bytes) -> None:
    server.routes["/clip.mp4"] = serving(clip)
    server.routes["/a"] = redirecting("/b", status=301)
    server.routes["/b"] = redirecting(server.url("/clip.mp4"), status=307)
    async with importing() as env:
        _, result = await run_import(env, server.url("/a"))
        assert result.size_bytes == len(clip)
    assert server.paths() == ["/a", "/b", "/clip.mp4"]


async def test_without_content_length(importing: Any, server: MediaServer, clip: bytes) -> None:
    server.routes["/clip.mp4"] = serving(clip, length=False)
    async with importing() as env:
        progress, result = await run_import(env, server.url("/clip.mp4"))
    assert result.size_bytes == len(clip)
    assert progress and all(p.fraction == 0.0 for p in progress)  # no size: no fraction
    assert all(p.message.endswith(" bytes") and " of " not in p.message for p in progress)


async def test_a_500_then_success_is_retried(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    server.routes["/clip.mp4"] = failing_then([500, 503], serving(clip))
    async with importing(attempts=3) as env:
        progress, result = await run_import(env, server.url("/clip.mp4"))
        assert result.sha256 == hashlib.sha256(clip).hexdigest()
        assert any("(attempt 3)" in p.message for p in progress)
        assert await env.leftovers() == [f"object:{KEY}"]
    assert server.paths() == ["/clip.mp4"] * 3


async def test_a_connection_cut_mid_body_is_retried(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    calls = 0

    def cut_once(handler: BaseHTTPRequestHandler) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # announce everything, send half, hang up
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(clip)))
            handler.end_headers()
            handler.wfile.write(clip[: len(clip) // 2])
        else:
            send(handler, clip)

    server.routes["/clip.mp4"] = cut_once
    async with importing() as env:
        _, result = await run_import(env, server.url("/clip.mp4"))
        assert result.size_bytes == len(clip)
        assert await env.leftovers() == [f"object:{KEY}"]


# -- what the guard refuses ----------------------------------------------------------------------


async def test_a_redirect_to_loopback_is_refused(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    # The first hop is a name the test allows (it resolves to the loopback server); the second
    # names 127.0.0.1 itself, which is not allowed.
    server.routes["/clip.mp4"] = serving(clip)
    server.routes["/go"] = redirecting(server.url("/clip.mp4"))
    resolver = FakeResolver({"media.test": [["127.0.0.1"]]})
    async with importing(allow=("media.test",), resolver=resolver) as env:
        await expect_error(
            env,
            server.url("/go", host="media.test"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "URL_NOT_ALLOWED",
        )
    assert server.paths() == ["/go"]
    assert server.hits[0][1] == f"media.test:{server.port}"  # the Host header kept the name


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.1]/",
        "http://100.100.100.200/",
        "http://internal.test/",  # a name that resolves to a private address
        "http://mixed.test/",  # one public-looking answer and one private: refused all the same
    ],
)
async def test_a_redirect_chain_to_a_private_address_is_refused_before_connecting(
    importing: Any, server: MediaServer, target: str
) -> None:
    server.routes["/one"] = redirecting("/two")
    server.routes["/two"] = redirecting(target)
    resolver = FakeResolver(
        {"internal.test": [["10.1.2.3"]], "mixed.test": [["127.0.0.1", "192.168.1.10"]]}
    )
    async with importing(resolver=resolver) as env:
        await expect_error(
            env, server.url("/one"), grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED"
        )
        only_loopback_server(env, server)
    assert server.paths() == ["/one", "/two"]


async def test_dns_rebinding_connects_to_the_vetted_address(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    # The name answers 127.0.0.1 (allowed here) once, then 127.0.0.2 (not allowed). A victim
    # listens on 127.0.0.2 at the same port: a second lookup at connect time would reach it.
    server.routes["/clip.mp4"] = serving(clip)
    victim = MediaServer("127.0.0.2", server.port)
    victim.routes["/clip.mp4"] = serving(b"secret")
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    try:
        async with importing(resolver=resolver) as env:
            _, result = await run_import(env, server.url("/clip.mp4", host="rebind.test"))
            assert result.size_bytes == len(clip)
            assert env.backend.connects == [("127.0.0.1", server.port)]
            await env.store.delete(KEY)
        assert resolver.calls == ["rebind.test"]  # one lookup: the checked one is the one used
        assert server.hits == [("/clip.mp4", f"rebind.test:{server.port}")]
        assert victim.hits == []

        # The rebound answer, once it is the answer, is refused before any connection.
        resolver.calls.clear()
        async with importing(resolver=resolver) as env:
            await expect_error(
                env,
                server.url("/clip.mp4", host="rebind.test"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "URL_NOT_ALLOWED",
            )
            assert env.backend.connects == []
        assert victim.hits == []
    finally:
        victim.close()


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext
    #: Server names the server was asked for (SNI).
    names: list[str]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a certificate for media.test only, made on the spot."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("media.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("media.test")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    (directory / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    names: list[str] = []
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "leaf.pem")

    def record(sock: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        names.append(server_name or "")

    server.sni_callback = record
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Tls(server=server, client=client, names=names)


async def test_https_keeps_the_name_for_sni_and_the_certificate(
    importing: Any, server: MediaServer, clip: bytes, tls: Tls
) -> None:
    # The connection goes to the vetted 127.0.0.1, yet TLS asks for and verifies media.test.
    secure = MediaServer(tls=tls.server)
    secure.routes["/clip.mp4"] = serving(clip)
    resolver = FakeResolver({"media.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    try:
        async with importing(resolver=resolver, verify=tls.client, port=secure.port) as env:
            _, result = await run_import(env, secure.url("/clip.mp4", host="media.test"))
            assert result.size_bytes == len(clip)
            assert env.backend.connects == [("127.0.0.1", secure.port)]
            assert tls.names[-1] == "media.test"
            assert secure.hits == [("/clip.mp4", f"media.test:{secure.port}")]
            await env.store.delete(KEY)

            # Another name for the same address: the certificate does not cover it.
            await expect_error(
                env,
                secure.url("/clip.mp4", host="other.test"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "TLS_CERTIFICATE_INVALID",
            )
            assert tls.names[-1] == "other.test"
        assert len(secure.hits) == 1
    finally:
        secure.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "UNSUPPORTED_URL_SCHEME"),
        ("ftp://127.0.0.1/clip.mp4", "UNSUPPORTED_URL_SCHEME"),
        ("gopher://127.0.0.1:70/", "UNSUPPORTED_URL_SCHEME"),
        ("data:video/mp4;base64,AAAA", "UNSUPPORTED_URL_SCHEME"),
        ("//127.0.0.1/clip.mp4", "UNSUPPORTED_URL_SCHEME"),
        ("http:///clip.mp4", "INVALID_URL"),
        ("", "INVALID_URL"),
        ("http://127.0.0.1:22/", "URL_PORT_NOT_ALLOWED"),
        ("http://127.0.0.1:6379/", "URL_PORT_NOT_ALLOWED"),
        ("https://example.com:8444/v.mp4", "URL_PORT_NOT_ALLOWED"),
        ("http://user:pass@127.0.0.1:{port}/clip.mp4", "URL_CREDENTIALS_NOT_ALLOWED"),
        ("http://user@127.0.0.1:{port}/clip.mp4", "URL_CREDENTIALS_NOT_ALLOWED"),
        ("http://[::1]:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://[::ffff:127.0.0.1]:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://0.0.0.0:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://[::]:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://localhost:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://2130706433:{port}/clip.mp4", "URL_NOT_ALLOWED"),  # 127.0.0.1 as one number
        ("http://0x7f.1:{port}/clip.mp4", "URL_NOT_ALLOWED"),
        ("http://127.1:{port}/clip.mp4", "URL_NOT_ALLOWED"),
    ],
)
async def test_refused_urls(
    importing: Any, server: MediaServer, clip: bytes, url: str, reason: str
) -> None:
    server.routes["/clip.mp4"] = serving(clip)
    async with importing(allow=()) as env:
        await expect_error(
            env, url.format(port=server.port), grpc.StatusCode.INVALID_ARGUMENT, reason
        )
        assert env.backend.connects == []
    assert server.hits == []


async def test_credentials_are_refused_even_when_the_host_is_allowed(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    server.routes["/clip.mp4"] = serving(clip)
    server.routes["/go"] = redirecting(server.url("/clip.mp4").replace("//", "//u:p@"))
    async with importing() as env:
        await expect_error(
            env,
            server.url("/clip.mp4").replace("//", "//u:p@"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "URL_CREDENTIALS_NOT_ALLOWED",
        )
        await expect_error(  # and in a redirect
            env, server.url("/go"), grpc.StatusCode.INVALID_ARGUMENT, "URL_CREDENTIALS_NOT_ALLOWED"
        )
    assert server.paths() == ["/go"]


async def test_a_redirect_to_a_refused_port_or_scheme(importing: Any, server: MediaServer) -> None:
    server.routes["/port"] = redirecting("http://127.0.0.1:25/")
    server.routes["/file"] = redirecting("file:///etc/passwd")
    async with importing() as env:
        await expect_error(
            env, server.url("/port"), grpc.StatusCode.INVALID_ARGUMENT, "URL_PORT_NOT_ALLOWED"
        )
        await expect_error(
            env, server.url("/file"), grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_URL_SCHEME"
        )
        only_loopback_server(env, server)


async def test_too_many_redirects(importing: Any, server: MediaServer) -> None:
    server.routes["/loop"] = redirecting("/loop")
    async with importing() as env:
        await expect_error(
            env, server.url("/loop"), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_REDIRECTS"
        )
    assert server.paths() == ["/loop"] * 6


async def test_an_unknown_host(importing: Any, server: MediaServer) -> None:
    async with importing(resolver=FakeResolver({})) as env:
        await expect_error(
            env, server.url("/x", host="nowhere.test"), grpc.StatusCode.NOT_FOUND, "HOST_NOT_FOUND"
        )


# -- limits and remote failures ------------------------------------------------------------------


async def test_too_large_by_content_length(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    server.routes["/clip.mp4"] = serving(clip)
    async with importing() as env:
        error = await expect_error(
            env,
            server.url("/clip.mp4"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "DOWNLOAD_TOO_LARGE",
            max_bytes=len(clip) - 1,
        )
        assert f"announces {len(clip)} bytes" in (error.details() or "")
    async with importing(max_bytes=len(clip) - 1) as env:  # the service's limit, too
        await expect_error(
            env,
            server.url("/clip.mp4"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "DOWNLOAD_TOO_LARGE",
            max_bytes=len(clip) * 10,  # a request may lower the limit, never raise it
        )


@pytest.mark.parametrize("storage", ["local", "s3"])
async def test_too_large_while_streaming(importing: Any, server: MediaServer, storage: str) -> None:
    body = b"\0" * (12 * 1024 * 1024)  # more than two S3 parts before the limit bites
    server.routes["/big"] = serving(body, length=False)
    async with importing(storage=storage) as env:
        error = await expect_error(
            env,
            server.url("/big"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "DOWNLOAD_TOO_LARGE",
            max_bytes=11 * 1024 * 1024,
        )
        assert "sent more than" in (error.details() or "")


async def test_too_slow(importing: Any, server: MediaServer) -> None:
    server.routes["/slow"] = dribbling(10 * 1024 * 1024)
    async with importing() as env:
        started = time.monotonic()
        error = await expect_error(
            env,
            server.url("/slow"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DOWNLOAD_TIMEOUT",
            timeout=seconds(0.8),
        )
        assert time.monotonic() - started < 5
        assert error.details()


async def test_client_cancel_mid_download_leaves_nothing(
    importing: Any, server: MediaServer
) -> None:
    server.routes["/slow"] = dribbling(10 * 1024 * 1024, every=0.02)
    async with importing() as env:
        call = env.stub.ImportUrl(import_request(server.url("/slow")))
        async for update in call:
            if not update.progress.message.startswith("downloaded 0 "):
                break  # bytes are arriving
        # The bytes go straight into the store's write (nothing is copied to scratch).
        under_way = await env.leftovers()
        assert any(p.startswith("temp:") for p in under_way), under_way
        assert not any(p.startswith("scratch:") for p in under_way), under_way
        call.cancel()
        for _ in range(100):
            if not await env.leftovers():
                break
            await asyncio.sleep(0.05)
        assert await env.leftovers() == []


async def test_the_callers_deadline_bounds_the_import(importing: Any, server: MediaServer) -> None:
    server.routes["/slow"] = dribbling(10 * 1024 * 1024)
    async with importing() as env:
        call = env.stub.ImportUrl(import_request(server.url("/slow")), timeout=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):
            if not await env.leftovers():
                break
            await asyncio.sleep(0.05)
        assert await env.leftovers() == []


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (404, grpc.StatusCode.NOT_FOUND, "URL_NOT_FOUND"),
        (410, grpc.StatusCode.NOT_FOUND, "URL_NOT_FOUND"),
        (401, grpc.StatusCode.FAILED_PRECONDITION, "URL_ACCESS_DENIED"),
        (403, grpc.StatusCode.FAILED_PRECONDITION, "URL_ACCESS_DENIED"),
        (400, grpc.StatusCode.FAILED_PRECONDITION, "URL_REJECTED"),
        (501, grpc.StatusCode.FAILED_PRECONDITION, "URL_REJECTED"),
        (503, grpc.StatusCode.UNAVAILABLE, "URL_UNAVAILABLE"),
        (429, grpc.StatusCode.UNAVAILABLE, "URL_UNAVAILABLE"),
    ],
)
async def test_remote_statuses(
    importing: Any, server: MediaServer, status: int, code: grpc.StatusCode, reason: str
) -> None:
    server.routes["/x"] = serving(b"no", status=status)
    async with importing(attempts=2) as env:
        error = await expect_error(env, server.url("/x"), code, reason)
    info = error_info(error)
    assert info is not None and info.metadata["http_status"] == str(status)
    retried = code == grpc.StatusCode.UNAVAILABLE
    assert server.paths() == ["/x"] * (2 if retried else 1)


async def test_no_retry_is_made_when_retry_after_would_end_past_the_deadline(
    importing: Any, server: MediaServer
) -> None:
    def busy(handler: BaseHTTPRequestHandler) -> None:
        send(handler, b"busy", status=503, headers=[("Retry-After", "30")])

    server.routes["/x"] = busy
    # Retry-After raises the wait to 30 s: past the 20 s time limit. Refused at once, not after
    # waiting out the limit (the margin is wide: a loaded machine takes a second or two).
    async with importing(attempts=5, backoff=Backoff(initial=0.02, maximum=60.0)) as env:
        started = time.monotonic()
        error = await expect_error(
            env,
            server.url("/x"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DOWNLOAD_TIMEOUT",
            timeout=seconds(20.0),
        )
        assert time.monotonic() - started < 10.0
    assert "503" in (error.details() or "")
    assert server.paths() == ["/x"]


async def test_nothing_listening_is_unavailable(importing: Any, server: MediaServer) -> None:
    port = server.port
    server.close()
    async with importing(attempts=2) as env:
        await expect_error(
            env, f"http://127.0.0.1:{port}/x", grpc.StatusCode.UNAVAILABLE, "URL_UNAVAILABLE"
        )
        assert env.backend.connects == [("127.0.0.1", port)] * 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>not a video</html>" * 100, "NOT_A_VIDEO"),
        (b"", "EMPTY_DOWNLOAD"),
    ],
)
async def test_not_a_video(importing: Any, server: MediaServer, body: bytes, reason: str) -> None:
    server.routes["/v.mp4"] = serving(body)
    async with importing() as env:
        await expect_error(env, server.url("/v.mp4"), grpc.StatusCode.INVALID_ARGUMENT, reason)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"max_bytes": -1}, "INVALID_MAX_BYTES"),
        ({"timeout": seconds(-1)}, "INVALID_TIMEOUT"),
        ({"destination": media_pb2.ObjectRef(key="../x")}, "BAD_OBJECT_KEY"),
        ({"destination": media_pb2.ObjectRef(key="")}, "MISSING_OBJECT_KEY"),
    ],
)
async def test_bad_requests(
    importing: Any, server: MediaServer, fields: dict[str, Any], reason: str
) -> None:
    async with importing() as env:
        request = import_request(server.url("/clip.mp4"))
        for name, value in fields.items():
            if isinstance(value, media_pb2.ObjectRef | duration_pb2.Duration):
                getattr(request, name).CopyFrom(value)
            else:
                setattr(request, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in env.stub.ImportUrl(request):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == reason
    assert server.hits == []


# -- the address classifier ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # an IPv4-mapped public address is that public address
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("fd00::1", "unique-local"),
        ("fc00::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::10.0.0.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64 loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2002:a00:1::", "6to4 private"),
        ("2001::1", "Teredo"),
        ("100::1", "discard-only"),
    ],
)
def test_classify_address(address: str, refused: str | None) -> None:
    assert classify_address(ipaddress.ip_address(address)) == refused


def test_the_allowlist_exempts_only_what_it_names() -> None:
    policy = NetPolicy.build(allowed_ports=[80], allow=["127.0.0.1", "10.1.0.0/16", "Media.Test."])
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) == "loopback"
    assert policy.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.refusal(ipaddress.ip_address("10.2.0.1")) == "private"
    assert policy.allow_hosts == frozenset({"media.test"})
    guard = NetGuard(policy, resolver=FakeResolver({"media.test": [["192.168.0.9"]]}))
    assert guard.addresses("MEDIA.test", 80) == ["192.168.0.9"]
    with pytest.raises(ValueError, match="neither"):
        NetPolicy.build(allowed_ports=[80], allow=["not a host!"])


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELMILL_URL_IMPORT_ALLOWED_PORTS", "443, 8443")
    monkeypatch.setenv("REELMILL_URL_IMPORT_ALLOW_HOSTS", "127.0.0.1,media.test")
    monkeypatch.setenv("REELMILL_URL_IMPORT_MAX_BYTES", "1000")
    settings = IngestSettings()
    assert settings.url_import_allowed_ports == (443, 8443)
    policy = settings.net_policy()
    assert policy.allowed_ports == frozenset({443, 8443})
    assert policy.allow_hosts == frozenset({"media.test"})
    assert IngestSettings.model_fields["url_import_allow_hosts"].default == ()
    monkeypatch.setenv("REELMILL_URL_IMPORT_ALLOW_HOSTS", "10.0.0.0/33")
    with pytest.raises(ValueError, match="allow_hosts"):
        IngestSettings()


def test_a_refusal_is_an_invalid_argument() -> None:
    guard = NetGuard(NetPolicy())
    with pytest.raises(UrlRefused) as caught:
        guard.check_url("http://169.254.169.254/")
    assert isinstance(caught.value, InvalidArgument)
    assert caught.value.metadata == {"category": "cloud metadata"}


# -- video platforms through yt-dlp (no live platform: matching, errors, a local stand-in) ------


@pytest.mark.parametrize(
    ("url", "extractor"),
    [
        ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "Youtube"),
        ("https://youtu.be/dQw4w9WgXcQ", "Youtube"),
        ("https://www.youtube.com/shorts/abcdefghijk", "Youtube"),
        ("https://vimeo.com/76979871", "Vimeo"),
        ("https://www.tiktok.com/@scout2015/video/6718335390845095173", "TikTok"),
        ("https://www.instagram.com/p/CxyzABC123/", "Instagram"),
        ("https://www.dailymotion.com/video/x7tgad0", "Dailymotion"),
        ("https://example.com/video.mp4", None),
        ("https://cdn.example.org/a/b/c.webm?sig=1", None),
        ("http://127.0.0.1:8000/clip.mp4", None),
    ],
)
def test_platform_urls_are_recognised(url: str, extractor: str | None) -> None:
    assert PlatformExtractor(NetGuard(NetPolicy())).matches(url) == extractor


def _http_error(status: int) -> HTTPError:
    return HTTPError(Response(io.BytesIO(b""), "https://platform.example/x", {}, status=status))


def _download_error(inner: BaseException) -> DownloadError:
    return DownloadError(f"ERROR: {inner}", exc_info=(type(inner), inner, None))


@pytest.mark.parametrize(
    ("error", "kind", "reason", "says"),
    [
        (
            DownloadError(
                "ERROR: [youtube] dQw4w9WgXcQ: Private video. Sign in if you've been granted "
                "access to this video. Use --cookies-from-browser or --cookies for the "
                "authentication. See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-"
                "cookies-to-yt-dlp  for how to manually pass cookies."
            ),
            FailedPrecondition,
            "VIDEO_PRIVATE",
            "Private video",
        ),
        (
            DownloadError(
                "ERROR: [youtube] abc: Video unavailable. This video has been removed by the "
                "uploader"
            ),
            FailedPrecondition,
            "VIDEO_REMOVED",
            "removed by the uploader",
        ),
        (
            DownloadError(
                "ERROR: [youtube] abc: Video unavailable. This video is no longer available "
                "due to a copyright claim by Example Records"
            ),
            FailedPrecondition,
            "VIDEO_REMOVED",
            "copyright claim",
        ),
        (
            _download_error(
                GeoRestrictedError(
                    "The uploader has not made this video available in your country",
                    countries=["US"],
                )
            ),
            FailedPrecondition,
            "VIDEO_GEO_BLOCKED",
            "available in your country",
        ),
        (
            DownloadError(
                "ERROR: [vimeo] 123: This video is not available in your region.\nYou might "
                "want to use a VPN or a proxy server (with --proxy) to workaround."
            ),
            FailedPrecondition,
            "VIDEO_GEO_BLOCKED",
            "not available in your region",
        ),
        (
            DownloadError(
                "ERROR: [youtube] abc: Sign in to confirm your age. This video may be "
                "inappropriate for some users. Use --cookies-from-browser or --cookies for the "
                "authentication."
            ),
            FailedPrecondition,
            "VIDEO_LOGIN_REQUIRED",
            "confirm your age",
        ),
        (
            DownloadError(
                "ERROR: [Instagram] CxyzABC123: Requested content is not available, rate-limit "
                "reached or login required. Use --cookies, --cookies-from-browser, --username "
                "and --password, --netrc-cmd, or --netrc (instagram) to provide account "
                "credentials"
            ),
            FailedPrecondition,
            "VIDEO_LOGIN_REQUIRED",
            "login required",
        ),
        (
            DownloadError("ERROR: [TikTok] 6718335390845095173: Video not available, status 10204"),
            FailedPrecondition,
            "VIDEO_UNAVAILABLE",
            "Video not available",
        ),
        (
            DownloadError("ERROR: [youtube] abc: This live event will begin in 3 hours."),
            FailedPrecondition,
            "VIDEO_LIVE",
            "live event",
        ),
        (
            DownloadError(
                "ERROR: [youtube] abc: Requested format is not available. Use --list-formats "
                "for a list of available formats"
            ),
            FailedPrecondition,
            "NO_PROGRESSIVE_FORMAT",
            "Requested format is not available",
        ),
        (
            _download_error(
                ExtractorError("Unable to extract uploader id", ie="youtube", video_id="abc")
            ),
            Unavailable,
            "EXTRACTION_FAILED",
            "Unable to extract uploader id",
        ),
        (
            _download_error(
                ExtractorError(
                    "Unable to download webpage: HTTP Error 404: Not Found",
                    cause=_http_error(404),
                    expected=True,
                )
            ),
            NotFound,
            "URL_NOT_FOUND",
            "HTTP 404",
        ),
    ],
)
def test_platform_errors(
    error: BaseException, kind: type[ReelmillError], reason: str, says: str
) -> None:
    mapped = download_error(error)
    assert isinstance(mapped, kind), mapped
    assert mapped.reason == reason
    assert says in mapped.message
    for noise in ("ERROR:", "--cookies", "--proxy", "http", "yt-dlp", "caused by", "[youtube]"):
        assert noise not in mapped.message, mapped.message
    assert len(mapped.message) < 250


@pytest.mark.parametrize(
    "error",
    [
        _download_error(
            ExtractorError(
                "Unable to download webpage: HTTP Error 503", cause=_http_error(503), expected=True
            )
        ),
        _download_error(
            ExtractorError(
                "Unable to download webpage: timed out",
                cause=TransportError("timed out"),
                expected=True,
            )
        ),
    ],
)
def test_platform_network_trouble_is_transient(error: BaseException) -> None:
    assert isinstance(download_error(error), Transient)


class LocalTubeIE(InfoExtractor):
    """A stand-in platform: its pages are JSON documents on the test's media server."""

    _VALID_URL = r"https?://tube\.test:(?P<port>\d+)/watch/(?P<id>\w+)"

    def _real_extract(self, url: str) -> dict[str, Any]:
        port, video_id = self._match_valid_url(url).group("port", "id")
        data = self._download_json(f"http://tube.test:{port}/api/{video_id}.json", video_id)
        if "error" in data:
            raise ExtractorError(data["error"], expected=True)
        return {"id": video_id, "title": data["title"], "formats": data["formats"]}


def tube_page(server: MediaServer, clip: bytes) -> bytes:
    base = f"http://tube.test:{server.port}"
    formats = [
        {"format_id": "hls", "url": f"{base}/master.m3u8", "protocol": "m3u8_native",
         "ext": "mp4", "height": 1080},
        {"format_id": "video-only", "url": f"{base}/v.mp4", "ext": "mp4", "vcodec": "avc1",
         "acodec": "none", "height": 1080},
        {"format_id": "huge", "url": f"{base}/huge.mp4", "ext": "mp4", "vcodec": "avc1",
         "acodec": "mp4a", "height": 720, "filesize": 10**12},
        {"format_id": "sd", "url": f"{base}/clip.mp4", "ext": "mp4", "vcodec": "avc1",
         "acodec": "mp4a", "height": 240, "filesize": len(clip)},
    ]  # fmt: skip
    return json.dumps({"title": "A clip", "formats": formats}).encode()


async def test_a_platform_video_is_extracted_and_downloaded_through_the_guard(
    importing: Any, server: MediaServer, clip: bytes
) -> None:
    server.routes["/api/abc.json"] = serving(tube_page(server, clip))
    server.routes["/clip.mp4"] = serving(clip)
    url = f"http://tube.test:{server.port}/watch/abc"

    # Without the allowlist, even yt-dlp's own page request is refused before connecting.
    resolver = FakeResolver({"tube.test": [["127.0.0.1"]]})
    async with importing(allow=(), resolver=resolver, extractors=[LocalTubeIE]) as env:
        await expect_error(env, url, grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED")
    assert server.hits == []

    async with importing(resolver=resolver, extractors=[LocalTubeIE]) as env:
        _, result = await run_import(env, url)
        assert result.sha256 == hashlib.sha256(clip).hexdigest()
        assert env.backend.connects == [("127.0.0.1", server.port)]  # the media download
    # The page through yt-dlp's (guarded) handler, then the one progressive file in the limit.
    assert server.paths() == ["/api/abc.json", "/clip.mp4"]


async def test_a_platform_that_says_private(importing: Any, server: MediaServer) -> None:
    page = {"error": "Private video. Sign in if you've been granted access to this video"}
    server.routes["/api/abc.json"] = serving(json.dumps(page).encode())
    resolver = FakeResolver({"tube.test": [["127.0.0.1"]]})
    async with importing(resolver=resolver, extractors=[LocalTubeIE]) as env:
        error = await expect_error(
            env,
            f"http://tube.test:{server.port}/watch/abc",
            grpc.StatusCode.FAILED_PRECONDITION,
            "VIDEO_PRIVATE",
        )
    assert error.details() == (
        "the platform says: Private video. Sign in if you've been granted access to this video."
    )


async def test_a_platform_with_only_a_too_large_file(importing: Any, server: MediaServer) -> None:
    page = {
        "title": "big",
        "formats": [
            {"format_id": "hd", "url": f"http://tube.test:{server.port}/hd.mp4", "ext": "mp4",
             "vcodec": "avc1", "acodec": "mp4a", "filesize": 10**12},
        ],
    }  # fmt: skip
    server.routes["/api/abc.json"] = serving(json.dumps(page).encode())
    resolver = FakeResolver({"tube.test": [["127.0.0.1"]]})
    async with importing(resolver=resolver, extractors=[LocalTubeIE]) as env:
        await expect_error(
            env,
            f"http://tube.test:{server.port}/watch/abc",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "DOWNLOAD_TOO_LARGE",
        )
    assert server.paths() == ["/api/abc.json"]
