"""A client that goes away mid-download (issue 17, item 10): one INFO line, no traceback, and
an access line with the bytes it was sent rather than the ones announced.

``nightproxy serve`` runs as a process: aiohttp's test server cancels a handler whose client
left, which the real server does not.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import PIP_ACCEPT, StartFake, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve
from tests.wheels import build_wheel

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
#: Far more than loopback's socket buffers hold, so that a client reading little stops the
#: server mid-file.
SIZE = 48 * 1024 * 1024
READ = 64 * 1024


@pytest.fixture
async def upstream(start_fake: StartFake, tmp_path: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(tmp_path / "wheels", "demo", "1.0", payload_size=SIZE))
    return await start_fake(fake)


async def file_path(base: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/simple/demo/", headers={"Accept": PIP_ACCEPT}) as resp,
    ):
        doc = json.loads(await resp.read())
    return str(URL(f"{base}/simple/demo/").join(URL(doc["files"][0]["url"])).path)


def read_a_little_then_reset(port: int, path: str) -> int:
    """GET ``path``, read at least ``READ`` bytes of the answer, then drop the connection with
    a reset (as a killed client does); how many bytes of the body were read."""
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(WAIT)
    try:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while len(data) < READ:
            chunk = client.recv(READ)
            assert chunk, "the server closed first"
            data += chunk
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return len(data.partition(b"\r\n\r\n")[2])
    finally:
        client.close()


async def access_line(log: Path, path: str) -> list[str]:
    """The fields of the access line for ``path`` in the server's log (waits for it: lines
    are written in batches)."""
    async with asyncio.timeout(WAIT):
        while True:
            for line in log.read_text().splitlines():
                if "nightproxy.access: GET " in line and f" {path} " in line:
                    return line.split()
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("cached", [False, True], ids=["miss", "hit"])
async def test_a_client_that_goes_away_is_one_info_line_and_its_real_byte_count(
    upstream: FakeSimpleIndex, tmp_path: Path, cached: bool
) -> None:
    """A client resetting its connection after 64 KiB of a 48 MiB file (a cold one streamed
    from the upstream, or a cached one): no ERROR, one INFO line saying so, and an access
    line with the bytes that reached the client, not the 48 MiB announced."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"upstreams:\n  - name: main\n    kind: simple\n    url: {simple_url(upstream)}\n"
    )
    port = free_port()
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:
        async with nightproxy_serve(["--config", str(config)], port, stderr=sink.fileno()):
            base = f"http://127.0.0.1:{port}"
            path = await file_path(base)
            if cached:
                async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
                    await resp.read()
                await access_line(log, path)
                log.write_bytes(b"")
            read = await asyncio.to_thread(read_a_little_then_reset, port, path)
            fields = await access_line(log, path)
    text = log.read_text()
    assert fields[-1] == ("hit" if cached else "miss")
    assert " ERROR " not in text
    assert "Traceback" not in text
    went_away = [line for line in text.splitlines() if "went away" in line]
    assert len(went_away) == 1
    assert " INFO " in went_away[0]
    assert read <= int(fields[-3]) < SIZE
