"""Graceful shutdown: SIGTERM during a download lets it finish and leaves no temporary files.

The real ``nightproxy serve`` runs as a subprocess; the fake upstream (in this test's event loop)
sends the first chunk of a wheel and then holds the rest until the test releases it, so SIGTERM
arrives at a known point: mid-download, with the client's response already started.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from nightproxy.server.app import create_app
from nightproxy.server.runner import bind, bound_port, serve
from tests.conftest import PIP_ACCEPT, MakeConfig, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve, refuses_connections, wait_healthy
from tests.wheels import sha256_file

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed


@dataclass
class Outcome:
    body: bytes
    expected_sha256: str
    returncode: int | None
    stderr: str
    refused_during_drain: bool
    cache_dir: Path


async def sigterm_mid_download(fake: FakeSimpleIndex, tmp_path: Path) -> Outcome:
    """Start a download, SIGTERM the proxy once bytes flow, release the upstream, finish."""
    entry = next(iter(fake.projects["demo"].files.values()))
    cache_dir = tmp_path / "cache"
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {cache_dir}\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    port = free_port()
    base = URL(f"http://127.0.0.1:{port}/")
    async with (
        nightproxy_serve(
            ["--config", str(config)], port, stderr=asyncio.subprocess.PIPE, sigterm=False
        ) as proc,
        aiohttp.ClientSession() as http,
    ):
        page = base.join(URL("/simple/demo/"))
        async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
            assert resp.status == 200
            doc = json.loads(await resp.read())
        url = page.join(URL(doc["files"][0]["url"]))
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Nightproxy-Cache"] == "miss"
            first = await resp.content.readany()
            assert first, "no bytes before the upstream's hold"
            # The upstream is holding: the download is in flight when the signal arrives.
            proc.send_signal(signal.SIGTERM)
            refused = False
            async with asyncio.timeout(WAIT):
                while not (refused := await refuses_connections(base)):
                    await asyncio.sleep(0.05)
            assert proc.returncode is None, "the proxy exited with a download in flight"
            fake.slow.release.set()
            body = first + await resp.read()
        async with asyncio.timeout(WAIT):
            _stdout, stderr = await proc.communicate()
    return Outcome(
        body=body,
        expected_sha256=entry.sha256,
        returncode=proc.returncode,
        stderr=stderr.decode(errors="replace"),
        refused_during_drain=refused,
        cache_dir=cache_dir,
    )


async def test_sigterm_lets_a_running_download_finish(
    slow_fake: FakeSimpleIndex, tmp_path: Path
) -> None:
    """The client whose download was in flight at SIGTERM receives the complete, exact file."""
    outcome = await sigterm_mid_download(slow_fake, tmp_path)
    entry = next(iter(slow_fake.projects["demo"].files.values()))
    assert len(outcome.body) == entry.size
    assert hashlib.sha256(outcome.body).hexdigest() == sha256_file(entry.path)


async def test_sigterm_stops_accepting_while_draining(
    slow_fake: FakeSimpleIndex, tmp_path: Path
) -> None:
    """After SIGTERM new connections are refused while the old download is still held."""
    outcome = await sigterm_mid_download(slow_fake, tmp_path)
    assert outcome.refused_during_drain


async def test_sigterm_exits_zero_without_a_traceback(
    slow_fake: FakeSimpleIndex, tmp_path: Path
) -> None:
    """The drained process exits with status 0 and logs no error."""
    outcome = await sigterm_mid_download(slow_fake, tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert " ERROR " not in outcome.stderr


async def test_sigterm_leaves_no_temporary_files_and_keeps_the_verified_file(
    slow_fake: FakeSimpleIndex, tmp_path: Path
) -> None:
    """``tmp/`` is empty after the drain and the finished download is a cached blob."""
    outcome = await sigterm_mid_download(slow_fake, tmp_path)
    leftovers = [p.name for p in (outcome.cache_dir / "tmp").iterdir()]
    assert leftovers == []
    blobs = [p.name for p in (outcome.cache_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs == [outcome.expected_sha256]


@pytest.mark.parametrize("turns", range(10))
async def test_a_connection_accepted_just_before_shutdown_is_not_left_hanging(
    make_config: MakeConfig, simple_upstream: FakeSimpleIndex, turns: int
) -> None:
    """A client that connected and sent its request a few event-loop turns before shutdown
    began is answered or disconnected at once, never kept waiting for the shutdown timeout.

    On Python 3.11 a connection accepted in the last turns before the listeners close has no
    request loop running yet when shutdown closes idle connections; ``turns`` moves the
    moment of the stop across that window.
    """
    upstream = {"name": "main", "kind": "simple", "url": simple_url(simple_upstream)}
    app = create_app(make_config([upstream]))
    sockets = bind("127.0.0.1", 0)
    port = bound_port(sockets)
    stop = asyncio.Event()
    # A shutdown timeout far beyond the waits below: a hanging client shows as a timeout.
    serving = asyncio.create_task(serve(app, sockets, shutdown_timeout=300.0, stop=stop))
    clients: list[socket.socket] = []
    try:
        await wait_healthy(None, port)
        for _ in range(4):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        for _ in range(turns):
            await asyncio.sleep(0)
        stop.set()
        for client in clients:
            answer = await asyncio.wait_for(asyncio.to_thread(_read_all, client), WAIT)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 200"), answer
        await asyncio.wait_for(serving, WAIT)
    finally:
        for client in clients:
            client.close()
        stop.set()
        if not serving.done():
            serving.cancel()


def _read_all(client: socket.socket) -> bytes:
    """What the server sends before it closes the connection (b"" for a reset)."""
    client.settimeout(2 * WAIT)
    data = b""
    try:
        while chunk := client.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data
