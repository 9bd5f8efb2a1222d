"""Authentication at the edge: every reelmill.v1 method needs credentials.

A caller sends one of:

- ``authorization: Bearer <JWT>``: HS256 (the configured secret), RS256 or ES256 (a configured
  PEM public key, or a JWKS file whose key the token's ``kid`` names). ``exp``, ``nbf``,
  ``iss`` and ``aud`` are checked with a small leeway. The algorithm is taken from the token's
  header only to choose among the configured keys: an HS256 token is checked with the HS256
  secret and nothing else, an RS256/ES256 token with a public key of that algorithm and
  nothing else, so a token "signed" with the public key as an HMAC secret is refused.
- an API key (``rk_…``, see ``gateway.api_keys``), either as ``authorization: Bearer rk_…``
  or as ``x-api-key: rk_…`` metadata (not both).

Missing, malformed, expired, unknown or revoked credentials are UNAUTHENTICATED with an
``ErrorInfo`` reason. The credential's subject (the JWT's ``sub``, or the owner of the API
key) owns what the caller creates, and every query is scoped by it. After authentication the
owner's request rate is checked (``gateway.limits.RateLimiter``). Health and reflection stay
open (probes and tooling need them).
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.limits import RateLimiter
from runtime.errors import Handler, InvalidArgument, Unauthenticated, wrap_handler

PROTECTED_PREFIX = "/reelmill.v1."
API_KEY_PREFIX = "rk_"
API_KEY_HEADER = "x-api-key"
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner of what the call touches, and how they proved it."""

    owner: str
    method: Literal["jwt", "api_key"]
    #: The API key used, when ``method`` is "api_key".
    api_key_id: str = ""


_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The authenticated caller of the call being served."""
    return _principal.get()


def current_owner() -> str:
    """The authenticated subject of the call being served."""
    return _principal.get().owner


# JWT --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    """A public key and the one algorithm it verifies."""

    key: Any
    algorithm: str


def key_algorithm(key: Any) -> str:
    """The one algorithm a public key verifies; other keys are refused."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("only RSA (RS256) and EC P-256 (ES256) public keys are supported")


def load_public_key(path: Path) -> VerificationKey:
    """An RSA or EC P-256 public key from a PEM file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
        return VerificationKey(key, key_algorithm(key))
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidArgument(
            f"REELMILL_JWT_PUBLIC_KEY_FILE {path}: {exc}", reason="BAD_SETTINGS"
        ) from None


def load_jwks(path: Path) -> dict[str, VerificationKey]:
    """The signing keys of a JWKS file by ``kid``: RSA and EC P-256 only (a symmetric key in a
    JWKS is refused rather than ignored: it would be an algorithm-confusion hazard)."""
    try:
        document = json.loads(path.read_text())
        entries = document["keys"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("no keys")
        keys: dict[str, VerificationKey] = {}
        for entry in entries:
            if entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ValueError("every key needs a kid")
            if kid in keys:
                raise ValueError(f"kid {kid!r} appears twice")
            if entry.get("kty") not in ("RSA", "EC"):
                raise ValueError(f"key {kid!r}: only RSA and EC keys are supported")
            key = jwt.PyJWK(entry).key
            algorithm = key_algorithm(key)
            if entry.get("alg", algorithm) != algorithm:
                raise ValueError(f"key {kid!r}: alg {entry['alg']!r} does not fit the key")
            keys[kid] = VerificationKey(key, algorithm)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, jwt.PyJWTError) as exc:
        raise InvalidArgument(
            f"REELMILL_JWT_JWKS_FILE {path}: {exc}", reason="BAD_SETTINGS"
        ) from None
    if not keys:
        raise InvalidArgument(
            f"REELMILL_JWT_JWKS_FILE {path}: no signing keys", reason="BAD_SETTINGS"
        )
    return keys


class TokenVerifier:
    """Verifies bearer JWTs with the configured keys; at least one is required."""

    def __init__(
        self,
        secret: str = "",
        *,
        issuer: str,
        audience: str,
        leeway: int,
        public_key: VerificationKey | None = None,
        jwks: Mapping[str, VerificationKey] | None = None,
    ) -> None:
        if secret and len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        if not secret and public_key is None and not jwks:
            raise ValueError("a JWT secret, public key or JWKS is required")
        self.secret = secret
        self.public_key = public_key
        self.jwks = dict(jwks or {})
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    def _key(self, token: str) -> tuple[Any, str]:
        """The configured key (and its algorithm) that must have signed ``token``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token: not a JWT", reason="INVALID_TOKEN") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm == "HS256" and self.secret:
            return self.secret, "HS256"
        if algorithm in ASYMMETRIC_ALGORITHMS:
            candidates: list[VerificationKey] = []
            if isinstance(kid, str) and kid in self.jwks:
                candidates = [self.jwks[kid]]
            elif kid is None and len(self.jwks) == 1:
                candidates = list(self.jwks.values())
            if self.public_key is not None:
                candidates.append(self.public_key)
            for candidate in candidates:
                if candidate.algorithm == algorithm:
                    return candidate.key, algorithm
            raise Unauthenticated(
                f"invalid token: no {algorithm} key configured for kid {kid!r}",
                reason="INVALID_TOKEN",
            )
        raise Unauthenticated(
            f"invalid token: algorithm {str(algorithm)[:20]!r} is not accepted",
            reason="INVALID_TOKEN",
        )

    def verify(self, token: str) -> str:
        key, algorithm = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
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
        """An HS256 token (development and tests; needs the secret)."""
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


