"""Trust at the edge, against a real gateway served in this process on a real Postgres:
API keys (create, list, revoke, hashed at rest, owner-scoped), RS256/ES256 JWTs from a PEM
key or a JWKS file (and every way a token can be wrong), and per-owner limits answered with
RESOURCE_EXHAUSTED, an ErrorInfo reason and a RetryInfo."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import text

from gateway.api_keys import ApiKeys
from gateway.limits import RateLimiter
from gateway.server import Gateway, assemble, token_verifier
from gateway.settings import GatewaySettings
from reelmill.cli.main import describe_error
from reelmill.client import ReelmillClient, retry_after
from reelmill.v1 import api_key_service_pb2, job_service_pb2, media_pb2
from runtime.errors import InvalidArgument, ResourceExhausted, Unauthenticated, error_info
from runtime.server import build_server
from tests.suite import INTERNAL_TOKEN, JWT_SECRET, token

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[Gateway, str]]]


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Serve:
    """Serves a gateway with the given settings overrides; yields its parts and address."""

    @contextlib.asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[tuple[Gateway, str]]:
        values: dict[str, Any] = {
            "database_url": database_url,
            "jwt_secret": JWT_SECRET,
            "storage_dir": tmp_path / "objects",
            "ingest_target": "127.0.0.1:9",  # nothing listens: no call here reaches ingest
            "internal_token": INTERNAL_TOKEN,
            **overrides,
        }
        settings = GatewaySettings(**values)
        parts = await assemble(settings)
        server = build_server(settings, parts.spec.interceptors)
        parts.spec.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield parts, f"127.0.0.1:{port}"
        finally:
            await server.stop(0)
            if parts.spec.on_close is not None:
                await parts.spec.on_close()

    return running


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    return info.reason if info is not None else ""


async def add_video(parts: Gateway, owner: str, size: int = 1) -> str:
    video_id = str(uuid.uuid4())
    await parts.store.add_video(
        owner,
        media_pb2.Video(
            id=video_id,
            filename="a.mp4",
            content_type="video/mp4",
            size_bytes=size,
            sha256="0" * 64,
            object=media_pb2.ObjectRef(key=f"videos/{video_id}/source"),
        ),
    )
    return video_id


# API keys ---------------------------------------------------------------------------------------


async def test_api_key_lifecycle(serve: Serve) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with serve() as (parts, address):
        video_id = await add_video(parts, alice)
        async with ReelmillClient(address, token=token(alice)) as as_alice:
            key, secret = await as_alice.create_api_key("ci")
            assert key.id.startswith("rk_") and secret.startswith(key.id + "_")
            assert key.display_name == "ci" and not key.HasField("revoke_time")

            # Stored hashed: no column of the row holds the secret or its random part.
            async with parts.api_keys.sessions() as session:
                row = (
                    (
                        await session.execute(
                            text("SELECT * FROM api_keys WHERE id = :id"), {"id": key.id}
                        )
                    )
                    .mappings()
                    .one()
                )
            assert row["owner"] == alice
            assert row["secret_hash"] == "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
            random_part = secret.removeprefix(key.id + "_")
            assert not any(random_part in str(value) for value in row.values())

            # The key authenticates as its owner, as a bearer token or as x-api-key.
            async with ReelmillClient(address, token=secret) as as_key:
                assert (await as_key.get_video(video_id)).id == video_id
                keys, _ = await as_key.list_api_keys()
                assert [k.id for k in keys] == [key.id]
                # A key cannot mint keys: valid credentials, not allowed.
                error = await refused(as_key.create_api_key("more"))
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert reason(error) == "API_KEY_CANNOT_CREATE_KEYS"
            stub = as_alice.stub
            response = await stub.GetVideo(
                job_service_pb2.GetVideoRequest(video_id=video_id),
                metadata=(("x-api-key", secret),),
            )
            assert response.video.id == video_id
            error = await refused(
                stub.GetVideo(
                    job_service_pb2.GetVideoRequest(video_id=video_id),
                    metadata=(("x-api-key", secret), ("authorization", f"Bearer {token(alice)}")),
                )
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(error) == "AMBIGUOUS_CREDENTIALS"

            # The right id with a wrong secret, and an unknown id, are refused.
            for bad in (secret[:-4] + "AAAA", "rk_0123456789abcdef_" + "A" * 43, "rk_short"):
                async with ReelmillClient(address, token=bad) as as_bad:
                    error = await refused(as_bad.list_jobs())
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason(error) == "INVALID_API_KEY"

            # Another owner neither sees nor revokes it.
            async with ReelmillClient(address, token=token(bob)) as as_bob:
                assert (await as_bob.list_api_keys())[0] == []
                error = await refused(as_bob.revoke_api_key(key.id))
                assert error.code() == grpc.StatusCode.NOT_FOUND
                assert reason(error) == "API_KEY_NOT_FOUND"
                # And the key gives no access to bob's videos.
                bobs = await add_video(parts, bob)
            async with ReelmillClient(address, token=secret) as as_key:
                error = await refused(as_key.get_video(bobs))
                assert error.code() == grpc.StatusCode.NOT_FOUND

            # Revoked: refused at once (the lookup was cached just before).
            async with ReelmillClient(address, token=secret) as as_key:
                await as_key.list_jobs()
                revoked = await as_alice.revoke_api_key(key.id)
                assert revoked.HasField("revoke_time")
                error = await refused(as_key.list_jobs())
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason(error) == "API_KEY_REVOKED"
            again = await as_alice.revoke_api_key(key.id)
            assert again.revoke_time == revoked.revoke_time
            listed, _ = await as_alice.list_api_keys()
            assert [(k.id, k.HasField("revoke_time")) for k in listed] == [(key.id, True)]


async def test_api_keys_paginate_newest_first(serve: Serve) -> None:
    owner = f"pager-{uuid.uuid4().hex[:6]}"
    async with serve() as (_parts, address), ReelmillClient(address, token=token(owner)) as client:
        created = [(await client.create_api_key(f"k{i}"))[0].id for i in range(5)]
        seen: list[str] = []
        page = ""
        while True:
            keys, page = await client.list_api_keys(page_size=2, page_token=page)
            seen += [k.id for k in keys]
            if not page:
                break
        assert seen == list(reversed(created))
        error = await refused(client.list_api_keys(page_token="garbage"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_revocation_elsewhere_is_seen_within_the_cache_bound(serve: Serve) -> None:
    """Two replicas: a key revoked through one is refused by the other once its cached lookup
    is older than api_key_cache_seconds (a fake clock stands in for the wait)."""
    now = [1000.0]
    async with serve() as (parts, _address):
        replica = ApiKeys(parts.api_keys.sessions, cache_seconds=5.0, clock=lambda: now[0])
        key, secret = await parts.api_keys.create("carol", "")
        assert (await replica.authenticate(secret)).owner == "carol"
        await parts.api_keys.revoke("carol", key.id)
        now[0] += 4.9
        assert (await replica.authenticate(secret)).api_key_id == key.id  # still cached
        now[0] += 0.2
        with pytest.raises(Unauthenticated) as caught:
            await replica.authenticate(secret)
        assert caught.value.reason == "API_KEY_REVOKED"


async def test_peppered_keys_are_stored_as_a_keyed_hash(serve: Serve) -> None:
    async with serve(api_key_pepper="p" * 40) as (parts, address):
        async with ReelmillClient(address, token=token("dave")) as client:
            key, secret = await client.create_api_key()
        async with parts.api_keys.sessions() as session:
            stored = await session.scalar(
                text("SELECT secret_hash FROM api_keys WHERE id = :id"), {"id": key.id}
            )
        expected = hmac.new(b"p" * 40, secret.encode(), "sha256").hexdigest()
        assert stored == f"hmac-sha256:{expected}"
        async with ReelmillClient(address, token=secret) as as_key:
            await as_key.list_jobs()
        # Without the pepper, the stored hash cannot be checked: refused, not accepted.
        unpeppered = ApiKeys(parts.api_keys.sessions)
        with pytest.raises(Unauthenticated):
            await unpeppered.authenticate(secret)


# JWTs -------------------------------------------------------------------------------------------


def _claims(subject: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": "reelmill",
        "aud": "reelmill",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_raw_key(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token whose HMAC key is ``key`` (PyJWT refuses a PEM key here, so by hand)."""
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + _b64(json.dumps(claims).encode())
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _public_pem(private: Any) -> bytes:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _jwk(private: Any, kid: str) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    data["kid"] = kid
    return dict(data)


