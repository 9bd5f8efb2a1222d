"""Per-request scratch directories.

A scratch directory is ``{root}/{kind}-{pid}-{random}``; it is removed when the request ends
however it ends (success, error, cancel). A process killed outright cannot clean up, so at
start the service removes directories whose pid is no longer alive (``remove_stale``), which is
safe when several replicas share one scratch root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.tasks import shielded

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def scratch_dir(root: Path, kind: str) -> AsyncIterator[Path]:
    # mkdir is microseconds; doing it inline means a cancel cannot leave an untracked dir.
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    path = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        await remove_tree(path)


async def remove_tree(path: Path) -> None:
    """``rmtree`` in a thread; a second cancel while it runs does not stop the removal."""
    await shielded(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True))


def remove_stale(root: Path) -> int:
    """Removes scratch directories left by processes that no longer run; returns how many."""
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        parts = entry.name.split("-")
        if not entry.is_dir() or len(parts) < 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed stale scratch directories", extra={"count": removed, "root": str(root)})
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
