"""Resumable uploads (StartUpload, WriteUpload, GetUpload, FinishUpload): the record in
Postgres (``records``) and the flow through ingest (``service``)."""

from gateway.uploads.service import ResumableUploads

__all__ = ["ResumableUploads"]