async def assert_accepted(address: str, credential: str) -> None:
    async with ReelmillClient(address, token=credential) as client:
        await client.list_jobs()


async def assert_unauthenticated(address: str, credential: str, expected: str) -> None:
    async with ReelmillClient(address, token=credential) as client:
        error = await refused(client.list_jobs())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert reason(error) == expected, error.details()


async def test_rs256_with_a_pem_public_key(serve: Serve, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _public_pem(private)
    (tmp_path / "jwt.pem").write_bytes(pem)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # RS256 only: no HS256 secret configured, and the gateway still starts.
    async with serve(jwt_secret="", jwt_public_key_file=tmp_path / "jwt.pem") as (_p, address):
        await assert_accepted(address, jwt.encode(_claims("erin"), private, algorithm="RS256"))
        now = int(time.time())
        bad = {
            "wrong audience": jwt.encode(_claims("erin", aud="other"), private, algorithm="RS256"),
            "wrong issuer": jwt.encode(_claims("erin", iss="other"), private, algorithm="RS256"),
            "another key": jwt.encode(_claims("erin"), stranger, algorithm="RS256"),
            "alg confusion": hs256_with_raw_key(_claims("erin"), pem),
            "HS256 without a secret": token("erin"),
            "alg none": jwt.encode(_claims("erin"), None, algorithm="none"),
        }
        for credential in bad.values():
            await assert_unauthenticated(address, credential, "INVALID_TOKEN")
        expired = _claims("erin", exp=now - 120, nbf=now - 600, iat=now - 600)
        await assert_unauthenticated(
            address, jwt.encode(expired, private, algorithm="RS256"), "TOKEN_EXPIRED"
        )
        future = _claims("erin", nbf=now + 600, exp=now + 1200)
        await assert_unauthenticated(
            address, jwt.encode(future, private, algorithm="RS256"), "TOKEN_NOT_YET_VALID"
        )


async def test_alg_confusion_refused_next_to_an_hs256_secret(serve: Serve, tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = _public_pem(private)
    (tmp_path / "jwt.pem").write_bytes(pem)
    async with serve(jwt_public_key_file=tmp_path / "jwt.pem") as (_p, address):
        await assert_accepted(address, jwt.encode(_claims("fay"), private, algorithm="ES256"))
        await assert_accepted(address, token("fay"))
        await assert_unauthenticated(
            address, hs256_with_raw_key(_claims("fay"), pem), "INVALID_TOKEN"
        )


async def test_jwks_picks_the_key_by_kid(serve: Serve, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [_jwk(rsa_key, "r1"), _jwk(ec_key, "e1")]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    async with serve(jwt_secret="", jwt_jwks_file=tmp_path / "jwks.json") as (_p, address):
        claims = _claims("gus")
        await assert_accepted(
            address, jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"})
        )
        await assert_accepted(
            address, jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"})
        )
        for credential in (
            jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "e1"}),  # wrong kid
            jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "nope"}),
            jwt.encode(claims, rsa_key, algorithm="RS256"),  # no kid, two keys
            jwt.encode(_claims("gus", aud="x"), rsa_key, algorithm="RS256", headers={"kid": "r1"}),
            hs256_with_raw_key(claims, json.dumps(jwks["keys"][0]).encode()),
        ):
            await assert_unauthenticated(address, credential, "INVALID_TOKEN")


