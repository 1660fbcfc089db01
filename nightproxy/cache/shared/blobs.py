"""Verified files in the shared store, content-addressed, and their aliases.

``blobs/<sha[:2]>/<sha>`` holds the bytes whose sha256 is ``sha`` (the two-character level
spreads keys over the store's partitions). A file whose feed publishes no hash is reached
through ``aliases/<key>``, a small object naming the sha256 it was verified to have. A blob is
uploaded from the local, verified copy and its sha256 checked again while it is read: the
multipart upload is completed only when the digest matches, so the store never shows a partial
or unverified file.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from nightproxy.cache.store import is_sha256
from nightproxy.objectstore import (
    ObjectNotFoundError,
    ObjectReader,
    ObjectStore,
    PreconditionFailedError,
)
from nightproxy.objectstore.writer import DEFAULT_PART_SIZE, ObjectWriter
from nightproxy.upstreams.base import Download

BLOBS = "blobs/"
ALIASES = "aliases/"


def blob_key(sha256: str) -> str:
    return f"{BLOBS}{sha256[:2]}/{sha256}"


def sha_of_blob_key(key: str) -> str | None:
    """The sha256 a ``blobs/`` key (relative to the store's prefix) names, or None."""
    if not key.startswith(BLOBS):
        return None
    name = key.rpartition("/")[2]
    return name if is_sha256(name) and key == blob_key(name) else None


class StoreDownload(Download):
    """A blob read from the store, as the fill machinery reads any download.

    ``check``, where set, is called before each chunk is passed on: it raises when the
    chunk must not be used (the read's announcement to the pruner, ``readers``, is late).
    """

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self.size = reader.info.size if reader.info.size >= 0 else None
        self.etag = reader.info.etag
        self.check: Callable[[], None] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._reader.chunks_as_received():
            if self.check is not None:
                self.check()
            yield chunk


class UploadMismatchError(Exception):
    """The local copy no longer has the bytes it was admitted with: nothing is uploaded."""


def _read_hashing(file: BinaryIO, size: int, digest: hashlib._Hash) -> bytes:
    data = file.read(size)
    digest.update(data)
    return data


class SharedBlobs:
    def __init__(self, store: ObjectStore, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        self.store = store
        self.part_size = part_size

    async def resolve(self, key: str) -> str | None:
        """The sha256 of the file ``key`` names, where the fleet knows it."""
        if is_sha256(key):
            return key
        try:
            body, _ = await self.store.get(ALIASES + key, limit=1024)
        except ObjectNotFoundError:
            return None
        sha = body.decode("ascii", errors="replace").strip()
        return sha if is_sha256(sha) else None

    async def exists(self, sha256: str) -> bool:
        try:
            await self.store.head(blob_key(sha256))
        except ObjectNotFoundError:
            return False
        return True

    @asynccontextmanager
    async def open(self, sha256: str, *, start: int = 0) -> AsyncIterator[StoreDownload]:
        """Stream the blob (``ObjectNotFoundError`` when the store has none)."""
        async with self.store.open(blob_key(sha256), start=start) as reader:
            yield StoreDownload(reader)

    async def put_alias(self, key: str, sha256: str) -> None:
        if key != sha256:
            await self.store.put(ALIASES + key, sha256.encode(), content_type="text/plain")

    async def upload_file(self, path: Path, sha256: str) -> bool:
        """Upload a verified local file as ``sha256``'s blob; False when the store has it.

        The bytes are hashed again as they are read, and the upload completed only if they
        still have ``sha256``: a local copy damaged since its admission is never shared.
        """
        if await self.exists(sha256):
            return False
        digest = hashlib.sha256()
        file = await asyncio.to_thread(path.open, "rb")
        try:
            async with ObjectWriter(
                self.store, blob_key(sha256), part_size=self.part_size
            ) as writer:
                while data := await asyncio.to_thread(_read_hashing, file, self.part_size, digest):
                    await writer.write(data)
                if digest.hexdigest() != sha256:
                    raise UploadMismatchError(f"{path.name}: local copy does not match {sha256}")
                try:
                    await writer.commit(if_none_match=True)
                except PreconditionFailedError:
                    return False  # another replica's upload of the same bytes won
        finally:
            await asyncio.to_thread(file.close)
        return True
