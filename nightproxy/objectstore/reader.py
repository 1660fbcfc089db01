"""A GET's answer from the object store, read as it arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import aiohttp

from nightproxy.objectstore.errors import StoreDownError, StoreError
from nightproxy.objectstore.wire import ObjectInfo

#: Error and small XML answers are read whole, up to this.
SMALL_BODY_MAX = 16 * 1024 * 1024
READ_CHUNK = 256 * 1024
_Item = TypeVar("_Item")


class ObjectReader:
    """A GET's answer, read as it arrives. Failures while reading are ``StoreDownError``."""

    def __init__(self, response: aiohttp.ClientResponse, info: ObjectInfo, what: str) -> None:
        self.response = response
        self.info = info
        self.status = response.status
        self._what = what

    async def chunks(self, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        async for chunk in self._guarded(self._sized(size)):
            yield chunk

    async def chunks_as_received(self) -> AsyncIterator[bytes]:
        """The body in the pieces the connection received, never joined (copied) into
        larger ones: what a stream to disk and to clients wants."""
        async for chunk in self._guarded(self.response.content.iter_chunks()):
            if chunk[0]:  # a chunked body's chunk ends arrive as empty pieces
                yield chunk[0]

    async def _sized(self, size: int) -> AsyncIterator[bytes]:
        while chunk := await self.response.content.read(size):
            yield chunk

    async def _guarded(self, body: AsyncIterator[_Item]) -> AsyncIterator[_Item]:
        try:
            async for item in body:
                yield item
        except TimeoutError as exc:
            raise StoreDownError(f"{self._what}: timed out reading the body") from exc
        except aiohttp.ClientError as exc:
            raise StoreDownError(f"{self._what}: {type(exc).__name__} reading the body") from exc

    async def read(self, limit: int = SMALL_BODY_MAX) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise StoreError(f"{self._what}: larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)
