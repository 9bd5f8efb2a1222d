"""Internal services accept calls only from the gateway: with the shared token, or with a client
certificate from the configured CA. Health and reflection stay open for probes and tooling.

The services run as real processes (``python -m services.metadata``) or as real grpc.aio servers
on 127.0.0.1, called through the gateway's own channel factory (``internal_channel``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reelmill.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    metadata_service_pb2,
    metadata_service_pb2_grpc,
    pipeline_pb2,
)
from runtime.channels import internal_channel
from runtime.errors import InvalidArgument, error_info
from runtime.internal_auth import InternalAuth, TlsMaterial
from runtime.storage import open_store
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings
from services.metadata.settings import MetadataSettings
from tests.certs import CertificateAuthority, Issued
from tests.inprocess import serve_at
from tests.servers import free_port, stop_process
from tests.suite import INTERNAL_TOKEN, ROOT, Process, start, wait_serving

WRONG_TOKEN = "not-the-internal-token-" + "z" * 40
#: A call that reaches the servicer and costs nothing (a disabled spec answers empty).
NOTHING_TO_DO = metadata_service_pb2.GenerateMetadataRequest(
    spec=pipeline_pb2.MetadataSpec(disabled=True)
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any REELMILL_* setting, plus ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")},
        **extra,
    }


def token_auth(token: str) -> InternalAuth:
    return InternalAuth(mode="token", token=token)


def reason(error: grpc.aio.AioRpcError) -> str | None:
    info = error_info(error)
    return info.reason if info is not None else None


async def generate(channel: grpc.aio.Channel) -> metadata_service_pb2.GenerateMetadataResponse:
    stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
    return await stub.GenerateMetadata(NOTHING_TO_DO, timeout=10)


# -- token ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metadata_with_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``python -m services.metadata`` with the internal token, as ``reelmill up`` runs it.
    ``start`` waits for health over a plain channel with no token: health is open."""
    work = tmp_path_factory.mktemp("metadata")
    env = clean_env(
        REELMILL_INTERNAL_TOKEN=INTERNAL_TOKEN,
        REELMILL_STORAGE_DIR=str(work / "objects"),
        REELMILL_SCRATCH_DIR=str(work / "scratch"),
    )
    process = start("metadata", "services.metadata", env, work)
    try:
        yield process
    finally:
        stop_process(process.proc)


