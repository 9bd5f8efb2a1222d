"""Where a job's and a video's objects live, and the ids that name them: deterministic, so a
retried stage overwrites what its last attempt wrote instead of adding more."""

from __future__ import annotations

import uuid

#: The namespace of imported videos' ids (uuid5 of the job id).
IMPORT_NAMESPACE = uuid.UUID("6f1c9a7e-2b1d-4c8e-9a55-3c2f0d7b9e41")


def job_prefix(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/"


def reused_prefix(key: str) -> str:
    """The job prefix an object key lies under (``jobs/{job_id}/``), or "" for another key."""
    kind, _, rest = key.partition("/")
    job_id, slash, _ = rest.partition("/")
    return f"{kind}/{job_id}/" if kind == "jobs" and job_id and slash else ""


def video_prefix(video_id: uuid.UUID) -> str:
    return f"videos/{video_id}/"


def source_key(video_id: uuid.UUID) -> str:
    return f"{video_prefix(video_id)}source"


def imported_video_id(job_id: uuid.UUID) -> uuid.UUID:
    """The id of a job's imported video: fixed per job, so a retried import overwrites its
    object and row instead of adding new ones."""
    return uuid.uuid5(IMPORT_NAMESPACE, str(job_id))
