"""Server reflection v1 (what grpcurl, Postman and buf curl ask for first) beside v1alpha, on
the gateway and on an internal service, as real processes.

The client here speaks v1 by its method path, ``/grpc.reflection.v1.ServerReflection/
ServerReflectionInfo``, with requests encoded by hand from the v1 field numbers (so nothing of
the server's own v1 descriptor is trusted), and rebuilds the services from the file
descriptors it gets back, as a tool does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from tests.conftest import FreshDatabase
from tests.servers import PostgresServer, stop_process
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, Process, start

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _string_field(number: int, value: str) -> bytes:
    """A length-delimited protobuf field (wire type 2); short strings only."""
    data = value.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


#: grpc.reflection.v1.ServerReflectionRequest: file_containing_symbol = 4, list_services = 7.
def list_services() -> bytes:
    return _string_field(7, "")


def file_containing_symbol(symbol: str) -> bytes:
    return _string_field(4, symbol)


def ask(
    address: str, method: str, *requests: bytes
) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream; the responses decoded (v1 and v1alpha messages are the same
    fields, so v1alpha's classes read both)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=lambda raw: raw,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


def services(address: str, method: str = V1_METHOD) -> set[str]:
    (response,) = ask(address, method, list_services())
    return {service.name for service in response.list_services_response.service}


def pool_for(address: str, symbol: str) -> descriptor_pool.DescriptorPool:
    """A fresh pool from the files the server sends for ``symbol`` (with their imports)."""
    (response,) = ask(address, V1_METHOD, file_containing_symbol(symbol))
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in files}
    while pending:  # dependencies first
        for name, proto in list(pending.items()):
            if not set(proto.dependency) & set(pending):
                pool.Add(proto)
                del pending[name]
    return pool


@pytest.fixture(scope="module")
def gateway(
    postgres: PostgresServer,
    fresh_database: FreshDatabase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    database = fresh_database()
    home = tmp_path_factory.mktemp("reflection-gateway")
    process = start(
        "gateway",
        "gateway",
        {
            "REELMILL_DATABASE_URL": postgres.url(database),
            "REELMILL_JWT_SECRET": JWT_SECRET,
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_STORAGE_DIR": str(home / "objects"),
            "REELMILL_SCRATCH_DIR": str(home / "scratch"),
            "REELMILL_INGEST_TARGET": "127.0.0.1:9",  # nothing listens: no job runs here
        },
        home,
    )
    yield process
    stop_process(process.proc)


@pytest.fixture(scope="module")
def transcode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home: Path = tmp_path_factory.mktemp("reflection-transcode")
    process = start(
        "transcode",
        "services.transcode",
        {
            "REELMILL_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "REELMILL_STORAGE_DIR": str(home / "objects"),
            "REELMILL_SCRATCH_DIR": str(home / "scratch"),
        },
        home,
    )
    yield process
    stop_process(process.proc)


REFLECTION = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


def test_v1_lists_the_gateways_services_and_describes_them(gateway: Process) -> None:
    public = {"reelmill.v1.JobService", "reelmill.v1.ApiKeyService", "reelmill.v1.WebhookService"}
    listed = services(gateway.address)
    assert public | REFLECTION | {"grpc.health.v1.Health"} <= listed
    assert services(gateway.address, V1ALPHA_METHOD) == listed
    jobs = pool_for(gateway.address, "reelmill.v1.JobService").FindServiceByName(
        "reelmill.v1.JobService"
    )
    methods = {m.name: m for m in jobs.methods}
    assert {"UploadVideo", "CreateJob", "GetJob", "WatchJob", "DownloadArtifact"} <= set(methods)
    assert methods["GetJob"].output_type.fields_by_name["job"].message_type.full_name == (
        "reelmill.v1.Job"
    )
    assert methods["WatchJob"].server_streaming and methods["UploadVideo"].client_streaming


def test_v1_describes_itself(gateway: Process) -> None:
    """A tool that lists the services then asks for each one's file gets v1's too."""
    v1 = pool_for(gateway.address, "grpc.reflection.v1.ServerReflection").FindServiceByName(
        "grpc.reflection.v1.ServerReflection"
    )
    (method,) = v1.methods
    assert v1.file.name == "grpc/reflection/v1/reflection.proto"
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    request = method.input_type
    assert {f.name: f.number for f in request.fields}["list_services"] == 7
    assert request.fields_by_name["file_containing_symbol"].number == 4


def test_v1_lists_an_internal_services_without_the_internal_token(transcode: Process) -> None:
    listed = services(transcode.address)
    assert {"reelmill.v1.TranscodeService", "grpc.health.v1.Health"} | REFLECTION <= listed
    assert services(transcode.address, V1ALPHA_METHOD) == listed
    pool = pool_for(transcode.address, "reelmill.v1.TranscodeService")
    assert pool.FindServiceByName("reelmill.v1.TranscodeService").methods


def test_v1_answers_an_unknown_symbol_with_not_found(transcode: Process) -> None:
    (response,) = ask(transcode.address, V1_METHOD, file_containing_symbol("no.such.Service"))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
