"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that checks every delivery's
Standard Webhooks signature with its own few lines (``hmac`` over ``id.timestamp.body``, not
reelmill's code) and records what it got.

Each path behaves as the test sets it (``behave``): answer 200, answer a status (a list of
statuses is answered in turn, per webhook-id, the last one repeating), or hang until released.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO


def receiver_verifies(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    """The receiver's own check: some ``v1`` signature in the header is the HMAC-SHA256, keyed
    with one of ``secrets`` (base64 after ``whsec_``), of ``{id}.{timestamp}.{body}``, and the
    timestamp is within five minutes."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    content = msg_id.encode() + b"." + stamp.encode() + b"." + body
    offered = [
        part.split(",", 1)[1]
        for part in headers.get("webhook-signature", "").split()
        if part.startswith("v1,")
    ]
    for secret in secrets:
        key = base64.b64decode(secret.split("_", 1)[1])
        mine = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(mine, theirs) for theirs in offered):
            return True
    return False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    #: Seconds since the epoch, when the request's body had arrived.
    at: float
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Behaviour:
    statuses: list[int] = field(default_factory=lambda: [200])
    hang: threading.Event | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    def __init__(self, log: TextIO | None = None) -> None:
        #: When set, every request is also written to it as a JSON line (arrival, path,
        #: headers, body): how another process reads what this one received.
        self.log = log
        self.received: list[Received] = []
        self.secrets: dict[str, list[str]] = {}
        self.behaviours: dict[str, Behaviour] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        #: Requests being held by a hanging path right now.
        self.hanging = 0
        #: Requests answered, by path.
        self.answered: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer's head and body are two writes: with Nagle the body waits for the
            # sender's delayed ACK (40 ms on Linux), which a real server would not add.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.handle(self, headers, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def behave(self, path: str, behaviour: Behaviour, secrets: list[str] | None = None) -> None:
        self.behaviours[path] = behaviour
        if secrets is not None:
            self.secrets[path] = secrets

    def handle(self, request: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes) -> None:
        """Records the request as it arrives, hangs if told to, then answers."""
        path = request.path
        behaviour = self.behaviours.get(path, Behaviour())
        verified = receiver_verifies(self.secrets.get(path, []), headers, body)
        with self._lock:
            key = (path, headers.get("webhook-id", ""))
            turn = self._seen.get(key, 0)
            self._seen[key] = turn + 1
            status = behaviour.statuses[min(turn, len(behaviour.statuses) - 1)]
            got = Received(path, headers, body, verified, time.time(), status)
            self.received.append(got)
            if self.log is not None:
                line = {"at": got.at, "path": path, "headers": headers, "body": body.decode()}
                self.log.write(json.dumps(line) + "\n")
                self.log.flush()
        if behaviour.hang is not None:
            with self._lock:
                self.hanging += 1
            behaviour.hang.wait()
            with self._lock:
                self.hanging -= 1
        try:
            request.send_response(status)
            for name, value in behaviour.headers.items():
                request.send_header(name, value)
            request.send_header("content-length", "2")
            request.end_headers()
            request.wfile.write(b"ok")
            request.wfile.flush()
        except OSError:
            return  # the sender gave up (timeout, or it died) before the answer
        with self._lock:
            self.answered[path] = self.answered.get(path, 0) + 1

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver: condition not met; got {len(self.received)}")
            time.sleep(0.05)

    def close(self) -> None:
        for behaviour in self.behaviours.values():
            if behaviour.hang is not None:
                behaviour.hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


def main() -> None:
    """``python -m tests.webhook_receiver LOG``: a receiver in a process of its own (for
    benchmarks: its timing is not the load generator's); prints its port, answers 200 to
    everything, writes every request to LOG, runs until killed."""
    import sys

    with open(sys.argv[1], "a") as log:
        receiver = Receiver(log)
        print(receiver.port, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