def test_the_gateway_needs_a_verification_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        token_verifier(GatewaySettings(jwt_secret=""))
    assert caught.value.reason == "BAD_SETTINGS"
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "small.pem").write_bytes(_public_pem(small))
    (tmp_path / "oct.json").write_text(
        json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]})
    )
    for settings in (
        GatewaySettings(jwt_public_key_file=tmp_path / "small.pem"),
        GatewaySettings(jwt_public_key_file=tmp_path / "missing.pem"),
        GatewaySettings(jwt_jwks_file=tmp_path / "oct.json"),
        GatewaySettings(jwt_secret="short"),
    ):
        with pytest.raises(InvalidArgument):
            token_verifier(settings)


# limits -----------------------------------------------------------------------------------------


def assert_exhausted(error: grpc.aio.AioRpcError, expected: str) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert reason(error) == expected
    delay = retry_after(error)
    assert delay is not None and delay > 0


async def test_active_jobs_per_owner(serve: Serve) -> None:
    owner = f"hal-{uuid.uuid4().hex[:6]}"
    async with serve(owner_max_active_jobs=2) as (parts, address):
        video_id = await add_video(parts, owner)
        async with ReelmillClient(address, token=token(owner)) as client:
            first = await client.create_job(video_id, request_id="one")
            await client.create_job(video_id, request_id="two")
            error = await refused(client.create_job(video_id, request_id="three"))
            assert_exhausted(error, "TOO_MANY_ACTIVE_JOBS")
            # A repeated request is not a new job: it still gets its job.
            assert (await client.create_job(video_id, request_id="one")).id == first.id
            # Other owners have their own count.
            other = f"ivy-{uuid.uuid4().hex[:6]}"
            other_video = await add_video(parts, other)
            async with ReelmillClient(address, token=token(other)) as as_other:
                await as_other.create_job(other_video)
            # A finished (here: cancelled) job frees its place.
            await client.cancel_job(first.id)
            await client.create_job(video_id, request_id="three")


