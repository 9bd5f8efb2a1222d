"""``reelmill up``: the whole suite on this machine, each service its own process.

Server-side tooling: it needs the server packages and their dependencies (``pgserver``,
``jwt``), so the CLI imports it only for ``up`` and ``demo``, once it has checked they are
installed; no other client module imports it (``tests/test_client_package.py``).

Embedded defaults: Postgres from the ``pgserver`` wheel in ``$REELMILL_HOME/pg`` and the
local-directory object store in ``$REELMILL_HOME/objects``. ``REELMILL_UP_STORAGE=seaweedfs``
(``up --storage seaweedfs``) runs an embedded S3 server instead (SeaweedFS on loopback, data in
``$REELMILL_HOME/seaweedfs``; see ``reelmill.cli.seaweedfs``), so that artifact URLs are http
URLs players and browsers on this machine can open. Set ``REELMILL_DATABASE_URL`` (and
``REELMILL_STORAGE_BACKEND=s3`` with the ``REELMILL_S3_*`` settings) to use external ones.
Children are started by PID and stopped the same way: SIGTERM, a grace period, then SIGKILL.
Every run generates a fresh internal token (unless ``REELMILL_INTERNAL_TOKEN`` is set) and gives
it to every process: the gateway sends it, the services accept only calls that carry it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.cli.config import CliSettings

if TYPE_CHECKING:
    from reelmill.cli.seaweedfs import SeaweedFS

#: Internal services, in start order; the gateway starts last, stops first.
SERVICES: tuple[tuple[str, str], ...] = (
    ("ingest", "services.ingest"),
    ("transcode", "services.transcode"),
    ("transcribe", "services.transcribe"),
    ("metadata", "services.metadata"),
    ("vision", "services.vision"),
)
GATEWAY = ("gateway", "gateway")
START_TIMEOUT = 120.0
STOP_GRACE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_or_free(port: int) -> int:
    """``port`` when nothing listens on it on 127.0.0.1, else a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def available_services() -> list[tuple[str, str]]:
    """The internal services this install has (each later issue adds one)."""
    import importlib.util

    return [(name, module) for name, module in SERVICES if importlib.util.find_spec(module)]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path


@dataclass
class Suite:
    home: Path
    gateway: str
    token: str
    children: list[Child] = field(default_factory=list)
    #: The gateway's browser port (Connect, gRPC-Web, the web console), "" when off.
    browser: str = ""
    postgres: Any = None
    #: The embedded S3 server (``REELMILL_UP_STORAGE=seaweedfs``), stopped after every child.
    seaweedfs: SeaweedFS | None = None

    def stop(self, grace: float = STOP_GRACE) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()
        if self.seaweedfs is not None:
            self.seaweedfs.stop()
            self.seaweedfs = None
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)


def _secret(home: Path, name: str = "jwt-secret", make: Callable[[], str] | None = None) -> str:
    """A secret kept in ``home`` across runs (mode 0600), made on the first run."""
    path = home / name
    if not path.exists():
        path.write_text(make() if make is not None else secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _webhook_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _dev_token(secret: str, issuer: str, audience: str) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "sub": "dev",
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + 30 * 24 * 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def wait_serving(address: str, child: Child, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.process.returncode}\n" + tail(child.log_path)
                )
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{child.name} not serving after {timeout:.0f}s\n" + tail(child.log_path))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def run_suite(
    settings: CliSettings, *, listen: str = "127.0.0.1:50051", echo: Any = print
) -> Iterator[Suite]:
    """Starts everything, yields the running suite, stops everything on exit."""
    home = settings.home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ)
    base_env.setdefault("REELMILL_STORAGE_DIR", str(home / "objects"))
    base_env.setdefault("REELMILL_SCRATCH_DIR", str(home / "scratch"))
    secret = base_env.setdefault("REELMILL_JWT_SECRET", _secret(home))
    # Seals the webhook secrets in the embedded database; kept, or they would not open again.
    base_env.setdefault(
        "REELMILL_WEBHOOK_SECRET_KEY", _secret(home, "webhook-secret-key", _webhook_key)
    )
    # Lives only as long as this run: nothing to store, nothing another run could reuse.
    base_env.setdefault("REELMILL_INTERNAL_TOKEN", secrets.token_urlsafe(32))
    token = _dev_token(
        secret,
        base_env.get("REELMILL_JWT_ISSUER", "reelmill"),
        base_env.get("REELMILL_JWT_AUDIENCE", "reelmill"),
    )
    # The browser port and its console: 8080 when it is free, another port otherwise;
    # REELMILL_BROWSER_LISTEN="" turns it off. Pages on the console's own origins may call.
    if "REELMILL_BROWSER_LISTEN" not in base_env:
        base_env["REELMILL_BROWSER_LISTEN"] = f"127.0.0.1:{_port_or_free(8080)}"
    browser = base_env["REELMILL_BROWSER_LISTEN"]
    if browser:
        port = browser.rsplit(":", 1)[1]
        base_env.setdefault(
            "REELMILL_CORS_ORIGINS", f"http://127.0.0.1:{port},http://localhost:{port}"
        )
    suite = Suite(home=home, gateway=listen, token=token, browser=browser)
    try:
        if "REELMILL_DATABASE_URL" not in base_env:
            import pgserver

            echo("starting embedded Postgres …")
            suite.postgres = pgserver.get_server(home / "pg", cleanup_mode="stop")
            base_env["REELMILL_DATABASE_URL"] = (
                f"postgresql+asyncpg://postgres@/postgres?host={home / 'pg'}"
            )
        if settings.up_storage == "seaweedfs":
            base_env.update(_start_seaweedfs(suite, base_env.get("REELMILL_S3_BUCKET"), echo))
            # URLs are signed for the endpoint itself: where this machine reaches it.
            base_env.pop("REELMILL_S3_PUBLIC_URL", None)
        targets: dict[str, str] = {}
        for name, module in [*available_services(), GATEWAY]:
            address = listen if name == "gateway" else f"127.0.0.1:{free_port()}"
            env = {
                **base_env,
                "REELMILL_LISTEN": address,
                **{f"REELMILL_{k.upper()}_TARGET": v for k, v in targets.items()},
            }
            log_path = home / "logs" / f"{name}.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            child = Child(name, process, address, log_path)
            suite.children.append(child)
            echo(f"starting {name} (pid {process.pid}) on {address} …")
            wait_serving(address, child)
            targets[name] = address
        settings.credentials_file.write_text(json.dumps({"gateway": listen, "token": token}))
        settings.credentials_file.chmod(0o600)
        yield suite
    finally:
        suite.stop()


def _start_seaweedfs(suite: Suite, bucket: str | None, echo: Any) -> dict[str, str]:
    """Starts the embedded S3 server on ``$REELMILL_HOME/seaweedfs`` (same ports and keys as
    the last run there); the storage settings that point every process at it."""
    from reelmill.cli.seaweedfs import SeaweedFS

    weed = SeaweedFS(suite.home / "seaweedfs")
    echo(f"starting embedded SeaweedFS (S3 at {weed.server.url}) …")
    weed.start()
    suite.seaweedfs = weed
    return weed.server.env(bucket or "reelmill")


def serve_forever(suite: Suite) -> int:
    stop = {"signal": 0}

    def handler(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["signal"]:
        dead = suite.dead_child()
        if dead is not None:
            print(
                f"{dead.name} exited with {dead.process.returncode}; stopping the suite\n"
                + tail(dead.log_path),
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)
    print("stopping …")
    return 0
