"""Runs reelmill's processes as real subprocesses for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reelmill.v1 import pipeline_pb2
from tests.servers import free_port, stop_process

JWT_SECRET = "test-secret-" + "x" * 40
#: What the gateway sends and the services check (REELMILL_INTERNAL_TOKEN).
INTERNAL_TOKEN = "internal-test-token-" + "y" * 40
#: A spec that runs only the probe stage: for tests about jobs, not media.
PROBE_ONLY = pipeline_pb2.PipelineSpec(
    transcode=pipeline_pb2.TranscodeSpec(disabled=True),
    audio=pipeline_pb2.AudioSpec(disabled=True),
    scenes=pipeline_pb2.ScenesSpec(disabled=True),
)
ROOT = Path(__file__).resolve().parent.parent
#: The internal services, in start order (each a ``services.<name>`` module).
SERVICES = ("ingest", "transcode", "transcribe", "metadata", "vision")


def token(
    subject: str | None = None, *, ttl: int = 3600, secret: str = JWT_SECRET, **overrides: object
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject or f"user-{uuid.uuid4().hex[:8]}",
        "iss": "reelmill",
        "aud": "reelmill",
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    claims.update(overrides)
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path
    module: str = ""
    #: The environment it was started with (besides the inherited one), to restart it alike.
    env: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_serving(process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(process.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.proc.poll() is not None:
                code = process.proc.returncode
                tail = process.output()[-4000:]
                raise RuntimeError(f"{process.name} exited with {code}:\n{tail}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{process.name} not serving:\n{process.output()[-4000:]}")


def start(
    name: str, module: str, env: dict[str, str], logs: Path, *, address: str | None = None
) -> Process:
    """Starts ``module`` and waits until it serves; on ``address`` (a restart) or a free port.
    The log is appended to, so a restarted process keeps its predecessor's lines."""
    port = free_port() if address is None else int(address.rsplit(":", 1)[1])
    address = f"127.0.0.1:{port}"
    log = logs / f"{name}-{port}.log"
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "REELMILL_LISTEN": address,
                "REELMILL_HEALTH_INTERVAL_SECONDS": "0.5",
            },
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    process = Process(name, proc, address, log, module, env)
    try:
        wait_serving(process)
    except BaseException:
        stop_process(proc, timeout=5)
        raise
    return process


@dataclass
class Suite:
    env: dict[str, str]
    logs: Path
    processes: dict[str, list[Process]] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)

    @property
    def gateway(self) -> str:
        return self.processes["gateway"][0].address

    def add(self, name: str, module: str, extra: dict[str, str] | None = None) -> Process:
        env = dict(self.env)
        for service, processes in self.processes.items():
            env[f"REELMILL_{service.upper()}_TARGET"] = ",".join(p.address for p in processes)
        env.update(extra or {})
        process = start(name, module, env, self.logs)
        self.processes.setdefault(name, []).append(process)
        self._stack.callback(stop_process, process.proc)
        return process

    def kill(self, process: Process) -> None:
        """SIGKILL: no shutdown handler runs, in-flight calls and writes are cut short."""
        process.proc.kill()
        process.proc.wait()

    def restart(self, process: Process) -> Process:
        """Starts ``process`` again (it must have exited) on the same address, with the same
        environment; it takes the old one's place in ``processes``."""
        assert process.proc.poll() is not None, f"{process.name} is still running"
        again = start(process.name, process.module, process.env, self.logs, address=process.address)
        group = self.processes[process.name]
        group[group.index(process)] = again
        self._stack.callback(stop_process, again.proc)
        return again

    def stop(self) -> None:
        self._stack.close()


@contextmanager
def run_suite(
    env: dict[str, str],
    gateways: int = 1,
    replicas: int = 1,
    extra: Callable[[str], Mapping[str, str]] | None = None,
    services: Sequence[str] = SERVICES,
) -> Iterator[Suite]:
    """Every process as a subprocess: ``replicas`` of each internal service in ``services``
    (the gateways balance over them round-robin) and ``gateways`` gateways; ``extra(name)`` is
    more environment for each process (e.g. a port of its own)."""
    logs = Path(tempfile.mkdtemp(prefix="reelmill-logs-"))
    scratch = Path(tempfile.mkdtemp(prefix="reelmill-scratch-"))
    suite = Suite(
        env={
            "REELMILL_JWT_SECRET": JWT_SECRET,
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_SCRATCH_DIR": str(scratch),
            "REELMILL_LEASE_SECONDS": "6",
            "REELMILL_POLL_SECONDS": "1",
            "REELMILL_PURGE_DELAY_SECONDS": "1",
            "REELMILL_PURGE_INTERVAL_SECONDS": "0.5",
            "REELMILL_RETRY_INITIAL_BACKOFF_SECONDS": "0.5",
            "REELMILL_RETRY_MAX_BACKOFF_SECONDS": "2",
            **env,
        },
        logs=logs,
    )

    def more(name: str) -> dict[str, str]:
        return dict(extra(name)) if extra is not None else {}

    try:
        for _ in range(replicas):
            for name in services:
                suite.add(name, f"services.{name}", more(name))
        for _ in range(gateways):
            suite.add("gateway", "gateway", more("gateway"))
        yield suite
    finally:
        suite.stop()
        shutil.rmtree(logs, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
