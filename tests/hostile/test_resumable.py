"""The hostile corpus of resumable uploads (StartUpload, WriteUpload, GetUpload, FinishUpload)
through real gateway and ingest processes on S3: bad headers, bad and missing ids, another
owner's upload, wrong and negative offsets, offsets that jump inside a stream, oversize writes
and messages, finishing early or twice, and lying or dangerous media found at the finish
(the framing checks read the stored object over HTTP ranges). Each gets its precise status
and reason; after each, nothing but the case's own unfinished uploads is left in storage (as
multipart uploads), the scratch directory is empty, and a refused write changed no committed
size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from reelmill.v1 import job_service_pb2 as pb
from reelmill.v1 import upload_pb2
from runtime.errors import error_info
from tests.hostile import crafted
from tests.hostile.conftest import MAX_MESSAGE_MIB, MAX_UPLOAD_BYTES, Hostile, Media, sha256
from tests.suite import token

Code = grpc.StatusCode
#: Under the harness's message limit (REELMILL_MAX_MESSAGE_MIB=1).
CHUNK = 256 * 1024


class Session:
    """Sync calls as one owner."""

    def __init__(self, hostile: Hostile, owner: str = "hostile") -> None:
        self._channel = grpc.insecure_channel(hostile.address)
        self._stub = hostile.stub(self._channel)
        self._auth = [("authorization", f"Bearer {token(owner)}")]

    def close(self) -> None:
        self._channel.close()

    def start(self, size: int, *, sha: str = "", content_type: str = "") -> upload_pb2.Upload:
        header = pb.UploadHeader(
            filename="clip.mp4", size_bytes=size, sha256=sha, content_type=content_type
        )
        response: pb.StartUploadResponse = self._stub.StartUpload(
            pb.StartUploadRequest(header=header), metadata=self._auth, timeout=30
        )
        return response.upload

    def send(self, messages: Iterable[pb.WriteUploadRequest]) -> int:
        response: pb.WriteUploadResponse = self._stub.WriteUpload(
            iter(list(messages)), metadata=self._auth, timeout=60
        )
        return response.committed_size

    def write(self, upload_id: str, data: bytes, offset: int = 0) -> int:
        return self.send(messages(upload_id, data, offset))

    def get(self, upload_id: str) -> upload_pb2.Upload:
        response: pb.GetUploadResponse = self._stub.GetUpload(
            pb.GetUploadRequest(upload_id=upload_id), metadata=self._auth, timeout=30
        )
        return response.upload

    def finish(self, upload_id: str) -> pb.FinishUploadResponse:
        response: pb.FinishUploadResponse = self._stub.FinishUpload(
            pb.FinishUploadRequest(upload_id=upload_id), metadata=self._auth, timeout=120
        )
        return response


def messages(upload_id: str, data: bytes, offset: int = 0) -> list[pb.WriteUploadRequest]:
    return [
        pb.WriteUploadRequest(
            upload_id=upload_id, write_offset=offset + i, data=data[i : i + CHUNK]
        )
        for i in range(0, max(len(data), 1), CHUNK)
    ]


@dataclass(frozen=True)
class Expect:
    code: Code
    reason: str = ""
    #: A substring of the status message.
    text: str = ""
    #: ErrorInfo metadata the refusal must carry.
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class Notes:
    """What a case leaves to check besides its refusal."""

    #: (upload id, committed size) that the refusal must not have changed.
    unchanged: list[tuple[str, int]] = field(default_factory=list)


def refused(code: Code, reason: str, text: str = "", **metadata: str) -> Expect:
    return Expect(code, reason, text, tuple(metadata.items()))


Case = Callable[[Session, Session, Media, Notes], object]
INVALID, PRECONDITION = Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION


def _started(me: Session, media: Media, notes: Notes, *, committed: bool = False) -> str:
    """An upload of the good clip (every byte written with ``committed``)."""
    upload = me.start(len(media.good))
    if committed:
        assert me.write(upload.id, media.good) == len(media.good)
    notes.unchanged.append((upload.id, len(media.good) if committed else 0))
    return upload.id


def _offset(offset: int) -> Case:
    def case(me: Session, other: Session, media: Media, notes: Notes) -> object:
        return me.write(_started(me, media, notes), media.good[:1000], offset)

    return case


def _stream(build: Callable[[str, Media], list[pb.WriteUploadRequest]]) -> Case:
    def case(me: Session, other: Session, media: Media, notes: Notes) -> object:
        return me.send(build(_started(me, media, notes), media))

    return case


def _finish(data: Callable[[Media], bytes], *, sha: str = "") -> Case:
    def case(me: Session, other: Session, media: Media, notes: Notes) -> object:
        content = data(media)
        upload = me.start(len(content), sha=sha)
        assert me.write(upload.id, content) == len(content)
        return me.finish(upload.id)

    return case


def _finish_twice_then_write(me: Session, other: Session, media: Media, notes: Notes) -> object:
    upload_id = _started(me, media, notes, committed=True)
    first = me.finish(upload_id).video
    second = me.finish(upload_id).video
    assert first == second and first.size_bytes == len(media.good)
    assert me.get(upload_id).state == upload_pb2.UPLOAD_STATE_FINISHED
    return me.write(upload_id, b"x", len(media.good))


def _others(action: str) -> Case:
    def case(me: Session, other: Session, media: Media, notes: Notes) -> object:
        upload_id = other.start(len(media.good)).id
        if action == "get":
            return me.get(upload_id)
        if action == "write":
            return me.write(upload_id, media.good)
        return me.finish(upload_id)

    return case


def _call(action: Callable[[Session], object]) -> Case:
    def case(me: Session, other: Session, media: Media, notes: Notes) -> object:
        return action(me)

    return case


MISSING = "00000000-0000-4000-8000-000000000000"

#: name -> (what it does, what it must get)
CASES: dict[str, tuple[Case, Expect]] = {
    # -- StartUpload
    "start_zero_bytes": (_call(lambda me: me.start(0)), refused(INVALID, "EMPTY_UPLOAD")),
    "start_negative_size": (_call(lambda me: me.start(-1)), refused(INVALID, "INVALID_SIZE")),
    "start_over_the_limit": (
        _call(lambda me: me.start(MAX_UPLOAD_BYTES + 1)),
        refused(Code.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE", "exceeds the limit"),
    ),
    "start_malformed_sha256": (
        _call(lambda me: me.start(10, sha="abc")),
        refused(INVALID, "BAD_SHA256"),
    ),
    "start_html_content_type": (
        _call(lambda me: me.start(10, content_type="text/html")),
        refused(INVALID, "INVALID_CONTENT_TYPE"),
    ),
    # -- ids
    "write_no_messages": (_call(lambda me: me.send([])), refused(INVALID, "MISSING_UPLOAD_ID")),
    "write_without_upload_id": (
        _call(lambda me: me.send([pb.WriteUploadRequest(data=b"x")])),
        refused(INVALID, "MISSING_UPLOAD_ID"),
    ),
    "write_malformed_upload_id": (
        _call(lambda me: me.write("../../etc/passwd", b"x")),
        refused(INVALID, "BAD_ID"),
    ),
    "write_unknown_upload_id": (
        _call(lambda me: me.write(MISSING, b"x")),
        refused(Code.NOT_FOUND, "UPLOAD_NOT_FOUND"),
    ),
    "get_malformed_upload_id": (_call(lambda me: me.get("not-a-uuid")), refused(INVALID, "BAD_ID")),
    "finish_unknown_upload_id": (
        _call(lambda me: me.finish(MISSING)),
        refused(Code.NOT_FOUND, "UPLOAD_NOT_FOUND"),
    ),
    # -- another owner's upload looks like no upload at all
    "get_another_owners_upload": (_others("get"), refused(Code.NOT_FOUND, "UPLOAD_NOT_FOUND")),
    "write_another_owners_upload": (
        _others("write"),
        refused(Code.NOT_FOUND, "UPLOAD_NOT_FOUND"),
    ),
    "finish_another_owners_upload": (
        _others("finish"),
        refused(Code.NOT_FOUND, "UPLOAD_NOT_FOUND"),
    ),
    # -- offsets
    "offset_ahead": (
        _offset(4096),
        refused(PRECONDITION, "WRITE_OFFSET_MISMATCH", "committed size 0", committed_size="0"),
    ),
    "offset_negative": (
        _offset(-1),
        refused(PRECONDITION, "WRITE_OFFSET_MISMATCH", committed_size="0"),
    ),
    "offset_huge": (
        _offset(2**62),
        refused(PRECONDITION, "WRITE_OFFSET_MISMATCH", committed_size="0"),
    ),
    "offset_jumps_inside_the_stream": (
        _stream(lambda u, m: [*messages(u, m.good[:1000]), *messages(u, m.good[2000:3000], 2000)]),
        refused(PRECONDITION, "WRITE_OFFSET_MISMATCH", "does not follow on", committed_size="0"),
    ),
    "offset_goes_back_inside_the_stream": (
        _stream(lambda u, m: [*messages(u, m.good[:1000]), *messages(u, m.good[:1000])]),
        refused(PRECONDITION, "WRITE_OFFSET_MISMATCH", committed_size="0"),
    ),
    "upload_id_changes_inside_the_stream": (
        _stream(lambda u, m: [*messages(u, m.good[:1000]), *messages(MISSING, b"x", 1000)]),
        refused(INVALID, "UPLOAD_ID_CHANGED"),
    ),
    # -- oversize
    "write_past_the_declared_size": (
        _stream(lambda u, m: messages(u, m.good + b"extra")),
        refused(Code.OUT_OF_RANGE, "WRITE_PAST_END", "past the declared size", committed_size="0"),
    ),
    "message_over_the_limit": (
        _stream(
            lambda u, m: [
                pb.WriteUploadRequest(upload_id=u, data=b"\0" * (MAX_MESSAGE_MIB * 1024 * 1024 + 1))
            ]
        ),
        Expect(Code.RESOURCE_EXHAUSTED, "", "larger than"),
    ),
    # -- finishing
    "finish_before_every_byte": (
        lambda me, o, m, n: me.finish(_started(me, m, n)),
        refused(PRECONDITION, "UPLOAD_INCOMPLETE", committed_size="0"),
    ),
    "finish_twice_then_write": (
        _finish_twice_then_write,
        refused(PRECONDITION, "UPLOAD_NOT_ACTIVE", "finished"),
    ),
    "finish_wrong_sha256": (
        _finish(lambda m: m.good, sha=sha256(b"else")),
        refused(INVALID, "SHA256_MISMATCH", "not the declared"),
    ),
    "finish_not_a_video": (
        _finish(lambda m: b"hello, this is not a video\n" * 500),
        refused(INVALID, "NOT_A_VIDEO"),
    ),
    "finish_truncated_before_moov": (
        _finish(lambda m: m.moov_last[: len(m.moov_last) // 2]),
        refused(INVALID, "TRUNCATED_MEDIA", "'mdat' box at byte"),
    ),
    "finish_external_data_reference": (
        _finish(lambda m: crafted.external_data_reference(m.moov_last, b"file:///etc/passwd")),
        refused(INVALID, "NOT_A_VIDEO", "other files or at URLs"),
    ),
    "finish_hls_playlist": (
        _finish(lambda m: b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n"),
        refused(INVALID, "NOT_A_VIDEO"),
    ),
}


@pytest.fixture(scope="module")
def sessions(hostile: Hostile) -> Iterator[tuple[Session, Session]]:
    me, other = Session(hostile), Session(hostile, owner="someone-else")
    try:
        yield me, other
    finally:
        me.close()
        other.close()


def test_the_resumable_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_resumable_upload(
    hostile: Hostile, sessions: tuple[Session, Session], media: Media, name: str
) -> None:
    case, expect = CASES[name]
    me, other = sessions
    objects = hostile.objects()
    unfinished = set(hostile.incomplete_uploads())
    notes = Notes()
    with pytest.raises(grpc.RpcError) as failure:
        case(me, other, media, notes)
    error = failure.value
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert code == expect.code, (code, details)
    assert expect.text in details, details
    info = error_info(error)
    assert (info.reason if info else "") == expect.reason, (info, details)
    for key, value in expect.metadata:
        assert info is not None and info.metadata[key] == value, info
    assert "Traceback" not in details and "ffmpeg" not in details.lower()
    stored = hostile.objects() - objects
    # Only "finish twice" stores a video; whatever is refused stores nothing.
    assert len(stored) == (name == "finish_twice_then_write"), stored
    assert hostile.scratch_left() == []
    # At most the case's own upload is still open (as a multipart upload).
    left = set(hostile.incomplete_uploads()) - unfinished
    assert len(left) <= 1 and all(key.startswith("videos/") for key in left), left
    for upload_id, committed in notes.unchanged:
        if name != "finish_twice_then_write":
            assert me.get(upload_id).committed_size == committed


def test_still_serving_after_the_resumable_corpus(hostile: Hostile, media: Media) -> None:
    from grpc_health.v1 import health_pb2

    assert set(hostile.serving().values()) == {health_pb2.HealthCheckResponse.SERVING}
    me = Session(hostile, owner="after")
    try:
        upload = me.start(len(media.good), sha=sha256(media.good))
        assert me.write(upload.id, media.good) == len(media.good)
        video = me.finish(upload.id).video
        assert video.size_bytes == len(media.good) and video.sha256 == sha256(media.good)
    finally:
        me.close()
    logs = hostile.logs()
    assert "unhandled error" not in logs
    assert '"levelname": "ERROR"' not in logs and '"level": "ERROR"' not in logs
