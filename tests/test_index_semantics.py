"""What a page says about its files: ``as_of`` existence, metadata only where it is served, and
PEP 700 ``size`` for feeds that list none. Pure rules directly; pages through the real proxy
against fakes on real loopback sockets.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from nightproxy.config import RetentionConfig
from nightproxy.index.retention import Policy, apply_retention, available_since
from nightproxy.simple_api.records import DistFile, PublishedFile
from nightproxy.simple_api.render import render_project_json
from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import html_anchors
from tests.wheels import build_sdist, build_wheel

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NO_AGE_LIMIT = Policy.uniform(RetentionConfig(dev_max_age=None, keep_latest=0))
METADATA_KEYS = {"core-metadata", "data-dist-info-metadata", "dist-info-metadata"}


def published(
    version: str,
    *,
    built: datetime | None,
    uploaded: datetime | None = None,
    size: int | None = None,
    cached_size: int | None = None,
) -> PublishedFile:
    filename = f"demo-{version}-py3-none-any.whl"
    return PublishedFile(
        source=DistFile(
            filename=filename,
            url=f"https://x.invalid/{filename}",
            upstream="nightly",
            upload_time=uploaded,
            size=size,
        ),
        url=f"../../files/demo/k/{filename}",
        hashes={},
        core_metadata=True,
        build_time=built,
        build_time_source="version" if built else None,
        cached_size=cached_size,
    )


def midnight(days_ago: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def z(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def json_doc(http: aiohttp.ClientSession, url: URL) -> dict[str, Any]:
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        doc: dict[str, Any] = json.loads(text)
        return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filename"]: f for f in doc["files"]}


# -- as_of: a file exists from the later of its build and upload times ---------------------------

_instants = st.datetimes(
    min_value=datetime(2026, 1, 1),
    max_value=datetime(2026, 12, 31),
    timezones=st.just(UTC),
)
_times = st.one_of(st.none(), _instants)


@given(st.lists(st.tuples(_times, _times), max_size=12), _instants)
def test_as_of_shows_exactly_the_files_built_and_uploaded_by_then(
    times: list[tuple[datetime | None, datetime | None]], as_of: datetime
) -> None:
    """Without an age limit, an as_of view keeps a file iff neither time dates it later."""
    files = [
        published(f"1.0.dev{n}", built=built, uploaded=uploaded)
        for n, (built, uploaded) in enumerate(times)
    ]
    shown = apply_retention(files, NO_AGE_LIMIT, now=NOW, as_of=as_of)
    expected = [
        f
        for f in files
        if all(t is None or t <= as_of for t in (f.build_time, f.source.upload_time))
    ]
    assert shown == tuple(expected)


def test_a_version_dated_nightly_uploaded_after_as_of_is_hidden() -> None:
    """devYYYYMMDD says midnight, but the upload at 20:00 is what dates its existence."""
    day = datetime(2026, 11, 29, tzinfo=UTC)
    late = published("1.0.dev20261129", built=day, uploaded=day + timedelta(hours=20))
    assert available_since(late) == day + timedelta(hours=20)
    shown = apply_retention([late], NO_AGE_LIMIT, now=NOW, as_of=day + timedelta(hours=1))
    assert shown == ()


def test_retention_age_still_counts_from_the_build_time() -> None:
    """dev_max_age ages a file by its build date, even when its upload came later."""
    built = NOW - timedelta(days=5)
    old = published("1.0.dev1", built=built, uploaded=NOW - timedelta(hours=1))
    policy = Policy.uniform(RetentionConfig(dev_max_age=3 * 86400.0, keep_latest=0))
    assert apply_retention([old], policy, now=NOW) == ()


async def test_as_of_page_hides_a_nightly_uploaded_after_it(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """``/as-of/<t>/simple/`` leaves out a nightly stamped with t's day but uploaded after t."""
    day = midnight(2)
    fake = FakeSimpleIndex()
    late = build_wheel(wheelhouse, "proj", f"1.0.dev{day:%Y%m%d}")
    early = build_wheel(wheelhouse, "proj", f"1.0.dev{day - timedelta(days=1):%Y%m%d}")
    fake.add_file("proj", late, upload_time=day + timedelta(hours=20))
    fake.add_file("proj", early, upload_time=day - timedelta(hours=4))
    await start_fake(fake)
    proxy = await start_proxy(
        make_config([{"name": "a", "kind": "simple", "url": simple_url(fake)}])
    )
    as_of = z(day + timedelta(hours=1))
    doc = await json_doc(http, proxy.make_url(f"/as-of/{as_of}/simple/proj/"))
    assert set(by_name(doc)) == {early.name}


# -- PEP 658/714: metadata is advertised only where .metadata is served --------------------------


