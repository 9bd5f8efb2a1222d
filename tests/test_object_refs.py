"""ObjectStore.check_ref: the one check the services make of the (bucket, key) a caller names
(it needs no backend: the local store stands for both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.storage.local import LocalObjectStore


def test_check_ref_names_what_is_wrong_with_a_reference(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", bucket="media")
    assert store.check_ref("", "videos/v1/source") == "videos/v1/source"
    assert store.check_ref("media", "videos/v1/source") == "videos/v1/source"
    for bucket, key, reason in [
        ("other", "videos/v1/source", "UNKNOWN_BUCKET"),
        ("", "", "MISSING_OBJECT_KEY"),
        ("", "../escape", "BAD_OBJECT_KEY"),
        ("media", "a//b", "BAD_OBJECT_KEY"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            store.check_ref(bucket, key)
        assert caught.value.reason == reason
    with pytest.raises(InvalidArgument, match="an audio object key is required"):
        store.check_ref("", "", what="audio object")
