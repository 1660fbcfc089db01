"""What ``nightproxy feed ...`` does: delete, restore and prune a hosted feed from a shell.

A command opens the feed's storage as the server does and works on the same records, so it
may run beside a live server (the server sees the change within a second). Whoever can run it
can read the feed's folder or bucket anyway: it acts as an admin of the feed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from packaging.utils import InvalidName, NormalizedName, canonicalize_name

from nightproxy.config import Config
from nightproxy.hosted.auth import Identity
from nightproxy.hosted.feed import HostedFeed
from nightproxy.hosted.prune import Deletion
from nightproxy.hosted.records import FileRecord
from nightproxy.hosted.setup import find_hosted, hosted_upstreams, make_feed

_T = TypeVar("_T")

#: Who a command acts as: the person at the shell, named in the trash's records.
OPERATOR = Identity("nightproxy feed (command line)", admin=True)


class FeedCommandError(Exception):
    """A command that cannot run as asked; the message says why."""


def project_name(text: str) -> NormalizedName:
    try:
        return canonicalize_name(text, validate=True)
    except InvalidName:
        raise FeedCommandError(f"{text!r} is not a project name") from None


def feed_names(config: Config, name: str | None) -> list[str]:
    """The hosted feeds a command works on: the one named, or all of them."""
    names = [u.name for u in hosted_upstreams(config)]
    if name is None:
        if not names:
            raise FeedCommandError(f"{config.source} configures no hosted feed")
        return names
    if find_hosted(config, name) is None:
        known = ", ".join(names) or "none"
        raise FeedCommandError(f"no hosted feed named {name!r} (hosted feeds: {known})")
    return [name]


async def with_feed(config: Config, name: str, action: Callable[[HostedFeed], Awaitable[_T]]) -> _T:
    upstream = find_hosted(config, name)
    assert upstream is not None
    async with aiohttp.ClientSession(trust_env=True) as session:
        feed = make_feed(config, upstream, session)
        await feed.open()
        try:
            return await action(feed)
        finally:
            await feed.close()


def describe_file(record: FileRecord) -> str:
    return f"{record.project}/{record.filename}"


def describe_deletion(deletion: Deletion[FileRecord]) -> str:
    return f"{describe_file(deletion.file)}: {deletion.reason}"


async def delete(
    config: Config, name: str, project: str, *, version: str | None, filename: str | None
) -> list[str]:
    async def action(feed: HostedFeed) -> list[FileRecord]:
        return await feed.delete(
            OPERATOR, project_name(project), filename=filename, version=version
        )

    deleted = await with_feed(config, feed_names(config, name)[0], action)
    return [f"moved to the trash: {describe_file(record)}" for record in deleted]


async def restore(
    config: Config, name: str, project: str, *, version: str | None, filename: str | None
) -> list[str]:
    async def action(feed: HostedFeed) -> list[FileRecord]:
        return await feed.restore(project_name(project), filename=filename, version=version)

    restored = await with_feed(config, feed_names(config, name)[0], action)
    return [f"restored: {describe_file(record)}" for record in restored]


async def prune(config: Config, name: str | None, *, dry_run: bool) -> list[str]:
    lines: list[str] = []
    for feed_name in feed_names(config, name):

        async def action(feed: HostedFeed) -> list[Deletion[FileRecord]]:
            deletions = await feed.prune(dry_run=dry_run)
            if not dry_run:
                await feed.expire_trash()
            return deletions

        deletions = await with_feed(config, feed_name, action)
        verb = "would delete" if dry_run else "deleted"
        lines.append(f"{feed_name}: {verb} {len(deletions)} files")
        lines.extend(f"  {describe_deletion(d)}" for d in deletions)
    return lines
