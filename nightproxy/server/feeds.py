"""Hosted feeds in the server: opened with the app, listed by the index, served from storage.

A hosted feed's files never go through the download cache: they are its own, so the cache's
LRU must not evict them and a second copy would only cost disk. A file is served straight
from its content-addressed blob with ``web.FileResponse``, and only while the feed lists it
under that name: a link to bytes an overwrite or a deletion replaced answers 404, never other
bytes. While a response sends a blob, the feed's trash keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from packaging.utils import NormalizedName

from nightproxy.hosted.feed import HostedFeed
from nightproxy.hosted.records import FileRecord
from nightproxy.hosted.setup import hosted_upstreams, make_feed
from nightproxy.hosted.upstream import HostedUpstream
from nightproxy.model import PublishedFile
from nightproxy.objectstore import StoreError
from nightproxy.server import keys
from nightproxy.server.feeds_status import FeedCollector
from nightproxy.upstreams import make_upstream
from nightproxy.upstreams.base import Upstream

log = logging.getLogger(__name__)

FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
OCTET = "application/octet-stream"
METADATA_TYPE = "text/plain; charset=utf-8"


async def feeds_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open every hosted feed and run its retention as a task the app owns."""
    config = app[keys.CONFIG]
    feeds: dict[str, HostedFeed] = {}
    try:
        for upstream in hosted_upstreams(config):
            feed = make_feed(config, upstream, app[keys.SESSION])
            await feed.open()
            feeds[upstream.name] = feed
    except BaseException:
        for feed in feeds.values():
            await feed.close()
        raise
    app[keys.FEEDS] = feeds
    app[keys.METRICS].registry.register(FeedCollector(feeds))
    for feed in feeds.values():
        await feed.snapshot()  # metrics read the last listing
    tasks = [
        asyncio.create_task(feed.maintain(), name=f"retention of feed {name}")
        for name, feed in feeds.items()
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for feed in feeds.values():
        await feed.close()


def make_upstreams(app: web.Application, session: aiohttp.ClientSession) -> dict[str, Upstream]:
    """Every configured upstream, the hosted ones over their open feeds."""
    feeds = app[keys.FEEDS]
    upstreams: dict[str, Upstream] = {}
    for config in app[keys.CONFIG].upstreams:
        if config.kind == "hosted":
            upstreams[config.name] = HostedUpstream(config, feeds[config.name])
        else:
            upstreams[config.name] = make_upstream(config, session)
    return upstreams


def follow_feeds(app: web.Application) -> None:
    """Let a feed's changes through this process show in the index at once."""
    index = app[keys.INDEX]
    for name, feed in app[keys.FEEDS].items():

        def changed(projects: frozenset[NormalizedName], upstream: str = name) -> None:
            index.upstream_changed(upstream, projects)

        feed.on_change.append(changed)


class _ServedBlob(web.FileResponse):
    """A blob sent while the feed knows it is being downloaded (its trash then keeps it)."""

    def __init__(self, feed: HostedFeed, digest: str, path: Path, content_type: str) -> None:
        super().__init__(
            path, headers={"Content-Type": content_type, "Cache-Control": FILE_CACHE_CONTROL}
        )
        self._feed = feed
        self._digest = digest

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        with self._feed.serving(self._digest):
            return await super().prepare(request)


async def serve_hosted(
    request: web.Request, pub: PublishedFile, *, metadata: bool = False
) -> web.StreamResponse | None:
    """The answer for a file (or its METADATA) of a hosted feed; None for other feeds' files."""
    upstream = request.app[keys.UPSTREAMS].get(pub.source.upstream)
    if not isinstance(upstream, HostedUpstream):
        return None
    feed = upstream.feed
    snapshot = await feed.snapshot()
    sha = pub.source.sha256
    record = snapshot.digests.get(sha) if sha is not None else None
    if record is None or record.sha256 != sha or record.filename != pub.filename:
        raise web.HTTPNotFound(text=f"{pub.filename} is no longer in feed {feed.name}\n")
    digest = record.sha256
    if metadata:
        if record.metadata_sha256 is None:
            raise web.HTTPNotFound(text="no such metadata\n")
        digest = record.metadata_sha256
    path = feed.storage.local_path(digest)
    if path is not None:
        return _ServedBlob(feed, digest, path, METADATA_TYPE if metadata else OCTET)
    headers = {"Cache-Control": FILE_CACHE_CONTROL}
    if metadata:
        data = await feed.storage.read_blob(digest)
        return web.Response(body=data, content_type="text/plain", charset="utf-8", headers=headers)
    return await _stream_stored(request, feed, record, headers)


async def _stream_stored(
    request: web.Request, feed: HostedFeed, record: FileRecord, headers: dict[str, str]
) -> web.StreamResponse:
    """A file of a feed kept in a bucket, streamed as the store sends it."""
    response = web.StreamResponse(
        headers={**headers, "Content-Type": OCTET, "Content-Length": str(record.size)}
    )
    try:
        with feed.serving(record.sha256):
            async with feed.storage.open_bytes(record) as chunks:
                await response.prepare(request)
                if request.method == "HEAD":
                    return response
                async for chunk in chunks:
                    await response.write(chunk)
    except StoreError as exc:
        if not response.prepared:
            raise web.HTTPBadGateway(text=f"feed {feed.name}: {exc.reason}\n") from None
        raise  # mid-body: the connection is cut, the client sees a short body
    await response.write_eof()
    return response
