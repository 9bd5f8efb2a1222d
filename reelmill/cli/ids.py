"""Ids a person types: a whole id, or the start of one (``reelmill jobs get 3f2a``).

A whole UUID is used as given. Anything shorter is looked up among the caller's own jobs (or
videos), newest first, page by page: exactly one match is the id; none, or more than one (each
listed, so a longer prefix can be chosen), stops the command with a message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from reelmill.cli.render import state_name
from reelmill.client import ReelmillClient

#: How many matches an ambiguous prefix lists.
SHOWN = 10


def is_whole(given: str) -> bool:
    try:
        return str(uuid.UUID(given)) == given.lower()
    except ValueError:
        return False


def _normalized(prefix: str) -> str:
    return prefix.strip().lower()


async def _resolve(
    given: str,
    what: str,
    page: Callable[[str], Awaitable[tuple[Sequence[tuple[str, str]], str]]],
) -> str:
    """``page(token)`` answers (id, description) pairs and the next page's token."""
    if is_whole(given):
        return given.lower()
    prefix = _normalized(given)
    if not prefix:
        raise SystemExit(f"reelmill: give a {what} id (or the start of one)")
    matches: list[tuple[str, str]] = []
    token = ""
    while True:
        items, token = await page(token)
        matches += [(item_id, about) for item_id, about in items if item_id.startswith(prefix)]
        if not token:
            break
    if len(matches) == 1:
        return matches[0][0]
    if not matches:
        raise SystemExit(f"reelmill: no {what} of yours has an id starting with {given!r}")
    listed = "\n".join(f"  {item_id}  {about}" for item_id, about in matches[:SHOWN])
    more = f"\n  … and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
    raise SystemExit(
        f"reelmill: {given!r} is the start of {len(matches)} {what} ids; give more of it:\n"
        f"{listed}{more}"
    )


async def resolve_job(client: ReelmillClient, given: str) -> str:
    """The whole id of the caller's job ``given`` names (a whole id or a unique prefix)."""

    async def page(token: str) -> tuple[list[tuple[str, str]], str]:
        jobs, next_token = await client.list_jobs(page_size=500, page_token=token)
        return [
            (job.id, f"{state_name(job.state):<9} {job.create_time.ToDatetime():%Y-%m-%d %H:%M}")
            for job in jobs
        ], next_token

    return await _resolve(given, "job", page)


async def resolve_video(client: ReelmillClient, given: str) -> str:
    """The whole id of the caller's video ``given`` names (a whole id or a unique prefix)."""

    async def page(token: str) -> tuple[list[tuple[str, str]], str]:
        videos, next_token = await client.list_videos(page_size=500, page_token=token)
        return [(video.id, video.filename) for video in videos], next_token

    return await _resolve(given, "video", page)


def short(item_id: str, others: Sequence[str], minimum: int = 8) -> str:
    """The shortest start of ``item_id`` (at least ``minimum`` characters) that no id in
    ``others`` shares."""
    for length in range(minimum, len(item_id) + 1):
        head = item_id[:length]
        if not any(other != item_id and other.startswith(head) for other in others):
            return head
    return item_id
