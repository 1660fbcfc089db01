"""The index service under odd load: failing upstream code, made-up names, many as_of times.

Real proxy app in front of real fake upstreams on loopback. Where an upstream must fail in a
way no fake can provoke (a bug in an upstream kind), that upstream's method is replaced on
the live object; the HTTP boundary under test, the proxy's, stays real.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nightproxy.index import health as breaker
from nightproxy.index import pages, views
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
SECRET = "tok-3f9a1c"


def entry(name: str, fake: FakeSimpleIndex) -> dict[str, Any]:
    return {"name": name, "kind": "simple", "url": simple_url(fake)}


async def get_json(
    http: aiohttp.ClientSession, proxy: TestServer, path: str
) -> tuple[int, Any, Any]:
    async with http.get(proxy.make_url(path), headers={"Accept": PIP_ACCEPT}) as resp:
        body = await resp.read()
        doc = json.loads(body) if resp.status == 200 else body.decode(errors="replace")
        return resp.status, resp.headers, doc


def filenames(doc: Any) -> set[str]:
    return {f["filename"] for f in doc["files"]}


@pytest.fixture
async def good(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """Upstream 'good' with demo 1.0."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse / "good", "demo", "1.0"))
    return await start_fake(fake)


@pytest.fixture
async def other(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """Upstream 'bad' (its code is made to fail in the tests) with demo 2.0."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse / "other", "demo", "2.0"))
    return await start_fake(fake)


def break_upstream(proxy: TestServer, name: str, method: str) -> None:
    """Make one upstream's ``method`` raise what no upstream kind should: a plain bug."""

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError(f"parser bug near https://user:{SECRET}@feed.invalid/x?token={SECRET}")

    setattr(proxy.app[keys.INDEX].upstreams[name], method, broken)


async def test_unexpected_error_in_one_upstream_leaves_only_it_out_of_a_page(
    good: FakeSimpleIndex,
    other: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one upstream's page fetch is that upstream's failure: the page is served
    from the others, names the missing one, and neither says what the error's text was."""
    proxy = await start_proxy(make_config([entry("good", good), entry("bad", other)]))
    break_upstream(proxy, "bad", "fetch_project")
    with caplog.at_level(logging.DEBUG):
        status, headers, doc = await get_json(http, proxy, "/simple/demo/")
    assert status == 200
    assert filenames(doc) == {"demo-1.0-py3-none-any.whl"}
    assert headers["X-Nightproxy-Missing"] == "bad"
    assert SECRET not in json.dumps(dict(headers)) + json.dumps(doc)
    assert SECRET not in caplog.text
    assert "unexpected ValueError" in caplog.text


async def test_unexpected_errors_on_many_projects_count_toward_its_circuit_breaker(
    good: FakeSimpleIndex,
    other: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Such a failure is taken for a failure of the page being read; once pages of enough
    different projects failed, they are recorded against the upstream like any other
    failure: readiness and the breaker see it."""
    proxy = await start_proxy(
        make_config([entry("good", good), entry("bad", other)], index={"ttl": "0s"})
    )
    break_upstream(proxy, "bad", "fetch_project")
    asked = breaker.PAGE_FAILURE_PROJECTS + breaker.BREAKER_THRESHOLD - 1
    for n in range(asked):
        await get_json(http, proxy, f"/simple/demo{n}/")
    assert (await get_json(http, proxy, "/simple/demo/"))[0] == 200
    health = proxy.app[keys.INDEX].health["bad"]
    assert health.failures >= breaker.BREAKER_THRESHOLD
    assert health.last_error == "unexpected ValueError"
    assert health.open_until > time.time()


async def test_unexpected_error_listing_one_upstream_leaves_the_project_list_up(
    good: FakeSimpleIndex,
    other: FakeSimpleIndex,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A bug in one upstream's project list leaves that upstream out of /simple/ only."""
    good.add_file("onlygood", build_wheel(wheelhouse / "only", "onlygood", "1.0"))
    proxy = await start_proxy(make_config([entry("good", good), entry("bad", other)]))
    break_upstream(proxy, "bad", "fetch_project_list")
    status, headers, doc = await get_json(http, proxy, "/simple/")
    assert status == 200
    assert {p["name"] for p in doc["projects"]} >= {"demo", "onlygood"}
    assert headers["X-Nightproxy-Missing"] == "bad"


async def test_stale_while_revalidate_shows_a_refreshed_page_once_it_is_fetched(
    good: FakeSimpleIndex,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With a long ttl and stale-while-revalidate, the request after the ttl gets the old
    page at once, and the files its background refresh found are on the very next pages,
    not a whole ttl later."""
    proxy = await start_proxy(
        make_config([entry("good", good)], index={"ttl": "1h", "stale_while_revalidate": True})
    )
    assert filenames((await get_json(http, proxy, "/simple/demo/"))[2]) == {
        "demo-1.0-py3-none-any.whl"
    }
    good.add_file("demo", build_wheel(wheelhouse / "new", "demo", "1.1"))
    index = proxy.app[keys.INDEX]
    index.clock = lambda: time.time() + 3601  # the page's ttl has passed
    status, _headers, doc = await get_json(http, proxy, "/simple/demo/")
    assert status == 200
    assert filenames(doc) == {"demo-1.0-py3-none-any.whl"}, "answered before any fetch"
    async with asyncio.timeout(WAIT):
        while "demo-1.1-py3-none-any.whl" not in filenames(
            (await get_json(http, proxy, "/simple/demo/"))[2]
        ):
            await asyncio.sleep(0.01)


async def test_as_of_views_are_bounded_and_still_answer(
    good: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every distinct as_of time builds a view; only the most recent few are kept, and an
    evicted time is simply built again."""
    monkeypatch.setattr(views, "AS_OF_VIEW_LIMIT", 4)
    proxy = await start_proxy(make_config([entry("good", good)]))
    times = [f"2099-01-{day:02d}T00:00:00Z" for day in range(1, 11)]
    for when in [*times, times[0]]:
        status, _headers, doc = await get_json(http, proxy, f"/simple/demo/?as_of={when}")
        assert status == 200
        assert filenames(doc) == {"demo-1.0-py3-none-any.whl"}
    assert len(proxy.app[keys.INDEX].views.as_of) == 4


async def test_made_up_project_names_do_not_grow_the_service_without_bound(
    good: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names no upstream has are answered 404 and remembered only up to a bound; a real
    project is still served after them."""
    monkeypatch.setattr(pages, "ABSENT_LIMIT", 8)
    monkeypatch.setattr(views, "VIEW_LIMIT", 8)
    proxy = await start_proxy(make_config([entry("good", good)]))
    for n in range(30):
        assert (await get_json(http, proxy, f"/simple/nosuch{n}/"))[0] == 404
    index = proxy.app[keys.INDEX]
    assert len(index.pages._absent) <= 8
    assert len(index.views.current) <= 8
    status, _headers, doc = await get_json(http, proxy, "/simple/demo/")
    assert status == 200
    assert filenames(doc) == {"demo-1.0-py3-none-any.whl"}
