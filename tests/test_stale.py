"""Index pages when upstreams fail: stale pages, persistence, revalidation, circuit breaker.

Real proxy app in front of real fake upstreams on loopback. Every count of upstream requests
is read from the fake's own request log.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.index.health import BREAKER_BASE_DELAY, BREAKER_THRESHOLD
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
PAGE = "/simple/demo/"


async def page(
    http: aiohttp.ClientSession, proxy: TestServer, path: str = PAGE
) -> tuple[int, Any, dict[str, Any] | str]:
    """(status, headers, parsed JSON or error text) of a PEP 691 page request."""
    async with http.get(proxy.make_url(path), headers={"Accept": PIP_ACCEPT}) as resp:
        body = await resp.read()
        if resp.status != 200:
            return resp.status, resp.headers, body.decode(errors="replace")
        return resp.status, resp.headers, json.loads(body)


def filenames(doc: Any) -> set[str]:
    return {f["filename"] for f in doc["files"]}


def page_gets(fake: FakeSimpleIndex, path: str = PAGE) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path == path)


async def new_fake(start_fake: StartFake, wheelhouse: Path, version: str) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse / version, "demo", version))
    return await start_fake(fake)


def entry(name: str, fake: FakeSimpleIndex) -> dict[str, Any]:
    return {"name": name, "kind": "simple", "url": simple_url(fake)}


@pytest.fixture
async def alpha(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """Upstream 'alpha' with demo 1.0."""
    return await new_fake(start_fake, wheelhouse, "1.0")


@pytest.fixture
async def beta(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """Upstream 'beta' with demo 2.0."""
    return await new_fake(start_fake, wheelhouse, "2.0")


ALPHA_FILE = "demo-1.0-py3-none-any.whl"
BETA_FILE = "demo-2.0-py3-none-any.whl"


# -- stale_if_error -------------------------------------------------------------------------


async def test_stale_page_served_while_upstream_is_down_and_says_so(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """ttl 0s, upstream goes down: the last good page is served with X-Nightproxy-Stale."""
    proxy = await start_proxy(make_config([entry("main", alpha)], index={"ttl": "0s"}))
    status, headers, doc = await page(http, proxy)
    assert status == 200
    assert "X-Nightproxy-Stale" not in headers

    alpha.down = True
    before = page_gets(alpha)
    status, headers, doc = await page(http, proxy)
    assert status == 200
    assert headers["X-Nightproxy-Stale"] == "main"
    assert filenames(doc) == {ALPHA_FILE}
    assert page_gets(alpha) == before + 1, "the upstream was asked first"


async def test_stale_header_names_every_stale_upstream(
    alpha: FakeSimpleIndex,
    beta: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Both upstreams down: the page merges both stale pages and names both."""
    proxy = await start_proxy(
        make_config([entry("alpha", alpha), entry("beta", beta)], index={"ttl": "0s"})
    )
    assert (await page(http, proxy))[0] == 200
    alpha.down = beta.down = True
    status, headers, doc = await page(http, proxy)
    assert status == 200
    assert {s.strip() for s in headers["X-Nightproxy-Stale"].split(",")} == {"alpha", "beta"}
    assert filenames(doc) == {ALPHA_FILE, BETA_FILE}