async def test_stored_bytes_per_owner_refused_at_the_header(serve: Serve) -> None:
    owner = f"jan-{uuid.uuid4().hex[:6]}"
    async with serve(owner_max_stored_bytes=1000) as (parts, address):
        await add_video(parts, owner, size=600)
        async with ReelmillClient(address, token=token(owner)) as client:

            async def no_bytes() -> AsyncIterator[bytes]:
                await asyncio.Event().wait()  # the header alone must decide
                yield b""

            # Refused from the header alone, before any byte is sent or stored.
            error = await refused(client.upload(no_bytes(), filename="b.mp4", size=401))
            assert_exhausted(error, "STORAGE_QUOTA_EXCEEDED")
            assert error_info(error).metadata["used_bytes"] == "600"  # type: ignore[union-attr]
        await parts.store.check_storage(owner, 400, 1000)  # what fits passes
        # The record is checked again when the upload lands (concurrent uploads).
        with pytest.raises(ResourceExhausted):
            await parts.store.add_video(
                owner,
                media_pb2.Video(id=str(uuid.uuid4()), size_bytes=401),
                max_stored_bytes=1000,
            )
        await add_video(parts, owner, size=400)
        async with ReelmillClient(address, token=token(owner)) as client:
            error = await refused(client.create_job(url="https://example.com/v.mp4"))
            assert_exhausted(error, "STORAGE_QUOTA_EXCEEDED")


async def test_request_rate_per_owner(serve: Serve) -> None:
    async with serve(owner_requests_per_second=0.001, owner_request_burst=3) as (_p, address):
        async with ReelmillClient(address, token=token("kim")) as client:
            for _ in range(3):
                await client.list_jobs()
            error = await refused(client.list_jobs())
            assert_exhausted(error, "RATE_LIMITED")
            # What the CLI prints: code, reason and when to retry.
            line = describe_error(error)
            assert line.startswith("RESOURCE_EXHAUSTED: too many requests")
            assert "[RATE_LIMITED]" in line and "(retry after " in line
        async with ReelmillClient(address, token=token("lee")) as other:
            await other.list_jobs()


def test_rate_limiter_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted) as caught:
        limiter.acquire("a")
    assert caught.value.retry_after == pytest.approx(0.5)
    now[0] += 0.5
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted):
        limiter.acquire("a")
    now[0] += 10
    limiter.acquire("a")
    limiter.acquire("a")  # refilled up to the burst, not beyond
    with pytest.raises(ResourceExhausted):
        limiter.acquire("a")


def test_api_key_messages_round_trip() -> None:
    # The contract the CLI prints from: the secret travels only in CreateApiKeyResponse.
    fields = {f.name for f in api_key_service_pb2.ApiKey.DESCRIPTOR.fields}
    assert "secret" not in fields


async def test_revocation_reaches_another_gateway_through_notify(serve: Serve) -> None:
    """Two gateways, caches far longer than the test: the one that did not revoke the key
    refuses it as soon as the revocation's NOTIFY arrives."""
    async with (
        serve(api_key_cache_seconds=300) as (first, _),
        serve(api_key_cache_seconds=300) as (second, second_address),
    ):
        listener = asyncio.create_task(second.hub.run())
        try:
            await asyncio.wait_for(second.hub.connected.wait(), 10)
            key, secret = await first.api_keys.create("erin", "")
            async with ReelmillClient(second_address, token=secret) as as_key:
                await as_key.list_jobs()  # cached on the second gateway now
                assert key.id in second.api_keys.cache
                await first.api_keys.revoke("erin", key.id)
                for _ in range(100):
                    if key.id not in second.api_keys.cache:
                        break
                    await asyncio.sleep(0.05)
                error = await refused(as_key.list_jobs())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(error) == "API_KEY_REVOKED"
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
