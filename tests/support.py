"""Helpers for tests that run ``nightproxy serve`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(proc: asyncio.subprocess.Process, port: int) -> None:
    """Poll /healthz until the server answers (bounded), failing if the process exits."""
    async with aiohttp.ClientSession() as probe, asyncio.timeout(WAIT):
        while True:
            assert proc.returncode is None, "nightproxy serve exited early"
            try:
                async with probe.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def nightproxy_serve(
    args: list[str],
    port: int,
    *,
    stdout: int = asyncio.subprocess.DEVNULL,
    stderr: int = asyncio.subprocess.DEVNULL,
    sigterm: bool = True,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m nightproxy serve --port PORT ARGS``, healthy on entry, stopped on exit.

    On exit a still-running server gets SIGTERM (``sigterm``) or is killed.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nightproxy",
        "serve",
        "--port",
        str(port),
        *args,
        stdout=stdout,
        stderr=stderr,
    )
    try:
        await wait_healthy(proc, port)
        yield proc
    finally:
        if proc.returncode is None:
            if sigterm:
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()
            try:
                async with asyncio.timeout(WAIT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
