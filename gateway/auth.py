"""Authentication at the edge: every reelmill.v1 method needs a bearer token.

Tokens are JWTs signed with the configured HS256 secret; ``exp``, ``nbf``, ``iss`` and ``aud``
are checked with a small leeway. The token's subject owns what the caller creates, and every
query is scoped by it. Health and reflection stay open (probes and tooling need them).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import jwt

from runtime.errors import (
    Handler,
    Unauthenticated,
    _wrap_stream,
    _wrap_unary,
    to_status,
    wrap_handler,
)

_owner: contextvars.ContextVar[str] = contextvars.ContextVar("owner")

PROTECTED_PREFIX = "/reelmill.v1."


def current_owner() -> str:
    """The authenticated subject of the call being served."""
    return _owner.get()


class TokenVerifier:
    def __init__(self, secret: str, *, issuer: str, audience: str, leeway: int) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self.secret = secret
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    def verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet", reason="TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}", reason="INVALID_TOKEN") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise Unauthenticated("token has no usable subject", reason="INVALID_TOKEN")
        return subject

    def issue(self, subject: str, *, ttl_seconds: int = 30 * 24 * 3600) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated(
                    "authorization must be 'Bearer <token>'", reason="MISSING_CREDENTIALS"
                )
            return token.strip()
    raise Unauthenticated(
        "missing credentials (authorization metadata)", reason="MISSING_CREDENTIALS"
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX):
            return handler
        try:
            owner: str | Unauthenticated = self.verifier.verify(
                _bearer(details.invocation_metadata)
            )
        except Unauthenticated as exc:
            owner = exc

        def as_owner(behavior: Handler, wrap: Callable[[Handler], Handler]) -> Handler:
            if isinstance(owner, Unauthenticated):
                error = owner

                async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    status = to_status(error)
                    await context.abort(status.code, status.details, status.trailing_metadata)

                return refuse

            def bind(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                _owner.set(owner)
                return behavior(request, context)

            return wrap(bind)

        return wrap_handler(
            handler,
            lambda b: as_owner(b, _wrap_unary),
            lambda b: as_owner(b, _wrap_stream),
        )
