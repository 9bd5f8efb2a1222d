"""Standard Webhooks signing (reelmill/webhooks.py) against the specification's published test
vectors, the sealed secrets, the retry schedule, and which job events are webhook events."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid

import pytest

from gateway.webhooks.delivery import next_wait
from gateway.webhooks.events import event_type
from gateway.webhooks.secrets import SecretBox, SecretUnreadable, parse_key
from reelmill.v1 import job_pb2
from reelmill.webhooks import (
    WebhookVerificationError,
    headers,
    new_secret,
    secret_key,
    sign,
    verify,
)
from runtime.netguard import retry_after_seconds
from tests.webhook_receiver import receiver_verifies

# The vectors of the standard-webhooks reference libraries (Python, JavaScript, Go …).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#: The vectors' signature with its last character changed: must never verify.
VECTOR_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_sign_matches_the_published_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    # The whsec_ prefix is optional.
    assert sign(VECTOR_SECRET[6:], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_vector_and_refuses_every_alteration() -> None:
    at = VECTOR_TIMESTAMP + 10
    assert verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=at) == {"test": 2432232314}
    # Header names are case-insensitive.
    upper = {k.upper(): v for k, v in vector_headers().items()}
    assert verify(VECTOR_SECRET, upper, VECTOR_BODY, now=at) == {"test": 2432232314}
    refused = [
        (vector_headers(VECTOR_WRONG), VECTOR_BODY, at),
        (vector_headers(), b'{"test": 2432232315}', at),
        ({**vector_headers(), "webhook-id": "msg_other"}, VECTOR_BODY, at),
        ({**vector_headers(), "webhook-timestamp": str(VECTOR_TIMESTAMP + 1)}, VECTOR_BODY, at),
        ({**vector_headers(), "webhook-timestamp": "hello"}, VECTOR_BODY, at),
        ({k: v for k, v in vector_headers().items() if k != "webhook-id"}, VECTOR_BODY, at),
        ({k: v for k, v in vector_headers().items() if k != "webhook-signature"}, VECTOR_BODY, at),
        (vector_headers(VECTOR_SIGNATURE[:8]), VECTOR_BODY, at),
        (vector_headers("v1,"), VECTOR_BODY, at),
        (vector_headers("v2," + VECTOR_SIGNATURE[3:]), VECTOR_BODY, at),  # not a v1 signature
        (vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP + 301),  # too old
        (vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP - 301),  # from the future
    ]
    for received, body, now in refused:
        with pytest.raises(WebhookVerificationError):
            verify(VECTOR_SECRET, received, body, now=now)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), vector_headers(), VECTOR_BODY, now=at)


def test_one_valid_signature_among_several_is_enough() -> None:
    """The vectors' multi-signature case: what a rotation sends."""
    signatures = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            VECTOR_SIGNATURE,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )
    at = VECTOR_TIMESTAMP
    assert verify(VECTOR_SECRET, vector_headers(signatures), VECTOR_BODY, now=at)


def test_rotation_headers_carry_one_signature_per_secret() -> None:
    old, new = new_secret(), new_secret()
    body = json.dumps({"type": "job.succeeded"}).encode()
    sent = headers([new, old], "msg_" + uuid.uuid4().hex, body)
    assert len(sent["webhook-signature"].split(" ")) == 2
    # A receiver that knows either secret accepts it: our verify, and the test receiver's own.
    for secret in (old, new):
        assert verify(secret, sent, body)
        assert receiver_verifies([secret], sent, body)
    assert not receiver_verifies([new_secret()], sent, body)


def test_new_secrets_are_32_random_bytes() -> None:
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(s.startswith("whsec_") and len(secret_key(s)) == 32 for s in made)
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")


def test_sealed_secrets_open_only_with_their_key_and_their_endpoint() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    box = SecretBox(parse_key(key))
    secret = new_secret()
    sealed = box.seal(secret, "endpoint-a")
    assert sealed.startswith("aesgcm:") and secret not in sealed
    assert box.open(sealed, "endpoint-a") == secret
    with pytest.raises(SecretUnreadable):
        box.open(sealed, "endpoint-b")  # copied onto another row
    with pytest.raises(SecretUnreadable):
        SecretBox(parse_key(base64.b64encode(b"x" * 32).decode())).open(sealed, "endpoint-a")
    with pytest.raises(SecretUnreadable, match="no REELMILL_WEBHOOK_SECRET_KEY"):
        SecretBox(None).open(sealed, "endpoint-a")
    # Unsealed storage (no key) stays readable after a key is configured.
    plain = SecretBox(None).seal(secret, "endpoint-a")
    assert plain == "plain:" + secret
    assert box.open(plain, "endpoint-a") == secret
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="REELMILL_WEBHOOK_SECRET_KEY"):
            parse_key(bad)


SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


def test_retry_waits_follow_the_schedule_with_jitter_then_run_out() -> None:
    rng = random.Random(3)
    for attempt, planned in enumerate(SCHEDULE, start=1):
        waits = [next_wait(SCHEDULE, attempt, None, rng.uniform) for _ in range(200)]
        assert all(w is not None and 0.8 * planned <= w <= 1.2 * planned for w in waits)
        assert len(set(waits)) > 150  # jittered, not one value
    assert next_wait(SCHEDULE, len(SCHEDULE) + 1, None) is None


def test_retry_after_is_honoured_as_seconds_or_a_date() -> None:
    mid = lambda a, b: (a + b) / 2  # noqa: E731
    assert next_wait(SCHEDULE, 1, 120.0, mid) == 120.0  # longer than the 5 s wait
    assert next_wait(SCHEDULE, 2, 1.0, mid) == 300.0  # shorter: the schedule wins
    assert next_wait(SCHEDULE, 1, 10 * 86400.0, mid) == 86400.0  # capped at a day
    now = time.time()
    assert retry_after_seconds("120", now) == 120.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 90))
    assert 88 <= (retry_after_seconds(date, now) or 0) <= 91
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def _stage(state: job_pb2.StageState.ValueType) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(stage_updated=job_pb2.StageUpdated(stage=job_pb2.Stage(state=state)))


def _job(state: job_pb2.JobState.ValueType) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(job_state_changed=job_pb2.JobStateChanged(state=state))


def test_only_state_changes_are_webhook_events() -> None:
    assert [
        event_type(_job(s))
        for s in (
            job_pb2.JOB_STATE_QUEUED,
            job_pb2.JOB_STATE_RUNNING,
            job_pb2.JOB_STATE_SUCCEEDED,
            job_pb2.JOB_STATE_FAILED,
            job_pb2.JOB_STATE_CANCELLED,
        )
    ] == ["job.queued", "job.started", "job.succeeded", "job.failed", "job.cancelled"]
    finished = (
        job_pb2.STAGE_STATE_SUCCEEDED,
        job_pb2.STAGE_STATE_FAILED,
        job_pb2.STAGE_STATE_SKIPPED,
    )
    assert {event_type(_stage(s)) for s in finished} == {"stage.finished"}
    for quiet in (job_pb2.STAGE_STATE_RUNNING, job_pb2.STAGE_STATE_RETRYING):
        assert event_type(_stage(quiet)) is None  # progress and retries are never sent
    assert event_type(job_pb2.JobEvent()) is None
