"""Builds the configured ``ObjectStore`` from settings."""

from __future__ import annotations

from runtime.settings import CommonSettings
from runtime.storage.base import ObjectStore


def open_store(settings: CommonSettings) -> ObjectStore:
    if settings.storage_backend == "s3":
        from runtime.storage.s3 import S3ObjectStore

        return S3ObjectStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            secure=settings.s3_secure,
            part_size=settings.s3_part_size_mib * 1024 * 1024,
            parts_in_flight=settings.s3_parts_in_flight,
            threads=settings.storage_threads,
            public_url=settings.s3_public_url,
            unreachable_retry_seconds=settings.s3_unreachable_retry_seconds,
        )
    from runtime.storage.local import LocalObjectStore

    return LocalObjectStore(settings.storage_dir)
