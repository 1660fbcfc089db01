"""A 500 MB upload streams to disk: the server's resident memory grows by less than 32 MiB.

The wheel is generated while it is sent (a zip written by a thread into a pipe), so the test
holds no more of it than the server should; the server's RSS is read from /proc as the body
streams in.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.hosted_support import NUMPY_TOKEN, basic, multipart_head, multipart_tail, rss_kib
from tests.support import free_port, nightproxy_serve
from tests.test_hosted_e2e import write_config
from tests.wheels import build_wheel

SIZE = 500 * 1000 * 1000
LIMIT_KIB = 32 * 1024
FILENAME = "numpy-3.0.dev0-py3-none-any.whl"


def _write_wheel(fd: int, digest: list[str]) -> None:
    """A real wheel with a ``SIZE``-byte member, written to an unseekable pipe."""
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not all one byte
    sha = hashlib.sha256()

    class Tee:
        def __init__(self, out: object) -> None:
            self.out = out

        def write(self, data: bytes) -> int:
            sha.update(data)
            return self.out.write(data)  # type: ignore[attr-defined,no-any-return]

        def flush(self) -> None:
            self.out.flush()  # type: ignore[attr-defined]

    with os.fdopen(fd, "wb") as pipe, zipfile.ZipFile(Tee(pipe), "w") as archive:  # type: ignore[arg-type]
        archive.writestr(
            "numpy-3.0.dev0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: numpy\nVersion: 3.0.dev0\n\n",
        )
        archive.writestr(
            "numpy-3.0.dev0.dist-info/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n"
        )
        info = zipfile.ZipInfo("numpy/payload.bin", date_time=(2026, 1, 1, 0, 0, 0))
        with archive.open(info, "w", force_zip64=True) as member:
            left = SIZE
            while left:
                piece = block[: min(left, len(block))]
                member.write(piece)
                left -= len(piece)
        archive.writestr("numpy-3.0.dev0.dist-info/RECORD", "")
    digest.append(sha.hexdigest())


async def lazy_body(boundary: str, digest: list[str]) -> AsyncIterator[bytes]:
    fields = {":action": "file_upload", "name": "numpy", "version": "3.0.dev0"}
    yield multipart_head(fields, FILENAME, boundary)
    read_end, write_end = os.pipe()
    thread = threading.Thread(target=_write_wheel, args=(write_end, digest), daemon=True)
    thread.start()
    try:
        while chunk := await asyncio.to_thread(os.read, read_end, 1 << 20):
            yield chunk
    finally:
        os.close(read_end)
        thread.join()
    yield multipart_tail(boundary)


async def test_500_mb_upload_keeps_memory_bounded(tmp_path: Path) -> None:
    """Peak RSS during a 500 MB upload stays within 32 MiB of the server's RSS before it."""
    config = write_config(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        nightproxy_serve(["--config", str(config)], port) as proc,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
    ):
        # One small upload first: what every upload needs (imports, buffers) is in place.
        small = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0")
        form = aiohttp.FormData({":action": "file_upload", "name": "numpy", "version": "2.0.dev0"})
        with small.open("rb") as handle:
            form.add_field("content", handle, filename=small.name)
            async with http.post(
                f"{base}/feeds/community/", data=form, headers=basic(NUMPY_TOKEN)
            ) as r:
                assert r.status == 200, await r.text()
        before = rss_kib(proc.pid)
        peak = before
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(proc.pid))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        boundary = "bigbigbig"
        digest: list[str] = []
        try:
            async with http.post(
                f"{base}/feeds/community/",
                data=lazy_body(boundary, digest),
                headers={
                    **basic(NUMPY_TOKEN),
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            ) as response:
                assert response.status == 200, await response.text()
        finally:
            done.set()
            await watcher
        assert peak - before < LIMIT_KIB, f"RSS grew by {(peak - before) / 1024:.1f} MiB"
        stored = tmp_path / "feed" / "numpy" / FILENAME
        assert stored.stat().st_size > SIZE
        assert await asyncio.to_thread(_sha256, stored) == digest[0]


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()
