"""Single-flight cache fills with a tee: one upstream download, any number of readers.

A fill is a task the application owns. It streams the upstream body into a temporary file and
hashes it; readers follow the temporary file as it grows (through a shared descriptor and
``pread``, so the rename into the store does not disturb them) and receive bytes as they
arrive. The last byte of a file is held back from every reader until the digest is verified:
a client can never see a complete body of unverified bytes, and a mismatch leaves it with a
short read, which pip and uv report as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from nightproxy.cache.store import CacheStore
from nightproxy.upstreams.base import CHUNK_SIZE, Download

log = logging.getLogger(__name__)


class FillError(Exception):
    """The fill failed; readers that already sent bytes must abort their response."""


class HashMismatchError(FillError):
    pass


class Fill:
    def __init__(self, key: str, tmp_path: Path, expected_sha256: str | None) -> None:
        self.key = key
        self.tmp_path = tmp_path
        self.expected_sha256 = expected_sha256
        self.size: int | None = None
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self.sha256: str | None = None
        self.cached = False
        self.headers_ready = asyncio.Event()
        self.finished = asyncio.Event()
        self._progress = asyncio.Event()
        self._fd: int | None = None
        self._users = 1  # the writer

    # -- writer side ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _acquire(self) -> None:
        self._users += 1

    def _release_fd(self) -> None:
        self._users -= 1
        if self._users == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reader side ----------------------------------------------------------------------------

    async def wait_started(self) -> None:
        """Until the upstream answered (size known) or the fill failed."""
        await self.headers_ready.wait()
        if self.error is not None and self.written == 0:
            raise FillError(str(self.error)) from self.error

    async def read(self, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The file's bytes, as they arrive; raises ``FillError`` if the fill fails."""
        await self.wait_started()
        if self._fd is None:
            raise FillError("fill has no data")
        self._acquire()
        fd = self._fd
        offset = 0
        try:
            while True:
                progress = self._progress
                verified = self.done and self.error is None
                limit = self.written if verified else self.written - 1
                if offset < limit:
                    length = min(limit - offset, chunk_size)
                    data = await asyncio.to_thread(os.pread, fd, length, offset)
                    if not data:
                        raise FillError("cache file shrank under a reader")
                    offset += len(data)
                    yield data
                    continue
                if self.done:
                    if self.error is not None:
                        raise FillError(str(self.error)) from self.error
                    return
                await progress.wait()
        finally:
            self._release_fd()


def _write_chunk(fd: int, data: bytes, digest: hashlib._Hash) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    digest.update(data)


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
            fill._fd = await asyncio.to_thread(
                os.open, fill.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644
            )
            async with opener() as download:
                fill.size = download.size
                if download.size is not None:
                    victims = self.store.reserve(download.size)
                    if victims is not None:
                        reserved = download.size
                        await asyncio.to_thread(self.store.delete_blobs, victims)
                fill.headers_ready.set()
                fd = fill._fd
                async for chunk in download.chunks():
                    await asyncio.to_thread(_write_chunk, fd, chunk, digest)
                    fill.written += len(chunk)
                    self.upstream_bytes += len(chunk)
                    fill._notify()
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
                self.store.admitted(sha, fill.written, reserved, filename)
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
            fill.error = exc
        finally:
            # Settle the fill before any await: a request arriving meanwhile must start a new
            # fill (or find the cached file), never join this finished one.
            self._fills.pop(fill.key, None)
            if reserved:
                self.store.release(reserved)
            fill.done = True
            fill.headers_ready.set()
            fill.finished.set()
            fill._notify()
            fill._release_fd()
            if on_done is not None:
                on_done(fill)
            if not fill.cached:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(fill.tmp_path.unlink)

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
