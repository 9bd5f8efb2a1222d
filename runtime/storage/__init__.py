"""Object storage: one interface, two backends (S3 through minio, a local directory)."""

from runtime.storage.base import ObjectInfo, ObjectStore, ObjectWriter, StoredObject
from runtime.storage.factory import open_store

__all__ = ["ObjectInfo", "ObjectStore", "ObjectWriter", "StoredObject", "open_store"]
