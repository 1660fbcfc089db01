"""Upstream health as the index judges it: what the circuit breaker counts, readiness, and
the warning about an upstream that has no project at all; and the media type of a page.

Real proxy app in front of real loopback feeds (small aiohttp apps written here when a feed
must fail in a particular way).
"""

from __future__ import annotations

import errno
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nightproxy.index import health as breaker
from nightproxy.server import keys
from nightproxy.upstreams.http import SHORTAGE, UpstreamError, is_shortage
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel

SHA = "cd" * 32
GOOD_PAGE = (
    '<html><body><a href="/files/good-1.0-py3-none-any.whl#sha256=' + SHA + '">x</a></body></html>'
)


async def broken_feed(request: web.Request) -> web.Response:
    """``good`` has a page; ``garbled`` answers a malformed page; every other project 500."""
    project = request.match_info["project"]
    if project == "good":
        return web.Response(text=GOOD_PAGE, content_type="text/html")
    if project == "garbled":
        return web.Response(text='{"files": [', content_type="application/vnd.pypi.simple.v1+json")
    return web.Response(status=500, text="internal error")


@pytest.fixture
async def feed(aiohttp_server: Any) -> TestServer:
    app = web.Application()
    app.router.add_get("/simple/{project}/", broken_feed)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def proxy(feed: TestServer, make_config: MakeConfig, start_proxy: StartProxy) -> TestServer:
    entry = {"name": "main", "kind": "simple", "url": str(feed.make_url("/simple/"))}
    return await start_proxy(make_config([entry], index={"ttl": "0s"}))


async def status_of(http: aiohttp.ClientSession, proxy: TestServer, project: str) -> int:
    async with http.get(proxy.make_url(f"/simple/{project}/"), headers={"Accept": PIP_ACCEPT}) as r:
        await r.read()
        return r.status


async def test_one_projects_broken_pages_leave_its_upstream_serving_the_others(
    proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A project whose page answers 500, and one whose page is malformed, each asked for
    three times over, do not open the upstream's breaker: its healthy project is served."""
    for _ in range(breaker.BREAKER_THRESHOLD):
        assert await status_of(http, proxy, "bad") == 502
        assert await status_of(http, proxy, "garbled") == 502
    assert await status_of(http, proxy, "good") == 200
    health = proxy.app[keys.INDEX].health["main"]
    assert health.open_until <= time.time()
    assert health.state == "ok"


async def test_pages_of_many_projects_failing_open_the_breaker(
    proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Server errors on the pages of many different projects are the upstream's failure:
    after enough of them the breaker opens and skips the upstream."""
    for n in range(breaker.PAGE_FAILURE_PROJECTS + breaker.BREAKER_THRESHOLD - 1):
        assert await status_of(http, proxy, f"bad{n}") == 502
    health = proxy.app[keys.INDEX].health["main"]
    assert health.open_until > time.time()
    assert await status_of(http, proxy, "good") == 502  # skipped while the breaker is open


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        (
            {"Accept": "application/vnd.pypi.simple.v1+html"},
            "",
            "application/vnd.pypi.simple.v1+html",
        ),
        ({}, "?format=application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.v1+html"),
        (
            {"Accept": "application/vnd.pypi.simple.latest+html"},
            "",
            "application/vnd.pypi.simple.v1+html",
        ),
        ({"Accept": "text/html"}, "", "text/html; charset=utf-8"),
        ({}, "", "text/html; charset=utf-8"),
        ({"Accept": PIP_ACCEPT}, "", "application/vnd.pypi.simple.v1+json"),
    ],
)
@pytest.mark.parametrize("path", ["/simple/good/", "/simple/"])
async def test_a_page_is_answered_in_the_media_type_asked_for(
    proxy: TestServer,
    http: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str],
    query: str,
    expected: str,
) -> None:
    """PEP 691: a page asked for as ``application/vnd.pypi.simple.v1+html`` (by Accept or by
    ``?format=``) is answered with that content type, ``text/html`` as ``text/html``."""
    async with http.get(proxy.make_url(path + query), headers=headers) as resp:
        await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == expected


async def test_an_upstream_without_any_project_is_warned_about(
    start_fake: StartFake,
    wheelhouse: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream configured without its ``/simple/`` answers 404 for every project: after a
    few different projects the log says so once, and the status page and readiness show it."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    await start_fake(fake)
    wrong = {"name": "main", "kind": "simple", "url": fake.base_url}
    right = {"name": "right", "kind": "simple", "url": simple_url(fake)}
    proxy = await start_proxy(make_config([wrong, right]))
    with caplog.at_level(logging.WARNING, logger="nightproxy.index.health"):
        assert await status_of(http, proxy, "demo") == 200  # found on the right one only
        for n in range(breaker.NOT_FOUND_WARNING + 2):
            await status_of(http, proxy, f"nosuch{n}")
    warned = [r for r in caplog.records if "answered 404 for all" in r.getMessage()]
    assert len(warned) == 1
    assert "'main'" in warned[0].getMessage()
    async with http.get(proxy.make_url("/")) as resp:
        page = await resp.text()
    assert "Upstream main: answered 404 for all" in page
    assert "/simple/" in page
    async with http.get(proxy.make_url("/readyz")) as resp:
        upstreams = json.loads(await resp.read())["upstreams"]
    assert upstreams["main"]["warning"]
    assert upstreams["right"]["warning"] is None


async def test_a_project_found_clears_the_warning(
    start_fake: StartFake,
    wheelhouse: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """An upstream that lacks the first projects asked for but has the next one is no
    misconfigured upstream: no warning stays."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    await start_fake(fake)
    proxy = await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(fake)}])
    )
    for n in range(breaker.NOT_FOUND_WARNING):
        await status_of(http, proxy, f"nosuch{n}")
    assert proxy.app[keys.INDEX].health["main"].warning is not None
    assert await status_of(http, proxy, "demo") == 200
    assert proxy.app[keys.INDEX].health["main"].warning is None


def test_a_local_shortage_is_never_the_upstreams_failure() -> None:
    """Running out of descriptors while connecting says nothing of the upstream: it is not
    counted against it, for its root or for a project, while a refused connection is."""
    emfile = OSError(errno.EMFILE, "Too many open files")
    wrapped = UpstreamError("main", "connect failed")
    wrapped.__cause__ = aiohttp.ClientOSError(errno.EMFILE, "Too many open files")
    assert is_shortage(wrapped)
    assert not is_shortage(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    local = UpstreamError("main", SHORTAGE, local=True)
    for project in (None, "demo"):
        assert not breaker.counts_against_upstream(local, project)
        assert breaker.counts_against_upstream(UpstreamError("main", "refused"), project)
    assert breaker.as_upstream_error("main", emfile).local