@pytest.fixture
async def sdist_proxy(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> tuple[TestServer, str, str]:
    """A feed whose sdist and wheel both come with PEP 658 metadata of their own."""
    fake = FakeSimpleIndex()
    sdist = build_sdist(wheelhouse, "proj", "1.0")
    wheel = build_wheel(wheelhouse, "proj", "1.0")
    fake.add_file("proj", sdist)
    fake.add_file("proj", wheel)
    assert fake.projects["proj"].files[sdist.name].metadata is not None
    await start_fake(fake)
    proxy = await start_proxy(
        make_config([{"name": "a", "kind": "simple", "url": simple_url(fake)}])
    )
    return proxy, sdist.name, wheel.name


async def test_json_advertises_no_metadata_for_an_sdist(
    sdist_proxy: tuple[TestServer, str, str], http: aiohttp.ClientSession
) -> None:
    """A JSON sdist entry carries no core-metadata keys, even when its feed has some."""
    proxy, sdist, wheel = sdist_proxy
    files = by_name(await json_doc(http, proxy.make_url("/simple/proj/")))
    assert not METADATA_KEYS & set(files[sdist])
    assert "core-metadata" in files[wheel]


async def test_html_advertises_no_metadata_for_an_sdist(
    sdist_proxy: tuple[TestServer, str, str], http: aiohttp.ClientSession
) -> None:
    """An HTML sdist link carries no data-core-metadata or data-dist-info-metadata."""
    proxy, sdist, wheel = sdist_proxy
    async with http.get(proxy.make_url("/simple/proj/"), headers={"Accept": "text/html"}) as r:
        anchors = html_anchors(await r.text())
    assert "data-core-metadata" not in anchors[sdist]
    assert "data-dist-info-metadata" not in anchors[sdist]
    assert "data-core-metadata" in anchors[wheel]


# -- PEP 700 size for feeds that list none ------------------------------------------------------


def test_json_size_falls_back_to_the_cached_copy() -> None:
    """A JSON entry lists the cached copy's size when the feed gave none, the feed's otherwise."""
    doc = json.loads(
        render_project_json(
            "demo",  # type: ignore[arg-type]
            [
                published("1.0", built=None, cached_size=123),
                published("1.1", built=None, size=7, cached_size=123),
                published("1.2", built=None),
            ],
        )
    )
    sizes = [f.get("size") for f in doc["files"]]
    assert sizes == [123, 7, None]


class HtmlOnlyFeed:
    """A static PEP 503 page with no sizes, hashes in the links or not, and a request log."""

    def __init__(self, path: Path, *, with_hash: bool) -> None:
        self.data = path.read_bytes()
        self.filename = path.name
        self.with_hash = with_hash
        self.page_requests = 0
        self.file_requests = 0
        self.base_url = ""

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/simple/{project}/", self._page)
        app.router.add_get("/files/{filename}", self._file)
        return app

    def bind(self, server: TestServer) -> None:
        self.base_url = str(server.make_url("/"))

    async def _page(self, request: web.Request) -> web.Response:
        if request.match_info["project"] != "proj":
            raise web.HTTPNotFound()
        self.page_requests += 1
        fragment = f"#sha256={hashlib.sha256(self.data).hexdigest()}" if self.with_hash else ""
        href = f"{self.base_url}files/{self.filename}{fragment}"
        body = f'<html><body><a href="{href}">{self.filename}</a></body></html>'
        return web.Response(text=body, content_type="text/html")

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["filename"] != self.filename:
            raise web.HTTPNotFound()
        self.file_requests += 1
        return web.Response(body=self.data, content_type="application/octet-stream")


async def size_after_download(
    feed: HtmlOnlyFeed,
    start_fake: StartFake,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's JSON entry before and after one download through the proxy."""
    await start_fake(feed)
    proxy = await start_proxy(
        make_config([{"name": "a", "kind": "simple", "url": feed.base_url + "simple/"}])
    )
    page = proxy.make_url("/simple/proj/")
    before = by_name(await json_doc(http, page))[feed.filename]
    async with http.get(page.join(URL(before["url"]))) as resp:
        assert resp.status == 200
        assert await resp.read() == feed.data
    after = by_name(await json_doc(http, page))[feed.filename]
    return before, after


async def test_size_appears_once_an_unhashed_html_file_is_cached(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A feed link without hash or size gets the verified copy's size on the next page."""
    feed = HtmlOnlyFeed(build_wheel(wheelhouse, "proj", "1.0"), with_hash=False)
    before, after = await size_after_download(feed, start_fake, make_config, start_proxy, http)
    assert "size" not in before
    assert after["size"] == len(feed.data)
    assert feed.page_requests == 1


async def test_size_appears_once_a_hashed_html_file_is_cached(
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A feed link with a sha256 but no size gets the cached copy's size on the next page,
    without the page being fetched from the feed again."""
    feed = HtmlOnlyFeed(build_wheel(wheelhouse, "proj", "1.0"), with_hash=True)
    before, after = await size_after_download(feed, start_fake, make_config, start_proxy, http)
    assert "size" not in before
    assert after["size"] == len(feed.data)
    assert feed.page_requests == 1