async def test_a_call_without_the_token_is_unauthenticated(metadata_with_token: Process) -> None:
    async with grpc.aio.insecure_channel(metadata_with_token.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "INTERNAL_TOKEN_MISSING"


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", f"Bearer {WRONG_TOKEN}"),),
        (("authorization", f"Bearer {INTERNAL_TOKEN[:-1]}"),),
        (("authorization", f"Basic {INTERNAL_TOKEN}"),),
        (("authorization", INTERNAL_TOKEN),),
    ],
    ids=["other-token", "prefix", "other-scheme", "no-scheme"],
)
async def test_a_call_with_a_wrong_token_is_unauthenticated(
    metadata_with_token: Process, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(metadata_with_token.address) as channel:
        stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateMetadata(NOTHING_TO_DO, timeout=10, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "INTERNAL_TOKEN_INVALID"


async def test_the_gateways_channel_with_another_token_is_refused(
    metadata_with_token: Process,
) -> None:
    async with internal_channel(metadata_with_token.address, token_auth(WRONG_TOKEN)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "INTERNAL_TOKEN_INVALID"


async def test_the_gateways_channel_with_the_token_is_served(metadata_with_token: Process) -> None:
    async with internal_channel(metadata_with_token.address, token_auth(INTERNAL_TOKEN)) as channel:
        response = await generate(channel)
    assert response == metadata_service_pb2.GenerateMetadataResponse()


async def test_health_and_reflection_answer_without_the_token(
    metadata_with_token: Process,
) -> None:
    async with grpc.aio.insecure_channel(metadata_with_token.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "reelmill.liveness", "reelmill.v1.MetadataService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = [s.name async for r in call for s in r.list_services_response.service]
    assert "reelmill.v1.MetadataService" in names


def run_until_exit(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.metadata"],
        cwd=ROOT,
        env={
            **env,
            "REELMILL_LISTEN": f"127.0.0.1:{free_port()}",
            "REELMILL_STORAGE_DIR": str(tmp_path / "objects"),
            "REELMILL_LOG_FORMAT": "console",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "REELMILL_INTERNAL_TOKEN is required"),
        ({"REELMILL_INTERNAL_TOKEN": "short"}, "REELMILL_INTERNAL_TOKEN: Value error, must be"),
        ({"REELMILL_INTERNAL_AUTH": "mtls"}, "REELMILL_INTERNAL_AUTH=mtls needs"),
        ({"REELMILL_INTERNAL_AUTH": "open"}, "REELMILL_INTERNAL_AUTH"),
    ],
    ids=["no-token", "short-token", "mtls-without-files", "unknown-mode"],
)
def test_a_service_without_internal_auth_refuses_to_start(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    result = run_until_exit(clean_env(**env), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stdout + result.stderr


def test_none_must_be_chosen_and_then_serves_anyone(tmp_path: Path) -> None:
    env = clean_env(
        REELMILL_INTERNAL_AUTH="none",
        REELMILL_STORAGE_DIR=str(tmp_path / "objects"),
        REELMILL_LOG_FORMAT="console",
    )
    process = start("metadata", "services.metadata", env, tmp_path)
    try:

        async def call() -> metadata_service_pb2.GenerateMetadataResponse:
            async with grpc.aio.insecure_channel(process.address) as channel:
                return await generate(channel)

        assert asyncio.run(call()) == metadata_service_pb2.GenerateMetadataResponse()
    finally:
        stop_process(process.proc)
    assert "internal authentication is off" in process.output()


# -- every call shape, in process ----------------------------------------------------------------


@pytest.fixture
async def ingest_with_token(tmp_path: Path) -> AsyncIterator[str]:
    settings = IngestSettings(storage_dir=tmp_path / "objects", scratch_dir=tmp_path / "scratch")
    spec = build_spec(settings, open_store(settings))
    async with serve_at(spec, settings, token_auth(INTERNAL_TOKEN)) as address:
        yield address


async def ingest_calls(channel: grpc.aio.Channel) -> dict[str, grpc.StatusCode]:
    """The status of one call of each shape: unary, client-streaming, server-streaming."""
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
    codes: dict[str, grpc.StatusCode] = {}
    try:
        await stub.ProbeVideo(ingest_service_pb2.ProbeVideoRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        codes["ProbeVideo"] = exc.code()
    try:
        await stub.IngestVideo(iter([ingest_service_pb2.IngestVideoRequest()]), timeout=10)
    except grpc.aio.AioRpcError as exc:
        codes["IngestVideo"] = exc.code()
    try:
        async for _ in stub.ImportUrl(ingest_service_pb2.ImportUrlRequest(), timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        codes["ImportUrl"] = exc.code()
    return codes


async def test_every_call_shape_needs_the_token(ingest_with_token: str) -> None:
    async with grpc.aio.insecure_channel(ingest_with_token) as channel:
        refused = await ingest_calls(channel)
    assert refused == dict.fromkeys(
        ("ProbeVideo", "IngestVideo", "ImportUrl"), grpc.StatusCode.UNAUTHENTICATED
    )
    # Through the gateway's channel every shape reaches the servicer (which refuses the
    # empty requests on their merits).
    async with internal_channel(ingest_with_token, token_auth(INTERNAL_TOKEN)) as channel:
        served = await ingest_calls(channel)
    assert served == dict.fromkeys(
        ("ProbeVideo", "IngestVideo", "ImportUrl"), grpc.StatusCode.INVALID_ARGUMENT
    )


# -- mTLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    gateway: Issued
    other_ca: CertificateAuthority
    stranger: Issued

    def gateway_auth(self, token: str | None = None) -> InternalAuth:
        return InternalAuth(
            mode="mtls",
            token=token,
            tls=TlsMaterial(
                cert_chain=self.gateway.cert.read_bytes(),
                private_key=self.gateway.key.read_bytes(),
                ca=self.ca.cert_file.read_bytes(),
            ),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "reelmill")
    other = CertificateAuthority(directory, "other")
    return Pki(
        ca=ca,
        server=ca.issue("metadata", server=True),
        gateway=ca.issue("gateway", client=True),
        other_ca=other,
        stranger=other.issue("gateway", client=True),
    )


@dataclass(frozen=True)
class TlsService:
    process: Process
    health: str


@pytest.fixture(scope="module")
def metadata_with_mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsService]:
    """``python -m services.metadata`` with REELMILL_INTERNAL_AUTH=mtls and a plain-text health
    port (kubelet's gRPC probes cannot speak TLS)."""
    work = tmp_path_factory.mktemp("metadata-mtls")
    health = f"127.0.0.1:{free_port()}"
    env = clean_env(
        REELMILL_INTERNAL_AUTH="mtls",
        REELMILL_TLS_CERT_FILE=str(pki.server.cert),
        REELMILL_TLS_KEY_FILE=str(pki.server.key),
        REELMILL_TLS_CA_FILE=str(pki.ca.cert_file),
        REELMILL_HEALTH_LISTEN=health,
        REELMILL_STORAGE_DIR=str(work / "objects"),
        REELMILL_LOG_FORMAT="console",
    )
    address = f"127.0.0.1:{free_port()}"
    log = work / "metadata.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.metadata"],
            cwd=ROOT,
            env={**env, "REELMILL_LISTEN": address, "REELMILL_HEALTH_INTERVAL_SECONDS": "0.5"},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    process = Process("metadata", proc, address, log)
    try:
        wait_serving(Process("metadata", proc, health, log))
        yield TlsService(process=process, health=health)
    finally:
        stop_process(proc)


async def test_mtls_the_gateways_channel_with_its_certificate_is_served(
    metadata_with_mtls: TlsService, pki: Pki
) -> None:
    async with internal_channel(metadata_with_mtls.process.address, pki.gateway_auth()) as channel:
        response = await generate(channel)
    assert response == metadata_service_pb2.GenerateMetadataResponse()


def tls_channel(address: str, pki: Pki, client: Issued | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_file.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(address, credentials)


@pytest.mark.parametrize("client", ["no-certificate", "other-ca", "plain-text"])
async def test_mtls_refuses_a_client_at_the_handshake(
    metadata_with_mtls: TlsService, pki: Pki, client: str
) -> None:
    address = metadata_with_mtls.process.address
    channel = {
        "no-certificate": lambda: tls_channel(address, pki, None),
        "other-ca": lambda: tls_channel(address, pki, pki.stranger),
        "plain-text": lambda: grpc.aio.insecure_channel(address),
    }[client]()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(channel)
        # Not even health: nothing is served before the handshake.
        with pytest.raises(grpc.aio.AioRpcError) as health_caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health_caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_health_port_is_plain_text_and_serves_only_health(
    metadata_with_mtls: TlsService,
) -> None:
    async with grpc.aio.insecure_channel(metadata_with_mtls.health) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="reelmill.v1.MetadataService"), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(channel)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_mtls_with_a_token_checks_both(pki: Pki, tmp_path: Path) -> None:
    settings = IngestSettings(storage_dir=tmp_path / "objects", scratch_dir=tmp_path / "scratch")
    spec = build_spec(settings, open_store(settings))
    server_auth = InternalAuth(
        mode="mtls",
        token=INTERNAL_TOKEN,
        tls=TlsMaterial(
            cert_chain=pki.server.cert.read_bytes(),
            private_key=pki.server.key.read_bytes(),
            ca=pki.ca.cert_file.read_bytes(),
        ),
    )
    async with serve_at(spec, settings, server_auth) as address:
        async with internal_channel(address, pki.gateway_auth()) as channel:
            assert await ingest_calls(channel) == dict.fromkeys(
                ("ProbeVideo", "IngestVideo", "ImportUrl"), grpc.StatusCode.UNAUTHENTICATED
            )
        async with internal_channel(address, pki.gateway_auth(INTERNAL_TOKEN)) as channel:
            assert await ingest_calls(channel) == dict.fromkeys(
                ("ProbeVideo", "IngestVideo", "ImportUrl"), grpc.StatusCode.INVALID_ARGUMENT
            )


# -- settings ------------------------------------------------------------------------------------


def test_settings_read_the_certificates_once_and_check_them(pki: Pki, tmp_path: Path) -> None:
    files = {
        "tls_cert_file": pki.gateway.cert,
        "tls_key_file": pki.gateway.key,
        "tls_ca_file": pki.ca.cert_file,
    }
    auth = InternalAuth.from_settings(MetadataSettings(internal_auth="mtls", **files))
    assert auth.tls is not None and auth.tls.ca == pki.ca.cert_file.read_bytes()
    assert auth.token is None

    not_pem = tmp_path / "key.der"
    not_pem.write_bytes(b"\x30\x82")
    for broken, says in (
        ({**files, "tls_key_file": tmp_path / "missing.pem"}, "REELMILL_TLS_KEY_FILE: cannot read"),
        ({**files, "tls_ca_file": not_pem}, "REELMILL_TLS_CA_FILE: " + str(not_pem)),
    ):
        with pytest.raises(InvalidArgument, match=says):
            InternalAuth.from_settings(MetadataSettings(internal_auth="mtls", **broken))


def test_an_empty_token_counts_as_none() -> None:
    with pytest.raises(InvalidArgument, match="REELMILL_INTERNAL_TOKEN is required"):
        InternalAuth.from_settings(MetadataSettings(internal_token=""))
