"""The status page at ``/`` as a person sees it: rendered by headless Chromium.

The real ``nightproxy serve`` runs as a subprocess in front of a fake upstream; Chromium (the
Debian package ``chromium``) loads the page, dumps its DOM and takes a screenshot. Without
Chromium the tests skip and say how to install it; ``.ci/run`` installs it and sets
``NIGHTPROXY_REQUIRE_BROWSER=1``, which makes its absence a failure.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import PIP_ACCEPT, StartFake, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, needs, nightproxy_serve, tool
from tests.wheels import build_wheel

WAIT = 20.0  # upper bound for the proxy to start or stop; never an assertion about speed
BROWSER_WAIT = 90.0  # a cold Chromium start on a loaded CI machine
WIDTH, HEIGHT = 1200, 900
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser() -> str:
    """Chromium's path; skips (or fails under ``NIGHTPROXY_REQUIRE_BROWSER=1``) without it."""
    return needs(
        tool("chromium"),
        "Chromium (the status page test's browser)",
        "apt-get install chromium",
        "NIGHTPROXY_REQUIRE_BROWSER",
    )


async def chromium(browser: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium once; its stdout. Runs async so the fake upstream keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BROWSER_WAIT):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout


class TableText(HTMLParser):
    """The cell texts of every ``<table id=...>``, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in {"td", "th"} and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"} and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r} chunk"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


@pytest.fixture
async def status_server(
    start_fake: StartFake, wheelhouse: Path, tmp_path: Path
) -> AsyncIterator[tuple[URL, FakeSimpleIndex]]:
    """A proxy subprocess whose status page has a newest-build row for project ``demo``."""
    fake = FakeSimpleIndex()
    for version in ("1.0", "1.1.dev20261120"):
        fake.add_file("demo", build_wheel(wheelhouse, "demo", version))
    await start_fake(fake)
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n  max_size: 1GiB\n"
        "retention:\n  dev_max_age: off\n"
        f"upstreams:\n  - name: nightly-feed\n    kind: simple\n    url: {simple_url(fake)}\n"
    )
    port = free_port()
    base = URL(f"http://127.0.0.1:{port}/")
    async with nightproxy_serve(["--config", str(config)], port):
        async with aiohttp.ClientSession() as http:
            page = base.join(URL("/simple/demo/"))
            async with http.get(page, headers={"Accept": PIP_ACCEPT}) as resp:
                assert resp.status == 200
                doc = json.loads(await resp.read())
            # One download, so the cache table has something to report.
            async with http.get(page.join(URL(doc["files"][0]["url"]))) as resp:
                assert resp.status == 200
                await resp.read()
        yield base, fake


async def test_status_page_dom_has_its_three_tables(
    browser: str, status_server: tuple[URL, FakeSimpleIndex], tmp_path: Path
) -> None:
    """Chromium's DOM of ``/`` holds the upstreams, cache and projects tables with real rows."""
    base, _fake = status_server
    dom = (await chromium(browser, tmp_path / "profile", "--dump-dom", str(base))).decode()
    parser = TableText()
    parser.feed(dom)
    assert {"upstreams", "cache", "projects"} <= parser.tables.keys()

    upstream_rows = [r for r in parser.tables["upstreams"] if r and r[0] == "nightly-feed"]
    assert len(upstream_rows) == 1
    assert upstream_rows[0][1] == "simple"
    assert upstream_rows[0][3] == "ok"

    cache = {row[0]: row[1] for row in parser.tables["cache"] if len(row) == 2}
    assert cache["Files"] == "1"
    assert "of 1.0 GiB" in cache["Size"]
    assert cache["Hit ratio"] == "0.0%"  # one download, a miss

    project_rows = [r for r in parser.tables["projects"] if r and r[0] == "demo"]
    assert project_rows == [["demo", "nightly-feed", "1.1.dev20261120", project_rows[0][3]]]
    assert project_rows[0][3].endswith(("min", "h", "d"))


async def test_status_page_screenshot_is_a_rendered_page(
    browser: str, status_server: tuple[URL, FakeSimpleIndex], tmp_path: Path
) -> None:
    """The screenshot is a valid PNG of the requested size with varied, non-blank pixels."""
    base, _fake = status_server
    shot = tmp_path / "status.png"
    await chromium(
        browser,
        tmp_path / "profile",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        str(base),
    )
    data = shot.read_bytes()
    chunks = png_chunks(data)
    kind, ihdr = chunks[0]
    assert kind == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", ihdr[:10])
    assert (width, height) == (WIDTH, HEIGHT)
    assert depth == 8
    assert colour in {2, 6}  # RGB or RGBA
    assert chunks[-1][0] == b"IEND"
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    channels = 3 if colour == 2 else 4
    assert len(pixels) == height * (1 + width * channels)
    # A blank page compresses to almost nothing and holds a handful of byte values; text,
    # table borders and anti-aliasing give many.
    assert len(set(pixels)) > 32
    assert len(data) > 8 * 1024
    # Not one colour: a uniform image filters to identical rows.
    row = 1 + width * channels
    rows = {pixels[i * row + 1 : (i + 1) * row] for i in range(height)}
    assert len(rows) > 20