async def test_stale_page_older_than_stale_if_error_is_not_served(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """stale_if_error 0s: with the upstream down there is no stand-in, so the page is a 502."""
    proxy = await start_proxy(
        make_config([entry("main", alpha)], index={"ttl": "0s", "stale_if_error": "0s"})
    )
    assert (await page(http, proxy))[0] == 200
    alpha.down = True
    status, _headers, text = await page(http, proxy)
    assert status == 502
    assert "main" in str(text)


async def test_restart_with_upstream_down_serves_persisted_page_and_cached_file(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A proxy restarted while its only upstream is down still serves the project page
    (from the persisted last good page, marked stale) and the file it had cached."""
    config = make_config([entry("main", alpha)])
    first = await start_proxy(config)
    status, _headers, doc = await page(http, first)
    assert status == 200
    url = first.make_url(PAGE).join(URL(doc["files"][0]["url"]))
    async with http.get(url) as resp:
        wheel_bytes = await resp.read()
    assert resp.status == 200
    await first.close()

    alpha.down = True
    second = await start_proxy(config)
    status, headers, doc = await page(http, second)
    assert status == 200, doc
    assert headers["X-Nightproxy-Stale"] == "main"
    assert filenames(doc) == {ALPHA_FILE}
    url = second.make_url(PAGE).join(URL(doc["files"][0]["url"]))
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
        assert await resp.read() == wheel_bytes


async def test_restart_after_revalidation_keeps_the_page_within_stale_if_error(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A page confirmed good by a 304 just before a restart still stands in after it."""
    config = make_config([entry("main", alpha)], index={"ttl": "0s", "stale_if_error": "2s"})
    first = await start_proxy(config)
    assert (await page(http, first))[0] == 200
    await asyncio.sleep(2.5)  # the first fetch is now older than stale_if_error
    assert (await page(http, first))[0] == 200  # revalidated: 304 from upstream
    assert "If-None-Match" in alpha.requests[-1].headers
    await first.close()

    alpha.down = True
    second = await start_proxy(config)
    status, headers, _doc = await page(http, second)
    assert status == 200
    assert headers["X-Nightproxy-Stale"] == "main"


async def test_project_list_survives_upstream_outage(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """/simple/ keeps listing an upstream's projects while that upstream is down."""
    proxy = await start_proxy(make_config([entry("main", alpha)], index={"ttl": "0s"}))
    status, _headers, doc = await page(http, proxy, "/simple/")
    assert status == 200
    assert {p["name"] for p in doc["projects"]} == {"demo"}
    alpha.down = True
    status, _headers, doc = await page(http, proxy, "/simple/")
    assert status == 200
    assert {p["name"] for p in doc["projects"]} == {"demo"}


# -- stale_while_revalidate -----------------------------------------------------------------


async def test_stale_while_revalidate_serves_old_page_then_refreshes(
    alpha: FakeSimpleIndex,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """After ttl, the old page is answered at once and the new one appears after the
    background refresh."""
    proxy = await start_proxy(
        make_config([entry("main", alpha)], index={"ttl": "0s", "stale_while_revalidate": True})
    )
    assert filenames((await page(http, proxy))[2]) == {ALPHA_FILE}
    alpha.add_file("demo", build_wheel(wheelhouse / "new", "demo", "1.1"))
    status, _headers, doc = await page(http, proxy)
    assert status == 200
    assert filenames(doc) == {ALPHA_FILE}, "answered from the old page, not after a fetch"

    async with asyncio.timeout(WAIT):
        while "demo-1.1-py3-none-any.whl" not in filenames((await page(http, proxy))[2]):
            await asyncio.sleep(0.01)


async def test_stale_while_revalidate_still_says_stale_when_upstream_is_down(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With swr on and the upstream down, pages served from its last good copy say so."""
    proxy = await start_proxy(
        make_config([entry("main", alpha)], index={"ttl": "0s", "stale_while_revalidate": True})
    )
    assert (await page(http, proxy))[0] == 200
    alpha.down = True
    failed = page_gets(alpha) + 2
    async with asyncio.timeout(WAIT):
        while page_gets(alpha) < failed:  # background refreshes have failed
            await page(http, proxy)
            await asyncio.sleep(0.01)
    status, headers, _doc = await page(http, proxy)
    assert status == 200
    assert headers.get("X-Nightproxy-Stale") == "main"


# -- revalidation ---------------------------------------------------------------------------


async def test_within_ttl_page_is_served_from_memory(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With the default ttl, repeated page requests reach the upstream once."""
    proxy = await start_proxy(make_config([entry("main", alpha)]))
    for _ in range(3):
        assert (await page(http, proxy))[0] == 200
    assert page_gets(alpha) == 1


async def test_revalidation_sends_if_none_match_and_keeps_page_on_304(
    alpha: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """After ttl the upstream is asked with the ETag it gave; its 304 keeps the same page."""
    proxy = await start_proxy(make_config([entry("main", alpha)], index={"ttl": "0s"}))
    _status, headers1, doc1 = await page(http, proxy)
    first = [r for r in alpha.requests if r.path == PAGE]
    assert "If-None-Match" not in first[0].headers

    _status, headers2, doc2 = await page(http, proxy)
    revalidation = [r for r in alpha.requests if r.path == PAGE][-1]
    validator = revalidation.headers.get("If-None-Match")
    assert validator, "no If-None-Match on revalidation"
    # The validator is the upstream's current ETag: asked directly, it answers 304.
    async with http.get(
        URL(simple_url(alpha)) / "demo/",
        headers={"Accept": revalidation.headers["Accept"], "If-None-Match": validator},
    ) as resp:
        assert resp.status == 304
    assert doc2 == doc1
    assert headers2["ETag"] == headers1["ETag"]


async def test_changed_upstream_page_replaces_the_old_one_after_ttl(
    alpha: FakeSimpleIndex,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A revalidation answered 200 (the ETag changed) brings the new file and a new ETag."""
    proxy = await start_proxy(make_config([entry("main", alpha)], index={"ttl": "0s"}))
    _s, headers1, _doc = await page(http, proxy)
    alpha.add_file("demo", build_wheel(wheelhouse / "new", "demo", "1.1"))
    _s, headers2, doc = await page(http, proxy)
    assert "demo-1.1-py3-none-any.whl" in filenames(doc)
    assert headers2["ETag"] != headers1["ETag"]


# -- circuit breaker ------------------------------------------------------------------------


async def test_circuit_breaker_skips_dead_upstream(
    alpha: FakeSimpleIndex,
    beta: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """After 3 failures the dead upstream gets no more page requests for a while, and the
    page keeps coming from the live one, naming the dead one as missing."""
    proxy = await start_proxy(
        make_config([entry("alpha", alpha), entry("beta", beta)], index={"ttl": "0s"})
    )
    alpha.down = True
    for _ in range(BREAKER_THRESHOLD + 5):
        status, headers, doc = await page(http, proxy)
        assert status == 200
        assert filenames(doc) == {BETA_FILE}
        assert headers["X-Nightproxy-Missing"] == "alpha"
    assert page_gets(alpha) == BREAKER_THRESHOLD
    assert page_gets(beta) == BREAKER_THRESHOLD + 5


async def test_circuit_breaker_tries_again_after_back_off(
    alpha: FakeSimpleIndex,
    beta: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Once the back-off has passed (clock moved on), a recovered upstream is used again."""
    proxy = await start_proxy(
        make_config([entry("alpha", alpha), entry("beta", beta)], index={"ttl": "0s"})
    )
    alpha.down = True
    for _ in range(BREAKER_THRESHOLD + 1):
        await page(http, proxy)
    assert page_gets(alpha) == BREAKER_THRESHOLD
    alpha.down = False
    index = proxy.app[keys.INDEX]
    index.clock = lambda: time.time() + BREAKER_BASE_DELAY + 1
    status, headers, doc = await page(http, proxy)
    assert status == 200
    assert page_gets(alpha) == BREAKER_THRESHOLD + 1
    assert filenames(doc) == {ALPHA_FILE, BETA_FILE}
    assert "X-Nightproxy-Missing" not in headers
