"""Spare files: page cache made ready between downloads for the next cold fills.

Writing a cold download into a new file makes the kernel find a fresh page for every 4 KiB of
it. Where the machine hands free memory back to its host (virtio-balloon free page reporting,
as Firecracker and other VMs do), every such page faults into the host again: on the
development VM writing 50 MB into a new file took 100-180 ms, and 10-14 ms into pages that
were already in the page cache. That work sat on the path of every cold download.

A spare is a sparse temporary file that was read once: reading a hole puts zero-filled pages
in the page cache and allocates no disk blocks. A fill that takes a spare (its path and its
open descriptor, so that taking it costs no system call) overwrites pages that already exist,
and is cut to its real size before it enters the store. Spares are made in a thread while no
fill runs, so the cost is paid between downloads. Their pages are clean page cache: under
memory pressure the kernel drops them, and a fill then simply allocates as it would have
without a spare.

Because a spare's size is set before its bytes are written, a kernel crash can leave a blob of
the right size with holes where data was never written back; ``CacheStore.open`` looks for
such holes after a reboot (see ``store.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

#: The size of one spare: most wheels fit, and a larger file still writes its first part
#: into ready pages.
SPARE_SIZE = 64 * 1024 * 1024
#: At most this many spares, each holding an open descriptor (1 GiB of page cache).
MAX_SPARES = 16
#: A file announced smaller than this writes so few new pages that a spare would be wasted.
MIN_FILL = 1024 * 1024
_READ_CHUNK = 1024 * 1024
PREFIX = "spare."


class Spare(NamedTuple):
    path: Path
    #: Open for reading and writing; whoever takes the spare closes it.
    fd: int


class SparePool:
    """Keeps up to ``total`` bytes of spares ready in ``tmp_dir``.

    ``take`` is called on the event loop; the spares are made by a task the pool owns
    (``start``/``close``), which waits for ``idle`` to be set (no fill running) before each.
    """

    def __init__(self, tmp_dir: Path, total: int, idle: asyncio.Event) -> None:
        self._tmp_dir = tmp_dir
        self.size = min(SPARE_SIZE, total)
        self.target = min(MAX_SPARES, total // self.size) if self.size > 0 else 0
        self._idle = idle
        self._ready: list[Spare] = []
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The spare being made in a thread, which cancelling the task cannot stop.
        self._making: asyncio.Future[Spare] | None = None
        #: Fills that took a spare, and spares made (for metrics and tests).
        self.taken = 0
        self.made = 0

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self.target > 0 and self._task is None:
            self._wanted.set()
            self._task = asyncio.create_task(self._run(), name="spare files")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        making, self._making = self._making, None
        if making is not None:
            # Its thread runs on: wait for the file it makes, or it would outlive the server.
            with contextlib.suppress(OSError):
                spare = await making
                if spare not in self._ready:
                    self._ready.append(spare)
        ready, self._ready = self._ready, []
        if ready:
            await asyncio.to_thread(_unlink_all, ready)

    def take(self, size: int | None) -> Spare | None:
        """A ready spare for a fill of ``size`` bytes (None: not announced), or None."""
        if size is not None and size < MIN_FILL:
            return None
        # Also when none is ready: after a failure to make one, the next fill asks again.
        self._wanted.set()
        if not self._ready:
            return None
        self.taken += 1
        return self._ready.pop()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.target:
                await self._idle.wait()
                self._making = asyncio.ensure_future(
                    asyncio.to_thread(_make, self._tmp_dir, self.size)
                )
                try:
                    spare = await asyncio.shield(self._making)
                except OSError as exc:
                    # Not worth failing anything for: fills write new pages as they would
                    # without spares. Tried again when the next spare is taken.
                    log.warning("cannot prepare a spare file in %s: %s", self._tmp_dir, exc)
                    self._making = None
                    break
                self._making = None
                self._ready.append(spare)
                self.made += 1


def _make(tmp_dir: Path, size: int) -> Spare:
    path = tmp_dir / f"{PREFIX}{os.getpid()}.{time.monotonic_ns()}.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        buffer = bytearray(_READ_CHUNK)
        for offset in range(0, size, _READ_CHUNK):
            os.preadv(fd, [buffer], offset)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return Spare(path, fd)


def _unlink_all(spares: list[Spare]) -> None:
    for spare in spares:
        os.close(spare.fd)
        with contextlib.suppress(OSError):
            spare.path.unlink()
