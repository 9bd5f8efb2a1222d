"""Internal services accept calls only from the gateway.

``REELMILL_INTERNAL_AUTH`` picks how they tell:

- ``token`` (the default): the gateway sends ``authorization: Bearer <REELMILL_INTERNAL_TOKEN>``
  on every call (a client interceptor on its internal channels); each service compares it in
  constant time (a server interceptor). Missing or wrong → UNAUTHENTICATED
  (``INTERNAL_TOKEN_MISSING`` / ``INTERNAL_TOKEN_INVALID``). No token configured → the process
  refuses to start.
- ``mtls``: the services listen with TLS and require a client certificate signed by
  ``REELMILL_TLS_CA_FILE``; the gateway presents its own (``REELMILL_TLS_CERT_FILE`` /
  ``REELMILL_TLS_KEY_FILE``) and checks theirs against the same CA. A client without one, or with
  one from another CA, fails the handshake. When a token is set too, it is sent and checked as
  well.
- ``none``: anyone who can connect may call; only when chosen explicitly, and logged.

Health and reflection stay open in every mode (probes and tooling); with mTLS, kubelet's probes
(which cannot speak TLS) use ``REELMILL_HEALTH_LISTEN``, a plain-text port serving health only.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime.errors import Handler, InvalidArgument, Unauthenticated, to_status, wrap_handler
from runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
#: Methods every caller may use, whatever the mode.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes, read once at start (rotating certificates means restarting the process)."""

    cert_chain: bytes
    private_key: bytes
    ca: bytes


@dataclass(frozen=True)
class InternalAuth:
    """How the gateway proves itself to the internal services, and how they check it."""

    mode: str
    token: str | None = None
    tls: TlsMaterial | None = None
    server_name: str | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> InternalAuth:
        """The configured auth; raises ``InvalidArgument`` (BAD_SETTINGS) when incomplete."""
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        if settings.internal_auth == "none":
            return cls(mode="none")
        if settings.internal_auth == "token":
            if token is None:
                raise InvalidArgument(
                    "REELMILL_INTERNAL_TOKEN is required (the internal services accept only the "
                    "gateway); or set REELMILL_INTERNAL_AUTH=mtls with certificates, or "
                    "REELMILL_INTERNAL_AUTH=none to run without",
                    reason="BAD_SETTINGS",
                )
            return cls(mode="token", token=token)
        files = {
            "REELMILL_TLS_CERT_FILE": settings.tls_cert_file,
            "REELMILL_TLS_KEY_FILE": settings.tls_key_file,
            "REELMILL_TLS_CA_FILE": settings.tls_ca_file,
        }
        missing = [name for name, path in files.items() if path is None]
        if missing:
            raise InvalidArgument(
                f"REELMILL_INTERNAL_AUTH=mtls needs {', '.join(missing)}", reason="BAD_SETTINGS"
            )
        cert, key, ca = (_read(name, path) for name, path in files.items())
        return cls(
            mode="mtls",
            token=token,
            tls=TlsMaterial(cert_chain=cert, private_key=key, ca=ca),
            server_name=settings.tls_server_name,
        )

    # -- the services' side ------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS requiring a client certificate from the CA (mtls), or None (plain text)."""
        if self.tls is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.tls.private_key, self.tls.cert_chain)],
            root_certificates=self.tls.ca,
            require_client_auth=True,
        )

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenCheckInterceptor(self.token)] if self.token else []

    # -- the gateway's side ------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS with the gateway's client certificate (mtls), or None (plain text)."""
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca,
            private_key=self.tls.private_key,
            certificate_chain=self.tls.cert_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.tls is not None and self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        if not self.token:
            return []
        value = f"Bearer {self.token}"
        return [
            _UnaryUnaryToken(value),
            _UnaryStreamToken(value),
            _StreamUnaryToken(value),
            _StreamStreamToken(value),
        ]


def _read(name: str, path: Path | None) -> bytes:
    assert path is not None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(
            f"{name}: cannot read {path}: {exc.strerror}", reason="BAD_SETTINGS"
        ) from None
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{name}: {path} is not PEM", reason="BAD_SETTINGS")
    return data


# -- server side -------------------------------------------------------------------------------


def _presented(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class TokenCheckInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection unless it carries the internal token."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def check(self, metadata: Any) -> Unauthenticated | None:
        presented = _presented(metadata)
        if presented is None:
            return Unauthenticated(
                "internal services accept only the gateway: no internal token",
                reason="INTERNAL_TOKEN_MISSING",
            )
        if not hmac.compare_digest(presented.encode(), self._expected):
            return Unauthenticated(
                "internal services accept only the gateway: wrong internal token",
                reason="INTERNAL_TOKEN_INVALID",
            )
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        error = self.check(details.invocation_metadata)
        if error is None:
            return handler
        log.warning(
            "refused an internal call", extra={"method": details.method, "reason": error.reason}
        )
        return wrap_handler(
            handler, lambda _: _refuse_unary(error), lambda _: _refuse_stream(error)
        )


def _refuse_unary(error: Unauthenticated) -> Handler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        status = to_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return refuse


def _refuse_stream(error: Unauthenticated) -> Handler:
    async def refuse(
        _request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        status = to_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # never reached: makes this an async generator, like every streaming handler

    return refuse


# -- client side -------------------------------------------------------------------------------


def _with_token(details: grpc.aio.ClientCallDetails, value: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    metadata.add(METADATA_KEY, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _Token:
    """Adds the token to a call's metadata. grpc.aio files a client interceptor under one call
    type only, so each type gets its own small subclass."""

    def __init__(self, value: str) -> None:
        self._value = value

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return _with_token(details, self._value)


class _UnaryUnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryToken(_Token, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStreamToken(_Token, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)
