"""What every stage is made of: the context it runs in, what it returns, how it calls its
service. A stage calls one internal service through its stub, passing object references (never
bytes), and reports what it produced; it knows nothing of Postgres, leases or retries (the
orchestrator's)."""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import grpc
from google.protobuf.message import Message

from gateway.convert import from_json, to_json
from gateway.keys import job_prefix
from gateway.runs import ClaimedJob, StageRow
from reelmill.v1 import media_pb2, pipeline_pb2, vision_pb2
from runtime.errors import FailedPrecondition, Unavailable, from_rpc_error

Report = Callable[[float, str], Awaitable[None]]


@dataclass(frozen=True)
class Wiring:
    """What stages are built from: a channel per internal service, and the bucket."""

    channels: Mapping[str, grpc.aio.Channel]
    bucket: str


@dataclass(frozen=True)
class StageContext:
    job: ClaimedJob
    #: Outputs of every finished stage, by stage name.
    outputs: Mapping[str, Mapping[str, Any]]
    #: Job-level results so far (protobuf JSON): media_info, transcript, metadata, scenes,
    #: on_screen_text, clips.
    fields: Mapping[str, Any]
    #: Reports progress (fraction 0..1, message); throttled before it is persisted.
    report: Report
    #: Deadline of this attempt's call, in seconds: the stage's budget, never past the job's
    #: deadline.
    timeout: float
    #: This attempt's number (1-based, counted across runs of the job).
    attempt: int = 1

    @property
    def output_prefix(self) -> str:
        """Where the job's outputs go: the prefix its purges empty."""
        return job_prefix(self.job.id)

    @property
    def media_info(self) -> media_pb2.MediaInfo:
        return from_json(self.fields.get("media_info"), media_pb2.MediaInfo)

    @property
    def transcript(self) -> media_pb2.Transcript:
        return from_json(self.fields.get("transcript"), media_pb2.Transcript)

    @property
    def scenes(self) -> vision_pb2.Scenes:
        return from_json(self.fields.get("scenes"), vision_pb2.Scenes)

    @property
    def on_screen_text(self) -> vision_pb2.OnScreenText:
        return from_json(self.fields.get("on_screen_text"), vision_pb2.OnScreenText)

    @property
    def video(self) -> media_pb2.Video:
        """The video the job processes: uploaded before, or imported by the import stage."""
        if self.job.video is not None:
            return self.job.video
        if "video" in self.outputs.get("import", {}):
            return from_json(dict(self.outputs["import"]["video"]), media_pb2.Video)
        raise FailedPrecondition("the job's video no longer exists", reason="VIDEO_DELETED")

    @property
    def source(self) -> media_pb2.ObjectRef:
        return self.video.object


@dataclass(frozen=True)
class StageResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    artifacts: list[media_pb2.Artifact] = field(default_factory=list)
    #: Columns of the job to set with the stage's success (media_info, transcript, metadata).
    job_fields: dict[str, Any] = field(default_factory=dict)
    #: A video the stage brought in (URL import), recorded with the stage's success.
    video: media_pb2.Video | None = None


class Stage(abc.ABC):
    """One node of the DAG. ``depends_on`` names stages that must finish first, and without
    which this one has nothing to do (it is planned SKIPPED when one of them is); ``waits_for``
    names stages whose results it uses when they exist (it runs after them, whether they ran
    or were skipped). A dependency that a job does not plan (the import, for an uploaded video)
    is dropped for that job."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    waits_for: ClassVar[tuple[str, ...]] = ()
    #: The internal service the stage calls (a key of ``Wiring.channels``), and its stub.
    service: ClassVar[str]
    stub_class: ClassVar[type[Any]]
    #: Part of the stage's fingerprint (``gateway.reuse``): bump it when the same inputs give
    #: other outputs (new code, new defaults), so that earlier results are no longer reused.
    version: ClassVar[int] = 1
    #: The job columns the stage sets (``StageResult.job_fields``): taken along when reused.
    job_fields: ClassVar[tuple[str, ...]] = ()
    #: The dependencies whose fingerprints enter this stage's own (default: ``depends_on``);
    #: a stage whose declared inputs already capture what a dependency produced leaves it out.
    reuse_depends_on: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = self.stub_class(channel)

    @classmethod
    def build(cls, wiring: Wiring) -> Self:
        return cls(wiring.channels[cls.service])

    def planned(self, *, from_url: bool) -> bool:
        """Whether a job has this stage at all (the import exists only for URL jobs)."""
        return True

    def enabled(self, spec: pipeline_pb2.PipelineSpec) -> bool:
        """Whether the job's spec asks for this stage (a planned stage that is not starts
        SKIPPED, and so do the stages that depend on it)."""
        return True

    def skip_reason(self, ctx: StageContext) -> str | None:
        """Why the stage has nothing to do for this job (e.g. no audio track), if so."""
        return None

    def fingerprint_inputs(self, ctx: StageContext) -> Mapping[str, Any] | None:
        """Everything the stage's outputs depend on besides the owner, the stage's name and
        version and its dependencies' fingerprints (JSON values): e.g. the source's sha256 and
        the stage's part of the spec. None (the default) means the stage is never reused, and
        neither is any stage that depends on it."""
        return None

    @abc.abstractmethod
    async def run(self, ctx: StageContext) -> StageResult: ...


async def follow_stream(call: Any, ctx: StageContext) -> Any:
    """Consumes a stage's server stream to its end: progress goes to ``ctx.report``; returns
    the ``result``, once the call has ended OK (so its status, and its client span, are
    complete). Cancelling the stage cancels the call, which stops the service's work."""
    result = None
    try:
        async for response in call:
            kind = response.WhichOneof("update")
            if kind == "progress":
                await ctx.report(response.progress.fraction, response.progress.message)
            elif kind == "result":
                result = response.result
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()
    if result is None:
        raise Unavailable("the service ended the stream without a result", reason="NO_RESULT")
    return result


async def call_unary(call: Awaitable[Any]) -> Any:
    """Awaits a unary stage call; its failure as the domain error the orchestrator judges."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


def artifact_names(artifacts: Any) -> list[str]:
    return [artifact.name for artifact in artifacts]


def has_video(info: media_pb2.MediaInfo) -> bool:
    return len(info.video_streams) > 0


def has_audio(info: media_pb2.MediaInfo) -> bool:
    return len(info.audio_streams) > 0


def spec_inputs(message: Message) -> dict[str, Any]:
    """A part of the job's spec as fingerprint input (protobuf JSON, defaults left out)."""
    return to_json(message)


def digest(value: Any) -> str:
    """The SHA-256 of a JSON value (keys sorted): a large input (a transcript) as a
    fingerprint input."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def finished(row: StageRow) -> bool:
    return row.state in ("SUCCEEDED", "SKIPPED")
