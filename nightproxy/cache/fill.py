"""Single-flight cache fills with a tee: one upstream download, any number of readers.

A fill is a task the application owns. It streams the upstream body into a temporary file
(positional writes) and hashes it; readers follow the temporary file as it grows, each through
its own duplicate of the fill's descriptor (so the rename into the store does not disturb them),
and receive bytes as they arrive: as spans to ``sendfile`` from the page cache, or as chunks.
The last byte of a file (of the size the upstream announced, where it did) is held back from
every reader until the digest and the size are verified: a client can never see a complete body
of unverified bytes, and a mismatch leaves it with a short read, which pip and uv report as an
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO

from nightproxy.cache.store import CacheStore
from nightproxy.upstreams.base import CHUNK_SIZE, Download

log = logging.getLogger(__name__)


class FillError(Exception):
    """The fill failed; readers that already sent bytes must abort their response."""


class HashMismatchError(FillError):
    pass


class SizeMismatchError(FillError):
    """The upstream sent more or fewer bytes than it announced."""


class Fill:
    def __init__(self, key: str, tmp_path: Path, expected_sha256: str | None) -> None:
        self.key = key
        self.tmp_path = tmp_path
        self.expected_sha256 = expected_sha256
        self.size: int | None = None
        self.written = 0
        #: Every byte is written, the digest matched (or there was none to match) and the fill
        #: ended without error.
        self.verified = False
        self.done = False
        self.error: BaseException | None = None
        self.sha256: str | None = None
        self.cached = False
        self.headers_ready = asyncio.Event()
        self.finished = asyncio.Event()
        self._progress = asyncio.Event()
        self._fd: int | None = None

    # -- writer side ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reader side ----------------------------------------------------------------------------

    async def wait_started(self) -> None:
        """Until the upstream answered (size known) or the fill failed."""
        await self.headers_ready.wait()
        if self.error is not None and self.written == 0:
            raise FillError(str(self.error)) from self.error

    async def open_reader(self) -> BinaryIO:
        """A file object on the bytes being filled, for ``spans`` (close it).

        A duplicate descriptor, so the rename into the store and the writer closing its own do
        not disturb the reader. It shares the file offset with the writer and every other
        reader: read it only at explicit positions (``os.sendfile`` with an offset, ``pread``),
        never by seeking.
        """
        await self.wait_started()
        if self._fd is None:
            raise FillError("fill has no data")
        return os.fdopen(os.dup(self._fd), "rb", buffering=0)

    async def spans(self) -> AsyncGenerator[tuple[int, int]]:
        """(offset, length) of each run of bytes that may be sent, as they arrive.

        Raises ``FillError`` if the fill fails before the last byte was released.
        """
        offset = 0
        while True:
            progress = self._progress
            verified = self.verified
            if verified:
                limit = self.written
            elif self.size is None:
                limit = self.written - 1
            else:
                # The response announced ``size`` bytes: reaching it is what makes a body look
                # complete, so byte ``size - 1`` (and anything an upstream sends beyond the size
                # it announced) waits for verification, however much has been written.
                limit = min(self.written, self.size - 1)
            if offset < limit:
                yield offset, limit - offset
                offset = limit
                continue
            if verified:
                return
            if self.done:
                error = self.error or FillError("download ended unverified")
                raise FillError(str(error)) from error
            await progress.wait()


async def read_span(
    reader: BinaryIO, offset: int, length: int, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """``length`` bytes from ``offset`` of a filling file, in chunks read in a thread."""
    fd, end = reader.fileno(), offset + length
    while offset < end:
        data = await asyncio.to_thread(os.pread, fd, min(end - offset, chunk_size), offset)
        if not data:
            raise FillError("cache file shrank under a reader")
        offset += len(data)
        yield data


#: Buffers per vectored write (the system's limit).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_batch(fd: int, batch: list[bytes], offset: int, digest: hashlib._Hash) -> None:
    for start in range(0, len(batch), _IOV_MAX):
        part = batch[start : start + _IOV_MAX]
        total = sum(map(len, part))
        written = os.pwritev(fd, part, offset)
        if written < total:
            _pwrite_rest(fd, part, offset, written)
        offset += total
        for data in part:
            digest.update(data)


def _pwrite_rest(fd: int, part: list[bytes], offset: int, done: int) -> None:
    """Finish a short vectored write: the bytes of ``part`` after its first ``done``."""
    position = offset + done
    for data in part:
        if done >= len(data):
            done -= len(data)
            continue
        view = memoryview(data)[done:]
        done = 0
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]


#: Received bytes held while the previous batch is being written; beyond this the download
#: waits for the disk (bounded memory per fill).
SPOOL_LIMIT = 4 * CHUNK_SIZE
#: What a held chunk costs beyond its bytes (object and list slot), counted against the limit
#: so that an upstream sending tiny chunks cannot make the batch a list of millions.
CHUNK_OVERHEAD = 64


class _Spooler:
    """Writes a fill's chunks to its file in a thread, one batch per hop.

    Whatever arrives while a batch is being written becomes the next batch: a slow upstream's
    bytes reach readers at once, a fast one's go in few large hops, and chunks are never joined
    (copied) on the event loop.
    """

    def __init__(
        self, fill: Fill, fd: int, digest: hashlib._Hash, on_written: Callable[[int], None]
    ) -> None:
        self._fill = fill
        self._fd = fd
        self._digest = digest
        self._on_written = on_written
        self._batch: list[bytes] = []
        self._size = 0
        self._writing: asyncio.Task[None] | None = None

    async def put(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._size += len(chunk)
        writing = self._writing
        if writing is None or writing.done():
            if writing is not None:
                writing.result()  # a failed write fails the fill
            # The batch is what has arrived by now, not by the time the task first runs (the
            # download may hand over several buffered chunks before that): a fill's first
            # bytes reach readers after one chunk is written, not several.
            self._writing = asyncio.create_task(self._drain(*self._take()))
        elif self._size + CHUNK_OVERHEAD * len(self._batch) >= SPOOL_LIMIT:
            await asyncio.shield(writing)

    def _take(self) -> tuple[list[bytes], int]:
        batch, size = self._batch, self._size
        self._batch, self._size = [], 0
        return batch, size

    async def _drain(self, batch: list[bytes], size: int) -> None:
        fill = self._fill
        while batch:
            await asyncio.to_thread(_write_batch, self._fd, batch, fill.written, self._digest)
            fill.written += size
            self._on_written(size)
            fill._notify()
            batch, size = self._take()

    async def close(self) -> None:
        """Wait for the running write, then write what is left (unless the fill failed).

        Returns only once no thread writes to the descriptor any more, even when the fill is
        cancelled meanwhile (the cancellation is passed on afterwards): the caller closes the
        descriptor next, and a write landing after that could go to whatever file reuses it.
        """
        writing = self._writing
        if writing is not None:
            cancelled = False
            while not writing.done():
                try:
                    await asyncio.shield(writing)
                except asyncio.CancelledError:
                    cancelled = True
            if cancelled:
                raise asyncio.CancelledError
            writing.result()
        if self._batch:
            await self._drain(*self._take())


class FillManager:
    """Owns every running fill; at most one per file key."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.upstream_bytes = 0
        self.hash_mismatches = 0

    @property
    def in_flight(self) -> int:
        return len(self._fills)

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def start(
        self,
        key: str,
        opener: Callable[[], AbstractAsyncContextManager[Download]],
        *,
        expected_sha256: str | None,
        filename: str,
        upstream: str,
        on_done: Callable[[Fill], None] | None = None,
    ) -> Fill:
        """Join the running fill for ``key`` or start one."""
        fill = self._fills.get(key)
        if fill is not None:
            return fill
        fill = Fill(key, self.store.temp_path(key), expected_sha256)
        self._fills[key] = fill
        task = asyncio.create_task(
            self._run(fill, opener, filename=filename, upstream=upstream, on_done=on_done),
            name=f"fill {filename}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _run(
        self,
        fill: Fill,
        opener: Callable[[], AbstractAsyncContextManager[Download]],
        *,
        filename: str,
        upstream: str,
        on_done: Callable[[Fill], None] | None,
    ) -> None:
        reserved = 0
        digest = hashlib.sha256()
        try:
            async with opener() as download:
                fill.size = download.size
                fill._fd = await asyncio.to_thread(
                    os.open, fill.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644
                )
                if download.size is not None:
                    victims = self.store.reserve(download.size)
                    if victims is not None:
                        reserved = download.size
                        if victims:
                            await asyncio.to_thread(self.store.delete_blobs, victims)
                fill.headers_ready.set()
                spooler = _Spooler(fill, fill._fd, digest, self._count)
                announced, received = download.size, 0
                try:
                    async for chunk in download.chunks():
                        received += len(chunk)
                        if announced is not None and received > announced:
                            # Checked here for every kind of upstream: not every one enforces
                            # its own length (a local file can grow while it is read).
                            raise SizeMismatchError(
                                f"{filename} from {upstream!r}: more than the {announced} "
                                "bytes announced"
                            )
                        await spooler.put(chunk)
                finally:
                    # Also on failure or cancellation: the descriptor is closed below, and a
                    # write still running in its thread must not outlive it.
                    await spooler.close()
            if fill.size is not None and fill.written != fill.size:
                raise SizeMismatchError(
                    f"{filename} from {upstream!r}: {fill.written} bytes of the {fill.size} "
                    "announced"
                )
            sha = digest.hexdigest()
            if fill.expected_sha256 is not None and sha != fill.expected_sha256:
                self.hash_mismatches += 1
                raise HashMismatchError(
                    f"{filename} from {upstream!r}: sha256 {sha} does not match the index's "
                    f"{fill.expected_sha256}"
                )
            fill.sha256 = sha
            if reserved == 0 and fill.size is None:
                victims = self.store.reserve(fill.written)
                if victims is not None:
                    reserved = fill.written
                    if victims:
                        await asyncio.to_thread(self.store.delete_blobs, victims)
            if reserved:
                await asyncio.to_thread(
                    self.store.admit_file,
                    fill.tmp_path,
                    sha,
                    fill.written,
                    filename=filename,
                    upstream=upstream,
                )
                self.store.admitted(sha, fill.written, reserved, filename, upstream=upstream)
                reserved = 0
                fill.cached = True
                if fill.key != sha:
                    await asyncio.to_thread(self.store.record_alias, fill.key, sha)
            else:
                log.info("%s is larger than the cache budget: streamed without caching", filename)
        except asyncio.CancelledError:
            fill.error = FillError("fill cancelled at shutdown")
            raise
        except HashMismatchError as exc:
            log.error("%s", exc)  # noqa: TRY400 - the traceback says nothing more
            fill.error = exc
        except Exception as exc:
            log.warning("fill of %s from %r failed: %s", filename, upstream, exc)
            if isinstance(exc, OSError) and exc.errno in {errno.ENOSPC, errno.EDQUOT}:
                self.store.note_write_error()
            fill.error = exc
        finally:
            # Settle the fill before any await: a request arriving meanwhile must start a new
            # fill (or find the cached file), never join this finished one.
            self._fills.pop(fill.key, None)
            if reserved:
                self.store.release(reserved)
            try:
                if not fill.cached:
                    # Gone before anyone hears how the fill ended: a client told of a failure
                    # must not find its leftovers (readers keep their own descriptors).
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(fill.tmp_path.unlink)
            finally:
                # The last byte goes out once the file is in the store as well, so that a
                # client that saw a complete body finds it cached on its next request.
                fill.verified = fill.error is None
                fill.done = True
                fill.headers_ready.set()
                fill.finished.set()
                fill._notify()
                fill._close_fd()
                if on_done is not None:
                    on_done(fill)

    def _count(self, size: int) -> None:
        self.upstream_bytes += size

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, timeout: float) -> None:
        """Let running fills finish (graceful shutdown), then cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self.close()
