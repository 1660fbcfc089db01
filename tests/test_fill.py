"""The fill's disk spooler: writes in a thread, bounded memory, never outlived by its writes.

The disk write is held at a gate in these tests, so "the write is still running" is a fact
about order, not about timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightproxy.cache import spool as fill_module
from nightproxy.cache.fill import Fill
from nightproxy.cache.spool import CHUNK_OVERHEAD, SPOOL_LIMIT
from nightproxy.cache.spool import Spooler as _Spooler

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


class Gate:
    """Holds every disk write until opened; counts the writes that completed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.done = 0
        real = fill_module._hash_and_write

        def held_write(fd: int, batch: list[bytes], offset: int, digest: hashlib._Hash) -> None:
            self.entered.set()
            self.open.wait(WAIT)
            real(fd, batch, offset, digest)
            self.done += 1

        monkeypatch.setattr(fill_module, "_hash_and_write", held_write)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    return Gate(monkeypatch)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Fill, int]]:
    path = tmp_path / "fill.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    yield Fill("key", path, None), fd
    os.close(fd)


async def until(event: threading.Event) -> None:
    async with asyncio.timeout(WAIT):
        while not event.is_set():
            await asyncio.sleep(0.005)


async def test_closing_waits_for_the_running_write_even_when_cancelled(
    gate: Gate, target: tuple[Fill, int]
) -> None:
    """Cancelled while its last batch is being written, ``close`` returns only once that write
    is done, then passes the cancellation on: the descriptor it guards is closed next."""
    fill, fd = target
    spooler = _Spooler(fill, fd, hashlib.sha256(), lambda _n: None)
    await spooler.put(b"x" * 1000)
    await until(gate.entered)
    closing = asyncio.create_task(spooler.close())
    await asyncio.sleep(0)
    closing.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done(), "close returned while a thread still wrote"
    gate.open.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, WAIT)
    assert gate.done == 1
    assert os.pread(fd, 2000, 0) == b"x" * 1000


async def test_tiny_chunks_are_held_by_count_as_well_as_by_bytes(
    gate: Gate, target: tuple[Fill, int]
) -> None:
    """An upstream sending one-byte chunks while the disk is busy is made to wait once the held
    chunks' cost (bytes plus per-chunk overhead) reaches the limit, and every byte still lands
    in order."""
    fill, fd = target
    digest = hashlib.sha256()
    spooler = _Spooler(fill, fd, digest, lambda _n: None)
    total = 3 * SPOOL_LIMIT // CHUNK_OVERHEAD
    data = bytes(i % 251 for i in range(total))
    sent = 0

    async def produce() -> None:
        nonlocal sent
        for i in range(total):
            await spooler.put(data[i : i + 1])
            sent += 1

    producer = asyncio.create_task(produce())
    await until(gate.entered)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not producer.done()
    assert sent <= SPOOL_LIMIT // CHUNK_OVERHEAD + 1
    gate.open.set()
    await asyncio.wait_for(producer, WAIT)
    await asyncio.wait_for(spooler.close(), WAIT)
    assert fill.written == total
    assert os.pread(fd, total + 1, 0) == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_the_first_write_holds_only_what_had_arrived(
    gate: Gate, monkeypatch: pytest.MonkeyPatch, target: tuple[Fill, int]
) -> None:
    """Chunks handed over before the first write began wait for the second: a fill's first
    bytes go out after one chunk is written, not after everything already buffered."""
    fill, fd = target
    batches: list[int] = []
    held = fill_module._hash_and_write

    def recording(fd: int, batch: list[bytes], offset: int, digest: hashlib._Hash) -> None:
        batches.append(len(batch))
        held(fd, batch, offset, digest)

    monkeypatch.setattr(fill_module, "_hash_and_write", recording)
    digest = hashlib.sha256()
    spooler = _Spooler(fill, fd, digest, lambda _n: None)
    for part in (b"a" * 10, b"b" * 10, b"c" * 10):
        await spooler.put(part)
    gate.open.set()
    await asyncio.wait_for(spooler.close(), WAIT)
    assert batches == [1, 2]
    assert os.pread(fd, 100, 0) == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert digest.hexdigest() == hashlib.sha256(b"a" * 10 + b"b" * 10 + b"c" * 10).hexdigest()


def test_a_resumed_batch_whose_write_finds_the_disk_full_is_still_hashed_whole() -> None:
    """Resuming another process's download, a batch whose new bytes cannot be written (a full
    disk: /dev/full) is hashed whole all the same, since its bytes go on through memory."""
    fd = os.open("/dev/full", os.O_RDWR)
    try:
        digest = hashlib.sha256()
        # /dev/full reads as zeros: the first 10 bytes match what is "already there".
        batch = [b"\0" * 8, b"\0\0abc", b"def"]
        with pytest.raises(OSError, match="No space"):
            fill_module._check_batch(fd, batch, 0, digest, 10)
    finally:
        os.close(fd)
    assert digest.hexdigest() == hashlib.sha256(b"".join(batch)).hexdigest()
