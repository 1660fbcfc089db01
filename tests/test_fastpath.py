"""Warm project pages answered by the connection itself (``nightproxy.server.fastpath``).

Every test speaks raw HTTP/1.1 over a real socket to the proxy as ``nightproxy serve`` runs it,
so what is checked is what a client receives: the bytes, their order on a pipelined connection,
and which requests are left to aiohttp's ordinary path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from packaging.version import Version

from nightproxy.server import fastpath, keys
from nightproxy.server.app import create_app
from nightproxy.server.pages import PROJECT_PAGE
from tests.conftest import (
    JSON_TYPE,
    PIP_ACCEPT,
    MakeConfig,
    ProxyTestServer,
    StartFake,
    StartProxy,
)
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel


@dataclass
class Reply:
    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class Conn:
    """One raw HTTP/1.1 connection: write requests as bytes, read replies one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))
        await self.writer.drain()

    async def reply(self, *, head: bool = False) -> Reply:
        status_line = await asyncio.wait_for(self.reader.readline(), 10)
        assert status_line, "the server closed the connection"
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            line = (await self.reader.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        reply = Reply(version, int(status), headers, b"")
        length = reply.header("Content-Length")
        if length is not None and not head and reply.status != 304:
            reply.body = await asyncio.wait_for(self.reader.readexactly(int(length)), 10)
        return reply

    async def closed(self, timeout: float = 10) -> bool:
        return await asyncio.wait_for(self.reader.read(1), timeout) == b""


def get(path: str, *extra: str, version: str = "1.1", accept: str = "text/html") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: proxy", f"Accept: {accept}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fast_pages(proxy: TestServer) -> int:
    return proxy.app[keys.METRICS].fast_path.pages


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """'demo' with two files, and 'big' whose page (~100 KB of HTML) takes the gathered write."""
    fake = FakeSimpleIndex()
    for version in ("1.0", "1.1"):
        fake.add_file("demo", build_wheel(wheelhouse, "demo", version))
    wheel = build_wheel(wheelhouse, "big", "1.0")
    for minor in range(300):
        fake.add_file("big", wheel, filename=f"big-1.{minor}-py3-none-any.whl")
    return await start_fake(fake)


@pytest.fixture
async def proxy(
    make_config: MakeConfig, start_proxy: StartProxy, upstream: FakeSimpleIndex
) -> TestServer:
    config = make_config([{"name": "up", "kind": "simple", "url": f"{upstream.base_url}simple/"}])
    return await start_proxy(config)


@pytest.fixture
async def conn(proxy: TestServer) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    yield Conn(reader, writer)
    writer.close()


async def warm(conn: Conn, path: str, *extra: str, **kwargs: Any) -> Reply:
    """Fetch a page once through the handler, which renders it; the next fetch is warm."""
    await conn.send(get(path, *extra, **kwargs))
    reply = await conn.reply()
    assert reply.status == 200
    return reply


def test_the_installed_aiohttp_is_one_the_fast_path_was_checked_against() -> None:
    """An aiohttp upgrade that turns the fast path off fails here, not silently in production:
    check the new release (these tests, bench/ceiling.py) and widen ``fastpath.CHECKED``."""
    assert fastpath.supported(), f"aiohttp {aiohttp.__version__} is outside fastpath.CHECKED"


@pytest.mark.parametrize(
    ("version", "on"),
    [
        ("3.14.0", True),
        ("3.14.3", True),
        ("3.14.5", True),
        ("3.14.6", False),
        ("3.13.5", False),
        ("4.0.0", False),
        ("not a version", False),
    ],
)
def test_the_fast_path_is_on_only_for_the_checked_releases(version: str, on: bool) -> None:
    """From the first to the last release checked, inclusive; nothing else."""
    assert fastpath.supported(version) is on


async def test_a_warm_page_comes_from_the_fast_path_with_the_handlers_bytes(
    proxy: TestServer, conn: Conn
) -> None:
    """Status, headers (in order) and body are what the handler sent; only Date may move."""
    first = await warm(conn, "/simple/demo/")
    assert fast_pages(proxy) == 0
    await conn.send(get("/simple/demo/"))
    second = await conn.reply()
    assert fast_pages(proxy) == 1
    assert (second.version, second.status, second.body) == (first.version, 200, first.body)

    def fixed(reply: Reply) -> list[tuple[str, str]]:
        # max-age counts down by the second; Date is the clock.
        return [(k, v) for k, v in reply.headers if k not in {"Date", "Cache-Control"}]

    assert fixed(second) == fixed(first)
    assert [k for k, _ in second.headers] == [k for k, _ in first.headers]
    assert (second.header("Cache-Control") or "").startswith("max-age=")


async def test_each_representation_is_served_as_negotiated(proxy: TestServer, conn: Conn) -> None:
    """JSON, HTML and gzip-encoded JSON each come warm with their own type and ETag."""
    gz = "Accept-Encoding: gzip"
    cases = [
        ((), "text/html", "text/html"),
        ((), PIP_ACCEPT, "application/vnd.pypi.simple.v1+json"),
        ((gz,), PIP_ACCEPT, "application/vnd.pypi.simple.v1+json"),
    ]
    etags = set()
    for extra, accept, ctype in cases:
        cold = await warm(conn, "/simple/demo/", *extra, accept=accept)
        before = fast_pages(proxy)
        await conn.send(get("/simple/demo/", *extra, accept=accept))
        hot = await conn.reply()
        assert fast_pages(proxy) == before + 1
        assert (hot.header("Content-Type") or "").startswith(ctype)
        assert hot.body == cold.body
        assert hot.header("ETag") == cold.header("ETag")
        assert hot.header("Content-Encoding") == ("gzip" if extra else None)
        etags.add(hot.header("ETag"))
    assert len(etags) == 3


async def test_a_large_page_arrives_whole_from_the_gathered_write(
    proxy: TestServer, conn: Conn
) -> None:
    """A page larger than one write's threshold goes out complete, with the right length."""
    cold = await warm(conn, "/simple/big/")
    assert len(cold.body) > 64 * 1024
    for _ in range(3):
        await conn.send(get("/simple/big/"))
        hot = await conn.reply()
        assert hot.body == cold.body
    assert fast_pages(proxy) == 3


async def test_pipelined_requests_are_answered_in_order_around_the_ordinary_path(
    proxy: TestServer, conn: Conn
) -> None:
    """A warm page, then a request aiohttp must handle, then a warm page again: three replies
    in request order, the last one behind the ordinary path's (never overtaking it)."""
    page = await warm(conn, "/simple/demo/")
    await conn.send(
        get("/simple/demo/"), get("/healthz"), get("/simple/demo/"), get("/simple/Demo/")
    )
    replies = [await conn.reply() for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 301]
    assert replies[0].body == page.body
    assert replies[1].body != page.body
    assert replies[2].body == page.body
    assert replies[3].header("Location") == "/simple/demo/"
    # The first was answered at once; the third waited in aiohttp's queue behind /healthz.
    assert fast_pages(proxy) == 1


@pytest.mark.parametrize(
    ("request_bytes", "expected_status"),
    [
        pytest.param(get("/simple/demo/?format=json"), 200, id="query"),
        pytest.param(get("/simple/Demo/"), 301, id="non-canonical name"),
        pytest.param(get("/simple/de%6do/"), 200, id="escaped name"),
        pytest.param(get("/simple/demo/", "Connection: close"), 200, id="connection close"),
        pytest.param(get("/simple/demo/", version="1.0"), 200, id="HTTP/1.0"),
        pytest.param(get("/simple/demo/", accept="image/png"), 406, id="nothing acceptable"),
        pytest.param(get("/simple/demo/", "Expect: 100-continue"), 200, id="expect"),
        pytest.param(
            get("/simple/demo/", accept="text/html, " + "x-made/up;q=0.1, " * 30),
            200,
            id="an Accept longer than any client sends",
        ),
        pytest.param(b"HEAD /simple/demo/ HTTP/1.1\r\nHost: proxy\r\n\r\n", 200, id="HEAD"),
        pytest.param(
            b"GET /simple/demo/ HTTP/1.1\r\nHost: proxy\r\nContent-Length: 5\r\n\r\nhello",
            200,
            id="with a body",
        ),
    ],
)
async def test_requests_that_are_not_a_plain_warm_get_take_the_ordinary_path(
    proxy: TestServer, conn: Conn, request_bytes: bytes, expected_status: int
) -> None:
    """aiohttp answers them exactly as it always did, and the fast path counts none of them."""
    await warm(conn, "/simple/demo/")
    await conn.send(request_bytes)
    reply = await conn.reply(head=request_bytes.startswith(b"HEAD"))
    if reply.status == 100:
        reply = await conn.reply()
    assert reply.status == expected_status
    assert fast_pages(proxy) == 0


async def test_a_conditional_request_gets_its_304_from_the_handler(
    proxy: TestServer, conn: Conn
) -> None:
    """If-None-Match with the page's ETag: 304 with no body, from the ordinary path."""
    page = await warm(conn, "/simple/demo/")
    await conn.send(get("/simple/demo/", f"If-None-Match: {page.header('ETag')}"))
    reply = await conn.reply()
    assert reply.status == 304
    assert fast_pages(proxy) == 0


async def test_a_request_with_a_body_does_not_desynchronise_the_connection(
    proxy: TestServer, conn: Conn
) -> None:
    """The body of one request is never read as the start of the next."""
    page = await warm(conn, "/simple/demo/")
    body = b"GET /simple/big/ HTTP/1.1\r\n\r\n"
    await conn.send(
        f"GET /simple/demo/ HTTP/1.1\r\nHost: p\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body,
        get("/simple/demo/"),
    )
    first, second = await conn.reply(), await conn.reply()
    assert first.body == page.body
    assert second.body == page.body


async def test_connection_close_is_honoured(proxy: TestServer, conn: Conn) -> None:
    """A client asking to close gets its page and then the end of the connection."""
    await warm(conn, "/simple/demo/")
    await conn.send(get("/simple/demo/", "Connection: close"))
    assert (await conn.reply()).status == 200
    assert await conn.closed()


async def test_an_expired_page_is_refreshed_from_upstream_not_served_warm(
    make_config: MakeConfig, start_proxy: StartProxy, upstream: FakeSimpleIndex
) -> None:
    """With a zero TTL every request asks the upstream again: the fast path only serves a page
    while it is fresh."""
    config = make_config(
        [{"name": "up", "kind": "simple", "url": f"{upstream.base_url}simple/"}],
        index={"ttl": "0s"},
    )
    proxy = await start_proxy(config)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    conn = Conn(reader, writer)
    upstream.clear_log()
    for _ in range(3):
        await conn.send(get("/simple/demo/"))
        assert (await conn.reply()).status == 200
    writer.close()
    assert upstream.count("GET", "/simple/demo/") == 3
    assert fast_pages(proxy) == 0


async def test_warm_pages_are_counted_and_logged_like_any_other_request(
    proxy: TestServer, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """The request counter and the access log see fast-path pages under the page route."""
    await warm(conn, "/simple/demo/")
    counts = proxy.app[keys.METRICS].requests.counts
    before = counts.get((PROJECT_PAGE, 200), 0)
    with caplog.at_level(logging.INFO, logger="nightproxy.access"):
        await conn.send(get("/simple/demo/"))
        await conn.reply()
    assert fast_pages(proxy) == 1
    assert counts[(PROJECT_PAGE, 200)] == before + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "nightproxy.access"]
    assert any(line.startswith("GET /simple/demo/ 200 ") for line in lines)
    async with aiohttp.ClientSession() as http, http.get(proxy.make_url("/metrics")) as resp:
        text = await resp.text()
    assert "nightproxy_fast_path_pages_total 1.0" in text


async def test_a_client_that_does_not_read_is_left_to_aiohttps_flow_control(
    proxy: TestServer, conn: Conn
) -> None:
    """Hundreds of pipelined requests for a large page, none read: the fast path stops writing
    once the transport says the client is not reading, and every reply still arrives, whole
    and in order, once it does read."""
    page = await warm(conn, "/simple/big/")
    count = 200
    await conn.send(*(get("/simple/big/") for _ in range(count)))
    # Give the proxy time to answer what it will before anyone reads.
    await asyncio.sleep(0.5)
    assert 0 < fast_pages(proxy) < count
    for _ in range(count):
        assert (await conn.reply()).body == page.body


async def test_the_keepalive_timeout_still_closes_an_idle_connection(
    make_config: MakeConfig, upstream: FakeSimpleIndex
) -> None:
    """Warm pages restart the keep-alive timer as aiohttp's loop does: a connection in use
    stays open past the timeout, and an idle one is closed after it."""
    config = make_config([{"name": "up", "kind": "simple", "url": f"{upstream.base_url}simple/"}])
    proxy = ProxyTestServer(create_app(config))
    await proxy.start_server(keepalive_timeout=1.0)
    try:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        conn = Conn(reader, writer)
        await warm(conn, "/simple/demo/")
        for _ in range(8):
            await asyncio.sleep(0.25)
            await conn.send(get("/simple/demo/"))
            assert (await conn.reply()).status == 200
        assert fast_pages(proxy) == 8
        assert await conn.closed(timeout=10)
        writer.close()
    finally:
        await proxy.close()


async def test_a_long_pipeline_of_warm_pages_is_answered_whole_and_the_connection_lives_on(
    proxy: TestServer, conn: Conn
) -> None:
    """More pipelined requests than aiohttp queues at once (and than the fast path answers per
    read): every reply arrives in order, and the connection still answers afterwards."""
    page = await warm(conn, "/simple/demo/")
    count = 3 * fastpath.MAX_PER_READ + 5
    requests = [get("/simple/demo/") for _ in range(count)]
    requests.insert(count // 2, get("/healthz"))
    await conn.send(*requests)
    replies = [await conn.reply() for _ in range(count + 1)]
    assert [r.body == page.body for r in replies].count(True) == count
    assert replies[count // 2].body != page.body
    await conn.send(get("/simple/demo/"))
    assert (await conn.reply()).body == page.body
    await conn.send(get("/healthz"))
    assert (await conn.reply()).status == 200


async def test_on_an_aiohttp_it_was_not_checked_against_every_page_takes_the_ordinary_path(
    make_config: MakeConfig,
    start_proxy: StartProxy,
    upstream: FakeSimpleIndex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The version gate: no fast path, the same pages."""
    monkeypatch.setattr(fastpath, "CHECKED", (Version("0.1"), Version("0.1")))
    config = make_config([{"name": "up", "kind": "simple", "url": f"{upstream.base_url}simple/"}])
    proxy = await start_proxy(config)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    conn = Conn(reader, writer)
    page = await warm(conn, "/simple/demo/")
    await conn.send(get("/simple/demo/"))
    assert (await conn.reply()).body == page.body
    writer.close()
    assert fast_pages(proxy) == 0


async def test_a_page_missing_an_upstream_says_so_from_the_fast_path_too(
    make_config: MakeConfig,
    start_proxy: StartProxy,
    start_fake: StartFake,
    upstream: FakeSimpleIndex,
) -> None:
    """X-Nightproxy-Missing names the failed upstream on warm replies as on the first."""
    down = await start_fake(FakeSimpleIndex())
    down.down = True
    config = make_config(
        [
            {"name": "up", "kind": "simple", "url": f"{upstream.base_url}simple/"},
            {"name": "gone", "kind": "simple", "url": f"{down.base_url}simple/"},
        ]
    )
    proxy = await start_proxy(config)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    conn = Conn(reader, writer)
    first = await warm(conn, "/simple/demo/")
    await conn.send(get("/simple/demo/"))
    second = await conn.reply()
    writer.close()
    assert fast_pages(proxy) == 1
    assert first.header("X-Nightproxy-Missing") == "gone"
    assert second.header("X-Nightproxy-Missing") == "gone"


ACCEPTS = [None, "text/html", PIP_ACCEPT, JSON_TYPE, "image/png", "*/*", "text/*;q=0.5"]
ENCODINGS = [None, "gzip", "gzip;q=0", "br, gzip;q=0.5"]
TARGETS = [
    "/simple/nightly/",
    "/simple/Nightly/",
    "/simple/nightly",
    "/simple/nightly/?format=json",
    "/simple/nig%68tly/",
    "/simple/absent/",
    "/simple/nightly/extra/",
]
#: What may differ between two proxies built at different moments: the clock.
CLOCK_HEADERS = {"Date", "Cache-Control", "Last-Modified"}


def shapes() -> list[bytes]:
    out = []
    for target in TARGETS:
        for accept in ACCEPTS:
            for encoding in ENCODINGS:
                for method, version in (("GET", "1.1"), ("HEAD", "1.1"), ("GET", "1.0")):
                    lines = [f"{method} {target} HTTP/{version}", "Host: proxy"]
                    if accept is not None:
                        lines.append(f"Accept: {accept}")
                    if encoding is not None:
                        lines.append(f"Accept-Encoding: {encoding}")
                    out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


async def replies(server: TestServer, requests: list[bytes]) -> list[Reply]:
    """Each request's reply, in turn, reconnecting whenever the server closes (HTTP/1.0)."""
    got: list[Reply] = []
    conn: Conn | None = None
    for request in requests:
        if conn is None:
            conn = Conn(*await asyncio.open_connection(server.host, server.port))
        await conn.send(request)
        reply = await conn.reply(head=request.startswith(b"HEAD"))
        got.append(reply)
        if reply.version != "HTTP/1.1" or reply.header("Connection") == "close":
            conn.writer.close()
            conn = None
    if conn is not None:
        conn.writer.close()
    return got


async def test_every_request_shape_is_answered_as_aiohttps_ordinary_path_would(
    make_config: MakeConfig,
    start_proxy: StartProxy,
    start_fake: StartFake,
    wheelhouse: Path,
    tmp_path: Path,
) -> None:
    """Targets (canonical or not, escaped, with a query, absent) x Accept x Accept-Encoding x
    GET/HEAD/HTTP 1.0, twice over (cold, then warm): the proxy with the fast path and one
    without it give the same status, headers (in order) and body, the clock's headers aside."""
    fake = FakeSimpleIndex()
    for day in (20, 21):
        fake.add_file("nightly", build_wheel(wheelhouse, "nightly", f"1.0.dev202611{day}"))
    await start_fake(fake)
    upstreams = [{"name": "up", "kind": "simple", "url": f"{fake.base_url}simple/"}]
    fast = await start_proxy(make_config(upstreams))
    plain = TestServer(
        create_app(make_config(upstreams, cache={"dir": str(tmp_path / "plain-cache")}))
    )
    await plain.start_server()
    try:
        requests = shapes() * 2
        ours, theirs = await replies(fast, requests), await replies(plain, requests)
    finally:
        await plain.close()
    assert fast_pages(fast) > 0
    for request, mine, reference in zip(requests, ours, theirs, strict=True):
        label = request.split(b"\r\n\r\n")[0].decode()
        assert (mine.version, mine.status, mine.body) == (
            reference.version,
            reference.status,
            reference.body,
        ), label
        assert [h for h in mine.headers if h[0] not in CLOCK_HEADERS] == [
            h for h in reference.headers if h[0] not in CLOCK_HEADERS
        ], label


async def test_a_connection_closed_before_it_began_waiting_is_closed_at_once(
    proxy: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graceful shutdown closes every connection. One accepted so recently that it is not yet
    waiting for a request (its task not started yet, as before Python 3.12) is closed at once:
    it must not drop its request's bytes and hang until the shutdown timeout."""
    server = proxy.runner.server
    assert server is not None
    real = server.connection_made

    def close_before_its_task_runs(handler: Any, transport: asyncio.Transport) -> None:
        real(handler, transport)
        # Runs before the handler's own task takes its first step (scheduled after this).
        asyncio.get_running_loop().call_soon(handler.close)

    monkeypatch.setattr(server, "connection_made", close_before_its_task_runs)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(get("/healthz"))
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(1), 20)
        except ConnectionResetError:
            data = b""  # closed with the request unread: the kernel answers with a reset
        assert data == b""
    finally:
        writer.close()


async def test_a_request_taken_but_not_yet_handled_when_shutdown_closes_is_answered(
    proxy: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown closing a connection in the moment between aiohttp taking a request off its
    queue and starting its handler still lets that request be answered."""
    server = proxy.runner.server
    assert server is not None
    real = server.request_factory
    closed: list[bool] = []

    def close_before_the_handler_starts(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> Any:
        # Called after the request left the queue, before its handler task exists.
        asyncio.get_running_loop().call_soon(lambda: (closed.append(True), protocol.close()))
        return real(message, payload, protocol, writer, task)

    monkeypatch.setattr(server, "request_factory", close_before_the_handler_starts)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(get("/healthz"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
        assert closed
        assert data.startswith(b"HTTP/1.1 200"), data
    finally:
        writer.close()
