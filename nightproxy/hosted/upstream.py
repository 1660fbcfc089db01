"""``kind: hosted`` as an upstream of the merged index.

The feed's live files are listed like any other upstream's, with their PEP 700 upload time,
size and sha256, and PEP 658 metadata for wheels. A page's validator is the feed's generation,
so an unchanged feed answers ``NotModified`` without rebuilding anything.

The bytes are the feed's own: the server serves them straight from storage (a local feed's
with ``web.FileResponse``), never through the download cache, whose LRU must not evict them
and which would only hold a second copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType

from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.hosted.feed import HostedFeed
from nightproxy.hosted.records import FileRecord
from nightproxy.model import DistFile, ProjectPage
from nightproxy.upstreams.base import (
    Download,
    FetchResult,
    NotFound,
    NotModified,
    Upstream,
)
from nightproxy.upstreams.http import UpstreamError

#: Seconds at most between two looks at the storage for a project the listing lacks.
UNKNOWN_RECHECK = 0.1
#: The scheme of a hosted file's (never published) upstream URL: ``hosted://<feed>/<sha256>``.
SCHEME = "hosted"


def dist_file(feed: str, record: FileRecord) -> DistFile:
    return DistFile(
        filename=record.filename,
        url=f"{SCHEME}://{feed}/{record.sha256}",
        upstream=feed,
        hashes=MappingProxyType({"sha256": record.sha256}),
        requires_python=record.requires_python,
        size=record.size,
        upload_time=record.upload_time,
        core_metadata=(
            MappingProxyType({"sha256": record.metadata_sha256})
            if record.metadata_sha256 is not None
            else False
        ),
        change_marker=record.sha256,
    )


class _StoredDownload(Download):
    """The stored bytes of one file, exactly as recorded."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        self._chunks = chunks
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class HostedUpstream(Upstream):
    def __init__(self, config: UpstreamConfig, feed: HostedFeed) -> None:
        if config.ttl is None:
            # A page costs nothing to check (its validator is the feed's generation), and
            # another process's upload should show within about a second, not index.ttl.
            config = dataclasses.replace(config, ttl=feed.settings.recheck)
        super().__init__(config)
        self.feed = feed

    def _etag(self, generation: int) -> str:
        return f'"{self.name}-{generation}"'

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        snapshot = await self.feed.snapshot()
        if project not in snapshot.projects:
            # A project just uploaded through another process or server: looked for now
            # (not more often than every UNKNOWN_RECHECK), so that it installs at once.
            snapshot = await self.feed.snapshot(max_age=UNKNOWN_RECHECK)
        current = self._etag(snapshot.generation)
        if etag is not None and etag == current:
            return NotModified()
        records = snapshot.projects.get(project)
        if not records:
            return NotFound()
        return ProjectPage(
            name=project,
            files=tuple(dist_file(self.name, record) for record in records),
            etag=current,
        )

    async def fetch_project_list(self) -> frozenset[NormalizedName] | None:
        return frozenset((await self.feed.snapshot()).projects)

    async def _live(self, file: DistFile) -> FileRecord:
        """The live record of a listed file; an error once it is deleted or replaced."""
        sha = file.sha256
        snapshot = await self.feed.snapshot()
        record = snapshot.digests.get(sha) if sha is not None else None
        if record is None or record.sha256 != sha or record.filename != file.filename:
            raise UpstreamError(self.name, f"{file.filename} is no longer in the feed")
        return record

    def open_file(self, file: DistFile) -> AbstractAsyncContextManager[Download]:
        return self._open(file)

    @asynccontextmanager
    async def _open(self, file: DistFile) -> AsyncIterator[Download]:
        record = await self._live(file)
        with self.feed.serving(record.sha256):
            async with self.feed.storage.open_bytes(record) as chunks:
                yield _StoredDownload(chunks, record.size)

    def open_metadata(self, file: DistFile) -> AbstractAsyncContextManager[Download] | None:
        if not file.core_metadata:
            return None
        return self._open_metadata(file)

    @asynccontextmanager
    async def _open_metadata(self, file: DistFile) -> AsyncIterator[Download]:
        record = await self._live(file)
        if record.metadata_sha256 is None:
            raise UpstreamError(self.name, f"{file.filename} has no metadata")
        data = await self.feed.storage.read_blob(record.metadata_sha256)
        yield _StoredDownload(_once(data), len(data))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
