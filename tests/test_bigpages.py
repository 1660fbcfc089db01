"""Big pages: the event loop keeps answering while one is processed, a page is held without
an object per file, and a big page kept compressed is served whole to every client.

Real proxy app in front of a real loopback feed serving generated pages. Where the test must
know the page is "in the middle of being processed", the step doing it is made to wait for
the test on the live object; the HTTP boundary under test stays real. No wall times are
asserted: the loop's responsiveness is shown by /healthz answering while the work is held.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import json
import threading
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nightproxy.index import listing, prepared
from nightproxy.server import keys
from nightproxy.simple_api.names import ProjectNames
from tests.conftest import PIP_ACCEPT, MakeConfig, StartProxy

WAIT = 30.0  # upper bound for any single wait; never an assertion about speed
LINKS = 20_000
TAGS = ("cp311-cp311-manylinux_2_17_x86_64", "cp312-cp312-win_amd64", "py3-none-any")


def big_page(links: int) -> str:
    out = ["<!DOCTYPE html><html><body>\n"]
    for n in range(links):
        name = f"big-1.0.dev{n // len(TAGS)}-{TAGS[n % len(TAGS)]}.whl"
        sha = hashlib.sha256(name.encode()).hexdigest()
        out.append(f'<a href="https://files.example.invalid/{sha[:2]}/{name}#sha256={sha}">x</a>\n')
    return "".join(out) + "</body></html>\n"


def project_list(count: int) -> str:
    names = [{"name": f"Project_{n:06d}"} for n in range(count)]
    return json.dumps({"meta": {"api-version": "1.1"}, "projects": names})


@pytest.fixture
async def feed(aiohttp_server: Any) -> TestServer:
    """A feed with one big project page and a long project list."""
    page = big_page(LINKS)
    names = project_list(30_000)

    async def project(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def root(_request: web.Request) -> web.Response:
        return web.Response(text=names, content_type="application/vnd.pypi.simple.v1+json")

    app = web.Application()
    app.router.add_get("/simple/big/", project)
    app.router.add_get("/simple/", root)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def proxy(feed: TestServer, make_config: MakeConfig, start_proxy: StartProxy) -> TestServer:
    entry = {"name": "main", "kind": "simple", "url": str(feed.make_url("/simple/"))}
    return await start_proxy(make_config([entry]))


class Gate:
    """Holds a blocking step (in whatever thread runs it) until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.threads: list[threading.Thread] = []

    def wrap(self, step: Any) -> Any:
        def held(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.current_thread())
            self.entered.set()
            self.opened.wait(WAIT)
            return step(*args, **kwargs)

        return held


async def healthz_while_held(
    http: aiohttp.ClientSession, proxy: TestServer, gate: Gate, path: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    """Ask for ``path``; once its work is held at the gate, ask /healthz; then open the gate.
    Returns the page's status and body; fails if /healthz did not answer while held."""

    async def page() -> tuple[int, bytes]:
        async with http.get(proxy.make_url(path), headers=headers) as resp:
            return resp.status, await resp.read()

    request = asyncio.ensure_future(page())
    try:
        async with asyncio.timeout(WAIT):
            while not gate.entered.is_set():
                await asyncio.sleep(0.01)
            async with http.get(proxy.make_url("/healthz")) as resp:
                assert resp.status == 200
            assert not request.done(), "the page was answered before /healthz"
    finally:
        gate.opened.set()
    return await request


async def test_healthz_answers_while_a_big_page_is_parsed(
    proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """While the upstream's page of 20,000 links is being parsed, /healthz answers; the parse
    runs in a worker thread, and the page then lists every file."""
    gate = Gate()
    upstream = proxy.app[keys.UPSTREAMS]["main"]
    upstream.parse_page = gate.wrap(upstream.parse_page)  # type: ignore[method-assign]
    status, body = await healthz_while_held(
        http, proxy, gate, "/simple/big/", {"Accept": PIP_ACCEPT}
    )
    assert status == 200
    assert len(json.loads(body)["files"]) == LINKS
    assert gate.threads
    assert threading.main_thread() not in gate.threads


async def test_healthz_answers_while_a_big_page_is_published(
    proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """While the merged page is being published (merge, dates, retention), /healthz answers;
    that work runs in a worker thread."""
    gate = Gate()
    publisher = proxy.app[keys.INDEX].views.publisher
    publisher.build = gate.wrap(publisher.build)  # type: ignore[method-assign]
    status, body = await healthz_while_held(
        http, proxy, gate, "/simple/big/", {"Accept": PIP_ACCEPT}
    )
    assert status == 200
    assert len(json.loads(body)["files"]) == LINKS
    assert gate.threads
    assert threading.main_thread() not in gate.threads


async def test_healthz_answers_while_a_long_project_list_is_merged(
    proxy: TestServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the project list is being merged and sorted, /healthz answers; that work runs in
    a worker thread, and the list then names every project once."""
    gate = Gate()

    class HeldNames(ProjectNames):
        union = staticmethod(gate.wrap(ProjectNames.union))  # type: ignore[assignment]

    monkeypatch.setattr(listing, "ProjectNames", HeldNames)
    status, body = await healthz_while_held(http, proxy, gate, "/simple/", {"Accept": PIP_ACCEPT})
    assert status == 200
    names = [p["name"] for p in json.loads(body)["projects"]]
    assert len(names) == 30_000
    assert names == sorted(names)
    assert gate.threads
    assert threading.main_thread() not in gate.threads


async def test_a_big_page_is_held_without_an_object_per_file(
    proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Once a page of 20,000 files is fetched, published and rendered, the objects the
    process holds have grown by far fewer than one per file: the files are packed."""
    async with http.get(proxy.make_url("/healthz")) as resp:
        assert resp.status == 200
    gc.collect()
    before = len(gc.get_objects())
    async with http.get(proxy.make_url("/simple/big/"), headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        assert len(json.loads(await resp.read())["files"]) == LINKS
    gc.collect()
    assert len(gc.get_objects()) - before < LINKS // 2


async def test_a_big_page_kept_compressed_is_sent_whole_with_or_without_gzip(
    proxy: TestServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page over the size kept uncompressed reaches a client without gzip inflated, with
    the right length, and one with gzip compressed; both carry the same page; a HEAD says the
    length and sends nothing."""
    monkeypatch.setattr(prepared, "BIG", 64 * 1024)
    url = proxy.make_url("/simple/big/")
    async with http.get(
        url, headers={"Accept": "text/html", "Accept-Encoding": "identity"}
    ) as resp:
        assert resp.status == 200
        plain = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(plain) > prepared.BIG
        assert "Content-Encoding" not in resp.headers
        plain_etag = resp.headers["ETag"]
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        async with raw.get(url, headers={"Accept": "text/html", "Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            packed = await resp.read()
            assert resp.headers["ETag"] == plain_etag[:-1] + '-gz"'
        head = {"Accept": "text/html", "Accept-Encoding": "identity"}
        async with raw.head(url, headers=head) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == len(plain)
            assert await resp.read() == b""
    assert gzip.decompress(packed) == plain
    assert plain.count(b"<a ") == LINKS
