"""Client channels to internal services.

A target is either a gRPC URI (``dns:///transcode.reelmill.svc:50051``, balanced across every
address with ``round_robin``) or a comma-separated static list of ``host:port`` (for local runs
with several replicas), which becomes an ``ipv4:`` target balanced the same way.

Every channel carries the gateway's internal credentials (``runtime.internal_auth``): the
internal token on every call, and the client certificate when the mode is mTLS; so every stub
made on it is authenticated without doing anything.
"""

from __future__ import annotations

import json

import grpc

from runtime.internal_auth import InternalAuth
from runtime.telemetry import client_interceptors

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                # Only UNAVAILABLE before anything was sent is safe to retry for every method.
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

#: Bounds of the channel's reconnect backoff while a service is unreachable (gRPC's defaults are
#: 1 s growing to 120 s). Stage retries back off longer than RECONNECT_MAX_MS, so a stage's next
#: attempt meets a channel that has tried again.
RECONNECT_INITIAL_MS = 250
RECONNECT_MAX_MS = 2_000


def normalize_target(target: str) -> str:
    if "://" in target or target.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return target
    hosts = [h.strip() for h in target.split(",") if h.strip()]
    if len(hosts) > 1 and all(h.split(":")[0].replace(".", "").isdigit() for h in hosts):
        return "ipv4:" + ",".join(hosts)
    if len(hosts) > 1:
        raise ValueError(f"a static target list must be IPv4 host:port pairs, got {target!r}")
    return f"dns:///{hosts[0]}"


def internal_channel(
    target: str, auth: InternalAuth, *, max_message_mib: int = 8
) -> grpc.aio.Channel:
    limit = max_message_mib * 1024 * 1024
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # A restarted service is reached within about two seconds: gRPC's default reconnect
        # backoff grows to 120 s while a service is down, so after a long outage its channel
        # could fail every call for minutes after the service came back.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        *auth.channel_options(),
    ]
    interceptors = [*client_interceptors(), *auth.client_interceptors()]
    credentials = auth.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(
            normalize_target(target), options=options, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        normalize_target(target), credentials, options=options, interceptors=interceptors
    )
