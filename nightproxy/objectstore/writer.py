"""Writing an object that appears only whole, however it is fed.

Bytes are buffered into parts and uploaded as a multipart upload as they come; nothing is
visible under the key until ``commit``, which completes the upload (or, for an object smaller
than one part, PUTs it in one request, which S3 also makes visible atomically). Leaving the
context without committing aborts the upload, so a failed or cancelled writer leaves no object
and, as far as the store answers, no parts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType

from nightproxy.objectstore.client import ObjectStore
from nightproxy.objectstore.errors import StoreError

log = logging.getLogger(__name__)

#: S3's smallest part but the last is 5 MiB; 8 MiB keeps the part count of a 1 GiB wheel at 128.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024


class ObjectWriter:
    """``async with store_writer(store, key) as w: await w.write(...); await w.commit()``."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.store = store
        self.key = key
        self.part_size = part_size
        self.content_type = content_type
        self.metadata = metadata
        self.size = 0
        self.etag: str | None = None
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._etags: list[str] = []
        self._done = False

    async def __aenter__(self) -> ObjectWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            # Shielded: a cancelled fill must still drop the parts it uploaded.
            await asyncio.shield(self.abort())

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self.part_size:
            part = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            await self._upload(part)

    async def _upload(self, part: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = await self.store.create_multipart(
                self.key, content_type=self.content_type, metadata=self.metadata
            )
        number = len(self._etags) + 1
        self._etags.append(await self.store.upload_part(self.key, self._upload_id, number, part))

    async def commit(self, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Make the object appear with every byte written; its ETag.

        ``if_none_match``: only if no object has the key yet; ``if_match``: only if the object
        is still that ETag (``PreconditionFailedError`` otherwise, and the upload is aborted).
        """
        if self._done:
            raise RuntimeError("commit after commit or abort")
        if self._upload_id is None:
            self.etag = await self.store.put(
                self.key,
                bytes(self._buffer),
                if_none_match=if_none_match,
                if_match=if_match,
                content_type=self.content_type,
                metadata=self.metadata,
            )
        else:
            if self._buffer or not self._etags:
                await self._upload(bytes(self._buffer))
            self.etag = await self.store.complete_multipart(
                self.key,
                self._upload_id,
                self._etags,
                if_none_match=if_none_match,
                if_match=if_match,
            )
        self._buffer.clear()
        self._done = True
        return self.etag

    async def abort(self) -> None:
        """Drop what was uploaded; never raises (a store that is down keeps the parts until its
        own lifecycle rule or the next clean-up of stale uploads removes them)."""
        self._done = True
        self._buffer.clear()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            await self.store.abort_multipart(self.key, upload_id)
        except StoreError as exc:
            log.warning("could not abort the upload of %s: %s", self.key, exc.reason)
