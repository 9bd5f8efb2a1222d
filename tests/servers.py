"""Real servers for tests: an ephemeral Postgres (pgserver) and a loopback S3 server (moto),
each started by PID and stopped the same way."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from minio import Minio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self) -> Minio:
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "REELMILL_STORAGE_BACKEND": "s3",
            "REELMILL_S3_ENDPOINT": self.endpoint,
            "REELMILL_S3_ACCESS_KEY": self.access_key,
            "REELMILL_S3_SECRET_KEY": self.secret_key,
            "REELMILL_S3_BUCKET": bucket,
        }


@contextmanager
def run_moto() -> Iterator[S3Server]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    try:
        wait_for_port(port, proc=proc)
        yield S3Server(endpoint=f"127.0.0.1:{port}")
    finally:
        stop_process(proc)
        log.close()
        os.unlink(log.name)


class Forwarder:
    """A loopback TCP forwarder: ``port`` stays the same while what is behind it changes.
    ``close()`` refuses new connections and cuts the open ones (a dead server, as clients see
    it); ``open(target)`` listens again and forwards to ``target``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self, target: int) -> None:
        forwarder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    upstream = socket.create_connection(("127.0.0.1", target))
                except OSError:
                    return
                with upstream:
                    with forwarder._lock:
                        forwarder._conns.update((self.request, upstream))
                    pump = threading.Thread(
                        target=_pipe, args=(upstream, self.request), daemon=True
                    )
                    pump.start()
                    _pipe(self.request, upstream)
                    pump.join()
                    with forwarder._lock:
                        forwarder._conns.difference_update((self.request, upstream))

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.clear()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@dataclass
class RecordedMoto:
    """A moto server that outlives its own death. moto keeps buckets and objects in memory
    only, so every request is recorded (moto's recorder, ``recording``) and replayed into the
    server that replaces a killed one. Clients reach it through a ``Forwarder`` on a fixed
    port that refuses connections from the kill until the replay is over: they see a server
    that was down for a while and came back with its data, as a persistent one would.

    Replay re-sends the recorded requests in order, so buckets, single-PUT objects and deletes
    come back; a multipart upload in flight at the kill does not (its upload id is new)."""

    forwarder: Forwarder
    recording: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> S3Server:
        return S3Server(endpoint=f"127.0.0.1:{self.forwarder.port}")

    def start(self) -> None:
        port = free_port()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "MOTO_ALLOW_NONEXISTENT_REGION": "true",
                    "MOTO_ENABLE_RECORDING": "true",
                    "MOTO_RECORDER_FILEPATH": str(self.recording),
                },
            )
        wait_for_port(port, proc=self.proc)
        if self.recording.exists() and self.recording.stat().st_size:
            _one_request_a_line(self.recording)
            url = f"http://127.0.0.1:{port}/moto-api/recorder/replay-recording"
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120)
        self.forwarder.open(port)

    def kill(self) -> None:
        assert self.proc is not None
        self.forwarder.close()
        self.proc.kill()
        self.proc.wait()

    def restart(self, *, down: float = 0.0) -> None:
        """SIGKILL; ``down`` seconds later a new server with the recorded state replayed."""
        self.kill()
        time.sleep(down)
        self.start()


def _one_request_a_line(recording: Path) -> None:
    """moto's recorder writes an entry and its newline in two writes when the entry is larger
    than the file buffer, so two requests recorded at once can end up on one line (and the
    replay fails on it): put every entry back on a line of its own, and drop a last one cut
    short by the kill."""
    text = recording.read_text()
    decoder = json.JSONDecoder()
    entries, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            break
        try:
            entry, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break  # cut short by the kill: a request the dead server never answered
        entries.append(json.dumps(entry))
    recording.write_text("".join(f"{entry}\n" for entry in entries))


@contextmanager
def run_recorded_moto(directory: Path) -> Iterator[RecordedMoto]:
    forwarder = Forwarder(free_port())
    moto = RecordedMoto(forwarder, directory / "moto-recording.jsonl", directory / "moto.log")
    moto.start()
    try:
        yield moto
    finally:
        forwarder.close()
        if moto.proc is not None:
            stop_process(moto.proc)


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"


@contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    import pgserver

    data = Path(tempfile.mkdtemp(prefix="reelmill-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield PostgresServer(socket_dir=data)
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def restart_postgres(server: PostgresServer, *, down: float = 0.0) -> None:
    """Stops Postgres (``-m fast``: every session is disconnected at once), leaves it down for
    ``down`` seconds, and starts it again on the same data directory and socket."""
    from pgserver._commands import POSTGRES_BIN_PATH

    data = server.socket_dir
    pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-w"]
    if os.geteuid() == 0:  # pgserver runs Postgres as its own user when we are root
        pg_ctl = ["runuser", "-u", "pgserver", "--", *pg_ctl]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 60}
    subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=True, **quiet)  # type: ignore[call-overload]
    time.sleep(down)
    start = ["-o", '-h ""', "-o", f"-k {data}", "-l", str(data / "log"), "start"]
    subprocess.run([*pg_ctl, *start], check=True, **quiet)  # type: ignore[call-overload]


def entries_under(root: Path, *, files_only: bool = False) -> list[Path]:
    """Everything below ``root`` (nothing when it does not exist). ``os.walk`` rather than
    ``rglob``: a process may be removing a directory while the test looks."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        names = files if files_only else [*dirs, *files]
        found += [Path(directory, name) for name in names]
    return found