# credentials ------------------------------------------------------------------------------------


class ApiKeyAuthenticator(Protocol):
    async def authenticate(self, secret: str) -> Principal:
        """The principal of a valid, unrevoked key; Unauthenticated otherwise."""
        ...


def credential(metadata: Any) -> str:
    """The bearer token or API key the call carries."""
    authorization: str | None = None
    api_key: str | None = None
    for key, value in metadata or ():
        if key == "authorization" and authorization is None:
            authorization = str(value)
        elif key == API_KEY_HEADER and api_key is None:
            api_key = str(value).strip()
    if authorization is not None and api_key is not None:
        raise Unauthenticated(
            f"send either authorization or {API_KEY_HEADER} metadata, not both",
            reason="AMBIGUOUS_CREDENTIALS",
        )
    if api_key is not None:
        if not api_key.startswith(API_KEY_PREFIX):
            raise Unauthenticated(
                f"{API_KEY_HEADER} must be an API key ({API_KEY_PREFIX}…)",
                reason="INVALID_API_KEY",
            )
        return api_key
    if authorization is None:
        raise Unauthenticated(
            f"missing credentials (authorization or {API_KEY_HEADER} metadata)",
            reason="MISSING_CREDENTIALS",
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "authorization must be 'Bearer <token>'", reason="MISSING_CREDENTIALS"
        )
    return token.strip()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every reelmill.v1 call, then applies the owner's rate limit. Errors are
    raised inside the handler, so the error-mapping interceptor turns them into statuses."""

    def __init__(
        self,
        verifier: TokenVerifier,
        api_keys: ApiKeyAuthenticator | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.verifier = verifier
        self.api_keys = api_keys
        self.limiter = limiter

    async def authenticate(self, metadata: Any) -> Principal:
        secret = credential(metadata)
        if secret.startswith(API_KEY_PREFIX):
            if self.api_keys is None:
                raise Unauthenticated("API keys are not accepted here", reason="INVALID_API_KEY")
            principal = await self.api_keys.authenticate(secret)
        else:
            principal = Principal(self.verifier.verify(secret), "jwt")
        if self.limiter is not None:
            self.limiter.acquire(principal.owner)
        return principal

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
        metadata = details.invocation_metadata

        def unary(behavior: Handler) -> Handler:
            async def authenticated(request: Any, context: Any) -> Any:
                _principal.set(await self.authenticate(metadata))
                return await behavior(request, context)

            return authenticated

        def stream(behavior: Handler) -> Handler:
            async def authenticated(request: Any, context: Any) -> AsyncIterator[Any]:
                _principal.set(await self.authenticate(metadata))
                async for response in behavior(request, context):
                    yield response

            return authenticated

        return wrap_handler(handler, unary, stream)
