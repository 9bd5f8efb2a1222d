"""The hostile corpus of WebhookService (real gateway and ingest processes): webhook URLs that
point inside (loopback, private, link-local, cloud metadata, their IPv6 and encoded forms,
names that resolve there), credentials, odd schemes and ports, bad event types, ids, overlaps,
filters and page tokens. Each gets its precise status and reason; nothing is registered, no
delivery is queued, no connection is made to the trap behind the loopback URLs, and the gateway
still serves afterwards. No case needs the outside network (names resolve from /etc/hosts)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from reelmill.v1 import webhook_service_pb2 as pb
from reelmill.v1 import webhook_service_pb2_grpc
from runtime.errors import error_info
from tests.hostile.conftest import Hostile
from tests.suite import token
from tests.webhook_receiver import Receiver, running_receiver

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OWNER = "hostile-webhooks"


@dataclass(frozen=True)
class Case:
    method: str
    #: Builds the request (given the trap's port, for URLs that would reach it).
    request: Callable[[int], Any]
    code: grpc.StatusCode
    reason: str
    text: str = ""


def create(url: str, **fields: Any) -> Callable[[int], pb.CreateWebhookEndpointRequest]:
    return lambda port: pb.CreateWebhookEndpointRequest(url=url.format(port=port), **fields)


def refused(url: str, reason: str = "URL_NOT_ALLOWED", text: str = "") -> Case:
    return Case("CreateWebhookEndpoint", create(url), INVALID, reason, text)


CASES: dict[str, Case] = {
    # Addresses inside, literally. Port 8080 is allowed, so only the address check refuses them.
    "loopback": refused("http://127.0.0.1:8080/hook", text="loopback"),
    "loopback_other": refused("http://127.1.2.3:8080/hook", text="loopback"),
    "loopback_v6": refused("http://[::1]:8080/hook", text="loopback"),
    "mapped_v6": refused("http://[::ffff:127.0.0.1]:8080/hook", text="IPv4-mapped loopback"),
    "nat64": refused("http://[64:ff9b::7f00:1]:8080/hook", text="NAT64 loopback"),
    "private_10": refused("https://10.0.0.1/hook", text="private"),
    "private_192": refused("https://192.168.1.1/hook", text="private"),
    "private_172": refused("https://172.16.0.1/hook", text="private"),
    "cgnat": refused("https://100.64.0.1/hook", text="CGNAT"),
    "link_local": refused("http://169.254.1.1/hook", text="link-local"),
    "metadata": refused("http://169.254.169.254/latest/meta-data/", text="cloud metadata"),
    "metadata_v6": refused("http://[fd00:ec2::254]/latest/meta-data/", text="cloud metadata"),
    "unique_local_v6": refused("http://[fd12:3456::1]/hook", text="unique-local"),
    "unspecified": refused("http://0.0.0.0:8080/hook", text="unspecified"),
    "multicast": refused("http://224.0.0.1/hook", text="multicast"),
    # Names and encodings that resolve inside (from /etc/hosts or the resolver's own parsing).
    "localhost": refused("http://localhost:8080/hook", text="resolves to a non-public"),
    "decimal_ip": refused("http://2130706433:8080/hook", text="loopback"),
    "hex_ip": refused("http://0x7f000001:8080/hook", text="loopback"),
    # What a URL says of itself.
    "trap_port": refused("http://127.0.0.1:{port}/hook", "URL_PORT_NOT_ALLOWED", "port"),
    "ssh_port": refused("https://127.0.0.1:22/hook", "URL_PORT_NOT_ALLOWED", "port 22"),
    "credentials": refused("https://user:pw@127.0.0.1/hook", "URL_CREDENTIALS_NOT_ALLOWED"),
    "file_scheme": refused("file:///etc/passwd", "UNSUPPORTED_URL_SCHEME", "not file:"),
    "gopher_scheme": refused("gopher://127.0.0.1:8080/", "UNSUPPORTED_URL_SCHEME"),
    "no_scheme": refused("127.0.0.1:8080/hook", "UNSUPPORTED_URL_SCHEME"),
    "empty_url": refused("", "INVALID_URL", "required"),
    "no_host": refused("http:///hook", "INVALID_URL"),
    "control_chars": refused("http://127.0.0.1/\r\nX-Injected: 1", "INVALID_URL"),
    "nul": refused("http://exa\x00mple.com/hook", "INVALID_URL"),
    "too_long": refused("https://a.example/" + "x" * 3000, "INVALID_URL", "2048"),
    # The rest of the request.
    "unknown_event_type": Case(
        "CreateWebhookEndpoint",
        create("http://127.0.0.1:8080/", event_types=[99]),
        INVALID,
        "BAD_EVENT_TYPE",
        "99",
    ),
    "unspecified_event_type": Case(
        "CreateWebhookEndpoint",
        create("http://127.0.0.1:8080/", event_types=[pb.WEBHOOK_EVENT_TYPE_UNSPECIFIED]),
        INVALID,
        "BAD_EVENT_TYPE",
    ),
    "long_description": Case(
        "CreateWebhookEndpoint",
        create("http://127.0.0.1:8080/", description="d" * 300),
        INVALID,
        "BAD_DESCRIPTION",
    ),
    "control_description": Case(
        "CreateWebhookEndpoint",
        create("http://127.0.0.1:8080/", description="a\x1b[31mred"),
        INVALID,
        "BAD_DESCRIPTION",
    ),
    "delete_bad_id": Case(
        "DeleteWebhookEndpoint",
        lambda _: pb.DeleteWebhookEndpointRequest(endpoint_id="../../etc"),
        INVALID,
        "BAD_ID",
    ),
    "delete_missing": Case(
        "DeleteWebhookEndpoint",
        lambda _: pb.DeleteWebhookEndpointRequest(endpoint_id=str(uuid.uuid4())),
        NOT_FOUND,
        "WEBHOOK_ENDPOINT_NOT_FOUND",
    ),
    "rotate_negative_overlap": Case(
        "RotateWebhookSecret",
        lambda _: pb.RotateWebhookSecretRequest(
            endpoint_id=str(uuid.uuid4()), overlap=duration_pb2.Duration(seconds=-1)
        ),
        INVALID,
        "BAD_OVERLAP",
    ),
    "rotate_long_overlap": Case(
        "RotateWebhookSecret",
        lambda _: pb.RotateWebhookSecretRequest(
            endpoint_id=str(uuid.uuid4()), overlap=duration_pb2.Duration(seconds=8 * 86400)
        ),
        INVALID,
        "BAD_OVERLAP",
        "7 days",
    ),
    "rotate_missing": Case(
        "RotateWebhookSecret",
        lambda _: pb.RotateWebhookSecretRequest(endpoint_id=str(uuid.uuid4())),
        NOT_FOUND,
        "WEBHOOK_ENDPOINT_NOT_FOUND",
    ),
    "deliveries_unspecified_state": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(states=[0]),
        INVALID,
        "BAD_FILTER",
    ),
    "deliveries_unknown_state": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(states=[42]),
        INVALID,
        "BAD_FILTER",
    ),
    "deliveries_negative_page": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(page_size=-5),
        INVALID,
        "BAD_PAGE_SIZE",
    ),
    "deliveries_forged_token": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(page_token="eyJ0IjogIm5vIn0"),
        INVALID,
        "BAD_PAGE_TOKEN",
    ),
    "deliveries_bad_job": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(job_id="'; DROP TABLE jobs; --"),
        INVALID,
        "BAD_ID",
    ),
    "deliveries_missing_endpoint": Case(
        "ListWebhookDeliveries",
        lambda _: pb.ListWebhookDeliveriesRequest(endpoint_id=str(uuid.uuid4())),
        NOT_FOUND,
        "WEBHOOK_ENDPOINT_NOT_FOUND",
    ),
    "endpoints_forged_token": Case(
        "ListWebhookEndpoints",
        lambda _: pb.ListWebhookEndpointsRequest(page_token="!!!"),
        INVALID,
        "BAD_PAGE_TOKEN",
    ),
    "redeliver_bad_id": Case(
        "RedeliverWebhook",
        lambda _: pb.RedeliverWebhookRequest(delivery_id=str(uuid.uuid4())),
        INVALID,
        "BAD_ID",
        "msg_",
    ),
    "redeliver_missing": Case(
        "RedeliverWebhook",
        lambda _: pb.RedeliverWebhookRequest(delivery_id="msg_" + uuid.uuid4().hex),
        NOT_FOUND,
        "WEBHOOK_DELIVERY_NOT_FOUND",
    ),
}


@pytest.fixture(scope="module")
def trap() -> Iterator[Receiver]:
    """A local HTTP server no refused URL may ever reach."""
    yield from running_receiver()


def call(hostile: Hostile, method: str, request: Any) -> Any:
    with grpc.insecure_channel(hostile.address) as channel:
        stub = webhook_service_pb2_grpc.WebhookServiceStub(channel)
        return getattr(stub, method)(
            request, metadata=[("authorization", f"Bearer {token(OWNER)}")], timeout=30
        )


def test_the_corpus_covers_every_method() -> None:
    methods = {case.method for case in CASES.values()}
    assert methods == set(pb.DESCRIPTOR.services_by_name["WebhookService"].methods_by_name)
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_webhook_request(hostile: Hostile, trap: Receiver, name: str) -> None:
    case = CASES[name]
    with pytest.raises(grpc.RpcError) as caught:
        call(hostile, case.method, case.request(trap.port))
    error = caught.value
    details = error.details() or ""  # type: ignore[attr-defined]
    assert error.code() == case.code, (error.code(), details)  # type: ignore[attr-defined]
    info = error_info(error)
    assert (info.reason if info else "") == case.reason, details
    assert case.text in details, details
    assert "Traceback" not in details and "sqlalchemy" not in details.lower()


def test_nothing_was_registered_or_reached(hostile: Hostile, trap: Receiver) -> None:
    """Runs after the corpus: no endpoint exists, no request reached the trap, and the gateway
    serves and logged no internal error."""
    from grpc_health.v1 import health_pb2

    listed = call(hostile, "ListWebhookEndpoints", pb.ListWebhookEndpointsRequest())
    assert list(listed.endpoints) == []
    deliveries = call(hostile, "ListWebhookDeliveries", pb.ListWebhookDeliveriesRequest())
    assert list(deliveries.deliveries) == []
    assert trap.received == []
    assert set(hostile.serving().values()) == {health_pb2.HealthCheckResponse.SERVING}
    logs = hostile.logs()
    assert "unhandled error" not in logs
    assert '"levelname": "ERROR"' not in logs and '"level": "ERROR"' not in logs
