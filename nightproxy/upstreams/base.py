"""The one small interface every upstream kind implements."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.model import DistFile, ProjectPage

#: Large reads keep the number of event-loop wake-ups and thread hops per file low.
CHUNK_SIZE = 1024 * 1024
#: Receive buffer for file bodies: a fast upstream fills it between two thread hops, so each
#: hop writes up to this much (aiohttp's 64 KiB default meant one hop per 64 KiB).
FILE_READ_BUFFER = 1024 * 1024
#: Pages up to this size are parsed on the event loop; larger ones in a thread. A big page
#: (thousands of nightly wheels) takes most of a second to parse, which would stall every
#: other request, while for a small one the thread hop costs more than the parse.
PARSE_INLINE_MAX = 256 * 1024

_T = TypeVar("_T")


async def run_parser(size: int, parser: Callable[[], _T]) -> _T:
    """``parser()`` of ``size`` bytes: in a thread above ``PARSE_INLINE_MAX``, else inline."""
    if size > PARSE_INLINE_MAX:
        return await asyncio.to_thread(parser)
    return parser()


@dataclass(frozen=True, slots=True)
class NotModified:
    """The upstream confirmed that the page we hold is still current (304)."""


@dataclass(frozen=True, slots=True)
class NotFound:
    """The upstream does not have this project."""


FetchResult = ProjectPage | NotModified | NotFound


@dataclass(frozen=True, slots=True)
class RangeBody:
    """Bytes ``start`` to ``start + len(data)`` of an upstream file of ``total`` bytes."""

    start: int
    data: bytes
    total: int


#: Reads ``length`` bytes at ``start`` (``None``: the last ``length`` bytes) of one file. None
#: back when the upstream does not answer ranges, or the file changed between two reads.
RangeFetch = Callable[[int | None, int], Awaitable[RangeBody | None]]


class Download(abc.ABC):
    """An open upstream file body."""

    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body, in chunks of any size as they arrive. Ends early only by raising."""


class HttpDownload(Download):
    def __init__(self, response: aiohttp.ClientResponse, upstream: str) -> None:
        self._response = response
        self._upstream = upstream
        self.size = response.content_length
        self.etag = response.headers.get("ETag")
        self.last_modified = response.headers.get("Last-Modified")

    async def chunks(self) -> AsyncIterator[bytes]:
        from nightproxy.upstreams.http import UpstreamError

        received = 0
        try:
            # As received, without joining: the fill batches them for its thread hop.
            async for chunk, _end_of_http_chunk in self._response.content.iter_chunks():
                received += len(chunk)
                yield chunk
        except TimeoutError as exc:
            raise UpstreamError(self._upstream, "timed out while streaming a file") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                self._upstream, f"{type(exc).__name__} while streaming a file"
            ) from exc
        if self.size is not None and received != self.size:
            raise UpstreamError(self._upstream, f"body ended after {received} of {self.size} bytes")


class Upstream(abc.ABC):
    """A feed of distribution files."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        #: How long what the upstream lists stays fresh: its own ``ttl``, else ``index.ttl``,
        #: which the index (that owns freshness) sets here. A kind that keeps a listing for
        #: many pages (a bucket's) keeps it no longer than this.
        self.ttl: float = config.ttl if config.ttl is not None else 600.0

    @abc.abstractmethod
    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """The project's files; ``NotModified`` when the validators still match."""

    @abc.abstractmethod
    async def fetch_project_list(self) -> Collection[NormalizedName] | None:
        """Every project the feed has, or None when the feed cannot list its projects."""

    @abc.abstractmethod
    def open_file(self, file: DistFile) -> AbstractAsyncContextManager[Download]:
        """Open a file of this feed for streaming."""

    def open_metadata(self, file: DistFile) -> AbstractAsyncContextManager[Download] | None:
        """Open the file's PEP 658 metadata where the feed publishes it, else None."""
        return None

    def range_reader(self, file: DistFile) -> RangeFetch | None:
        """Byte-range reads of one file, where the feed may answer them, else None."""
        return None

    async def probe(self) -> None:
        """Check, as cheaply as the kind allows, that the upstream answers at all (for
        readiness); raises UpstreamError when it does not."""
        await self.fetch_project_list()

    async def close(self) -> None:
        """Release what the upstream holds beyond the shared session."""
