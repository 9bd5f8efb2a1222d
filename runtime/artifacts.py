"""What a stage stored, and its ``reelmill.v1.Artifact`` message.

Every service that writes outputs (transcode, transcribe, metadata) describes each one the same
way: a name under the request's output prefix, a kind (the service's own ``ArtifactKind`` enum,
whose member names match the wire enum's ``ARTIFACT_KIND_*`` values), the committed object, the
stage that produced it and string attributes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from google.protobuf import timestamp_pb2

from reelmill.v1 import media_pb2
from runtime.storage import StoredObject

KindT = TypeVar("KindT", bound=enum.Enum)


@dataclass(frozen=True)
class Artifact(Generic[KindT]):
    """A stored output."""

    #: Relative to the request's output prefix, e.g. "renditions/720p.mp4".
    name: str
    kind: KindT
    stored: StoredObject
    #: The pipeline stage that produced it: "transcode", "audio", "transcribe", "metadata".
    stage: str
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # A read-only copy: outcomes are cached and shared between calls.
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def bucket(self) -> str:
        return self.stored.bucket

    @property
    def key(self) -> str:
        return self.stored.key

    @property
    def content_type(self) -> str:
        return self.stored.content_type

    @property
    def size(self) -> int:
        return self.stored.size

    @property
    def sha256(self) -> str:
        return self.stored.sha256


def artifact_message(artifact: Artifact[Any], *, now: datetime | None = None) -> media_pb2.Artifact:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(now or datetime.now(UTC))
    return media_pb2.Artifact(
        name=artifact.name,
        kind=media_pb2.ArtifactKind.Value("ARTIFACT_KIND_" + artifact.kind.name),
        object=media_pb2.ObjectRef(bucket=artifact.bucket, key=artifact.key),
        content_type=artifact.content_type,
        size_bytes=artifact.size,
        sha256=artifact.sha256,
        attributes=dict(artifact.attributes),
        stage=artifact.stage,
        create_time=created,
    )


def artifact_messages(artifacts: Iterable[Artifact[Any]]) -> list[media_pb2.Artifact]:
    """The messages for one result, all with the same creation time."""
    now = datetime.now(UTC)
    return [artifact_message(artifact, now=now) for artifact in artifacts]
