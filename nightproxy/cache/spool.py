"""The writer side of a download: its chunks hashed and written to the temporary file, in a
thread.

Whatever arrives while a batch is being written becomes the next batch: a slow upstream's
bytes reach readers at once, a fast one's go in few large hops, and chunks are never joined
(copied) on the event loop. When the disk stops taking bytes (``ENOSPC``), the download goes
on for the readers it has, with its bytes in memory (``Fill.spill``); a download that resumes
another process's (``verify_below``) compares the bytes already in the file instead of writing
them.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Callable

from nightproxy.cache.fill import Fill, FillError
from nightproxy.upstreams.base import CHUNK_SIZE

#: Buffers per vectored write (the system's limit).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Received bytes held while the previous batch is being written; beyond this the download
#: waits for the disk (bounded memory per fill).
SPOOL_LIMIT = 4 * CHUNK_SIZE
#: What a held chunk costs beyond its bytes (object and list slot), counted against the limit
#: so that an upstream sending tiny chunks cannot make the batch a list of millions.
CHUNK_OVERHEAD = 64
#: Write errors that mean "the disk is full", not "this file is broken".
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _write_batch(fd: int, batch: list[bytes], offset: int) -> None:
    """Write ``batch`` at ``offset``."""
    position = offset
    for start in range(0, len(batch), _IOV_MAX):
        part = batch[start : start + _IOV_MAX]
        total = sum(map(len, part))
        written = os.pwritev(fd, part, position)
        if written < total:
            _pwrite_rest(fd, part, position, written)
        position += total


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


def _check_batch(
    fd: int, batch: list[bytes], offset: int, digest: hashlib._Hash, present: int
) -> None:
    """Like ``_write_batch``, but bytes before ``present`` are already in the file (an
    interrupted download's): compare them instead of writing."""
    rest: list[bytes] = []
    position = offset
    for data in batch:
        if position >= present:
            rest.append(data)
        else:
            have = min(len(data), present - position)
            if os.pread(fd, have, position) != data[:have]:
                raise FillError("the interrupted download's bytes differ from the upstream's")
            if have < len(data):
                rest.append(data[have:])
        position += len(data)
    # Hashed before the write: a write that fails for a full disk still leaves the whole batch
    # hashed, as the bytes go on through memory (``Spooler._spill``).
    for data in batch:
        digest.update(data)
    if rest:
        _write_batch(fd, rest, max(offset, present))


def _hash_and_write(fd: int, batch: list[bytes], offset: int, digest: hashlib._Hash) -> None:
    """Hash ``batch`` and write it at ``offset``, a chunk at a time: the chunk the hash just
    read is still in the processor's cache when it is copied to the file. On a 2-core machine
    this took a quarter off a replica's CPU time per shared-tier hit, against hashing and
    writing the whole batch in two threads side by side (bench/fleet.py --only hit).

    A failed write still hashes the whole batch: the bytes go on through memory (a full disk).
    """
    position = offset
    for index, data in enumerate(batch):
        digest.update(data)
        try:
            _write_batch(fd, [data], position)
        except OSError:
            _hash_batch(batch[index + 1 :], digest)
            raise
        position += len(data)


def _hash_batch(batch: list[bytes], digest: hashlib._Hash) -> None:
    for data in batch:
        digest.update(data)


class Spooler:
    """Writes one fill's chunks in a thread, one batch per hop."""

    def __init__(
        self,
        fill: Fill,
        fd: int | None,
        digest: hashlib._Hash,
        on_written: Callable[[int], None],
        *,
        verify_below: int = 0,
        on_disk_full: Callable[[OSError], None] | None = None,
    ) -> None:
        self._fill = fill
        self._fd = fd
        self.digest = digest
        self._on_written = on_written
        self._on_disk_full = on_disk_full
        self._present = verify_below
        #: Where the next batch goes: after the bytes already in the file of a resumed fill.
        self._offset = 0
        self._batch: list[bytes] = []
        self._size = 0
        self._writing: asyncio.Task[None] | None = None
        self.in_memory = fd is None
        if self.in_memory:
            fill.spill()

    async def put(self, chunk: bytes) -> None:
        if self.in_memory:
            await self._fill.wait_for_room()
            self._fill.add_memory(chunk)
            self._on_written(len(chunk))
            self._offset += len(chunk)
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
            if self.in_memory:
                await asyncio.to_thread(_hash_batch, batch, self.digest)
            else:
                await self._to_disk(fill, batch, size)
            batch, size = self._take()

    async def _to_disk(self, fill: Fill, batch: list[bytes], size: int) -> None:
        assert self._fd is not None
        offset = self._offset
        try:
            if offset < self._present:
                await asyncio.to_thread(
                    _check_batch, self._fd, batch, offset, self.digest, self._present
                )
            else:
                await asyncio.to_thread(_hash_and_write, self._fd, batch, offset, self.digest)
        except OSError as exc:
            if exc.errno not in DISK_FULL or self._on_disk_full is None:
                raise
            self._spill(fill, batch, offset)  # hashed whole by the failed write
            self._on_disk_full(exc)
        self._offset = offset + size
        self._on_written(size)
        fill.grew(max(fill.written, self._offset) if not self.in_memory else fill.written)

    def _spill(self, fill: Fill, batch: list[bytes], offset: int) -> None:
        """The readers keep receiving: this batch, the chunks waiting behind it and whatever
        follows go through memory."""
        self.in_memory = True
        fill.spill()
        assert fill.spilled_at is not None
        skip = fill.spilled_at - offset  # of this batch, what the disk does hold
        for data in [*batch, *self._batch]:
            if skip >= len(data):
                skip -= len(data)
                continue
            fill.add_memory(data[skip:] if skip else data)
            skip = 0

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
