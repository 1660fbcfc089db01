"""Descriptors and connections (issue 17, item 1), with ``nightproxy serve`` as a process.

Started from a shell that sets its open-files limits first (as a service manager or a
container runtime would), so that the limits are the server's own, not the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp

from tests.conftest import PIP_ACCEPT, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import WAIT, free_port, wait_healthy


@contextlib.asynccontextmanager
async def limited_serve(
    tmp_path: Path, fake: FakeSimpleIndex, ulimit: str, server: str = ""
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, Path]]:
    """``nightproxy serve`` under ``ulimit`` (shell syntax); (process, port, its stderr file)."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"server:\n  port: 0\n{server}"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    port = free_port()
    command = shlex.join(
        [sys.executable, "-m", "nightproxy", "serve", "--config", str(config), "--port", str(port)]
    )
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f"{ulimit} && exec {command}", stderr=sink
        )
    try:
        await wait_healthy(proc, port)
        yield proc, port, log
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), WAIT)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def open_files_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) "Max open files" of a process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files limit")


async def test_serve_raises_its_soft_open_files_limit_to_the_hard_one_and_says_so(
    one_wheel: FakeSimpleIndex, tmp_path: Path
) -> None:
    """Started under a soft limit of 256 open files, the server runs with its hard limit and
    logs the figure."""
    async with limited_serve(tmp_path, one_wheel, "ulimit -Sn 256") as (proc, _port, log):
        soft, hard = open_files_limit(proc.pid)
        assert soft == hard != "256"
        # Log lines are written in batches, about twice a second.
        async with asyncio.timeout(WAIT):
            while f"open files: up to {soft} per process" not in log.read_text():
                await asyncio.sleep(0.1)


def request(port: int, path: str) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def read_head(client: socket.socket) -> bytes:
    """The status line and headers of the next response (the body left unread)."""
    client.settimeout(WAIT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@contextlib.contextmanager
def closing_all(clients: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


async def served(port: int) -> socket.socket:
    """A connection whose request was answered 200 (once the server has room for it)."""
    async with asyncio.timeout(WAIT):
        while True:
            client = request(port, "/healthz")
            if status_of(await asyncio.to_thread(read_head, client)) == 200:
                return client
            client.close()
            await asyncio.sleep(0.05)


async def test_connections_past_the_cap_are_answered_503_with_retry_after(
    one_wheel: FakeSimpleIndex, tmp_path: Path
) -> None:
    """With ``server.max_connections: 2`` and two connections open, a third one is answered
    503 with ``Retry-After``; once one of the two closes, a new one is served."""
    cap = "  max_connections: 2\n"
    async with limited_serve(tmp_path, one_wheel, "true", cap) as (_proc, port, _log):
        with closing_all([await served(port), await served(port)]) as kept:
            with closing_all([request(port, "/healthz")]) as (third,):
                head = await asyncio.to_thread(read_head, third)
                assert status_of(head) == 503
                assert re.search(rb"\r\nRetry-After: \d+", head)
            kept[0].close()
            (await served(port)).close()


async def test_out_of_descriptors_answers_503_logs_once_and_forgets_nothing(
    one_wheel: FakeSimpleIndex, tmp_path: Path
) -> None:
    """Under a hard limit of 64 open files, idle connections take every descriptor: a cached
    file asked for on a connection already open is 503 (never 404 or 500), the failing
    accepts are logged once (no traceback), and once the descriptors are back the same file
    is a hit: the cache forgot nothing."""
    async with limited_serve(tmp_path, one_wheel, "ulimit -n 64") as (_proc, port, log):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/simple/demo/", headers={"Accept": PIP_ACCEPT}) as resp:
                doc = json.loads(await resp.read())
            url = f"{base}/simple/demo/{doc['files'][0]['url']}"
            async with http.get(url) as resp:
                assert resp.status == 200
                await resp.read()
            # The connection of ``http`` stays open; now take every other descriptor.
            with closing_all([]) as idle:
                for _ in range(80):
                    idle.append(socket.create_connection(("127.0.0.1", port)))
                await asyncio.sleep(2.5)  # asyncio retries a failed accept every second
                async with http.get(url) as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"]
            async with http.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["X-Nightproxy-Cache"] == "hit"
    text = log.read_text()
    # Once per 10 s: at most twice, however long a loaded machine makes this test.
    assert 1 <= len(re.findall("cannot accept connections", text)) <= 2, text
    assert "Traceback" not in text


async def test_an_upstream_unreachable_for_want_of_descriptors_is_503_and_not_its_fault(
    one_wheel: FakeSimpleIndex, tmp_path: Path
) -> None:
    """Out of descriptors, a page that needs the upstream is 503 with Retry-After (this
    server's shortage, not a 502 blaming the upstream), however often it is asked; the
    upstream's circuit breaker stays closed, so the page is served as soon as descriptors
    are back."""
    async with limited_serve(tmp_path, one_wheel, "ulimit -n 64") as (_proc, port, _log):
        base = f"http://127.0.0.1:{port}"
        page = f"{base}/simple/demo/"
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200  # the connection the requests below reuse
                await resp.read()  # read to its end, or the connection is not reused
            with closing_all([]) as idle:
                for _ in range(80):
                    idle.append(socket.create_connection(("127.0.0.1", port)))
                await asyncio.sleep(2.5)  # asyncio retries a failed accept every second
                for _ in range(4):
                    async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
                        text = await resp.text()  # to its end, so the connection is reused
                        assert resp.status == 503, text
                        assert resp.headers["Retry-After"]
            async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
                assert resp.status == 200
                assert json.loads(await resp.read())["files"]
