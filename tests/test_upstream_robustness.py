"""Upstreams that misbehave fail alone: bad links are skipped, cut or stalled bodies, deep JSON
and rate limits become that upstream's failure, never the page's. Plus the directory kind's
in-place overwrite, dotted static-tree projects, large pages and out-of-range times.

Every upstream is a real aiohttp server on loopback; the proxy is the real app.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name
from yarl import URL

from nightproxy.config import DirectoryOptions, UpstreamConfig
from nightproxy.simple_api.listparse import parse_project_list
from nightproxy.simple_api.parse import (
    PageParseError,
    parse_project_json,
    parse_upload_time,
)
from nightproxy.simple_api.records import ProjectPage
from nightproxy.upstreams import simple as simple_module
from nightproxy.upstreams.base import PARSE_INLINE_MAX
from nightproxy.upstreams.directory import DirectoryUpstream
from nightproxy.upstreams.http import UpstreamError
from tests.conftest import JSON_TYPE, MakeConfig, StartProxy
from tests.wheels import build_wheel, sha256_file

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[TestServer]]

SHA = "a" * 64
GOOD_WHEEL = "demo-1.0-py3-none-any.whl"
#: URLs urllib refuses, by raising, to split.
BAD_URLS = {
    "ipv6": "http://[broken/",
    "nfkc": "https://exa\uff03mple/demo-2.0-py3-none-any.whl",
    "port": "http://127.0.0.1:99999/demo-2.0-py3-none-any.whl",
}
#: ... and a filename packaging refuses by raising (a version int() will not convert).
BAD_HREFS = {**BAD_URLS, "digits": "/f/demo-" + "9" * 5000 + ".tar.gz"}


def html(links: list[tuple[str, str]]) -> str:
    anchors = "".join(f'<a href="{href}">{text}</a><br/>' for href, text in links)
    return f"<!DOCTYPE html><html><body>{anchors}</body></html>"


def html_handler(text: str) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    return handler


@pytest.fixture
async def serve(aiohttp_server: Any) -> Serve:
    """A fake upstream answering GET ``path`` with ``handler``, on a real loopback socket."""

    async def start(routes: dict[str, Handler]) -> TestServer:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server: TestServer = await aiohttp_server(app)
        return server

    return start


@pytest.fixture
async def release(aiohttp_server: Any) -> AsyncIterator[asyncio.Event]:
    """Set at teardown, before the fakes close, so that stalled handlers end."""
    event = asyncio.Event()
    yield event
    event.set()


def simple(name: str, server: TestServer, path: str = "/simple/", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simple", "url": str(server.make_url(path)), **extra}


async def good_index(serve: Serve) -> TestServer:
    """A healthy upstream with one file of ``demo`` and ``demo`` in its list."""
    return await serve(
        {
            "/simple/": html_handler(html([("demo/", "demo")])),
            "/simple/demo/": html_handler(html([(f"/f/{GOOD_WHEEL}#sha256={SHA}", GOOD_WHEEL)])),
        }
    )


async def json_page(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[int, Any]:
    async with http.get(proxy.make_url(f"/simple/{project}/"), headers={"Accept": JSON_TYPE}) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.status == 200 else text


async def filenames(http: aiohttp.ClientSession, proxy: TestServer, project: str) -> set[str]:
    status, doc = await json_page(http, proxy, project)
    assert status == 200, doc
    return {f["filename"] for f in doc["files"]}


async def listed(http: aiohttp.ClientSession, proxy: TestServer) -> set[str]:
    async with http.get(proxy.make_url("/simple/"), headers={"Accept": JSON_TYPE}) as r:
        text = await r.text()
        assert r.status == 200, text
    return {p["name"] for p in json.loads(text)["projects"]}


async def last_error(http: aiohttp.ClientSession, proxy: TestServer, upstream: str) -> str:
    """The failure ``/readyz`` reports for one upstream: what the upstream itself said."""
    async with http.get(proxy.make_url("/readyz")) as r:
        doc = await r.json()
    reason = doc["upstreams"][upstream]["last_error"]
    assert isinstance(reason, str), doc
    return reason


# -- 1. malformed links -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_HREFS.values(), ids=BAD_HREFS.keys())
async def test_a_malformed_link_on_an_html_page_is_skipped(
    bad: str,
    serve: Serve,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """One link urllib or packaging cannot take is skipped; the page's other files are served."""
    upstream = await serve(
        {
            "/simple/demo/": html_handler(
                html([(f"/f/{GOOD_WHEEL}#sha256={SHA}", GOOD_WHEEL), (bad, "junk")])
            )
        }
    )
    proxy = await start_proxy(make_config([simple("up", upstream)]))

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}


@pytest.mark.parametrize("bad", BAD_URLS.values(), ids=BAD_URLS.keys())
async def test_a_malformed_url_on_a_json_page_is_skipped(
    bad: str,
    serve: Serve,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A PEP 691 entry whose URL urllib cannot take is skipped; the other entries are served."""
    doc = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "files": [
            {"filename": GOOD_WHEEL, "url": f"/f/{GOOD_WHEEL}", "hashes": {"sha256": SHA}},
            {"filename": "demo-2.0-py3-none-any.whl", "url": bad, "hashes": {}},
        ],
    }

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(doc), content_type=JSON_TYPE)

    upstream = await serve({"/simple/demo/": page})
    proxy = await start_proxy(make_config([simple("up", upstream)]))

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}


async def test_a_malformed_link_on_a_project_list_is_skipped(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """``/simple/`` lists an upstream's other projects when one of its links is unusable."""
    upstream = await serve(
        {"/simple/": html_handler(html([("other/", "other"), ("http://[broken/", "home")]))}
    )
    proxy = await start_proxy(make_config([simple("up", upstream)]))

    assert await listed(http, proxy) == {"other"}


def test_deeply_nested_json_page_is_a_parse_error() -> None:
    """JSON nested deeper than Python recurses is a PageParseError, not a RecursionError."""
    with pytest.raises(PageParseError):
        parse_project_json(b"[" * 200_000, "http://127.0.0.1/simple/demo/", "up", "demo")


def test_deeply_nested_json_project_list_is_a_parse_error() -> None:
    """A deeply nested JSON project list is a PageParseError, not a RecursionError."""
    with pytest.raises(PageParseError):
        parse_project_list(b'{"projects": ' + b"[" * 200_000, JSON_TYPE)


async def test_a_deeply_nested_json_page_fails_only_its_upstream(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """An upstream answering JSON nested 200,000 deep fails as "invalid JSON" (its own
    failure, not an unforeseen exception); the others' files serve."""

    async def nested(_request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200_000, content_type=JSON_TYPE)

    bad = await serve({"/simple/demo/": nested})
    good = await good_index(serve)
    proxy = await start_proxy(make_config([simple("good", good), simple("bad", bad)]))

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}
    assert "invalid JSON" in await last_error(http, proxy, "bad")


# -- 2. S3 listing bodies -----------------------------------------------------------------------

LISTING_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
)


def s3(name: str, server: TestServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "s3",
        "url": "s3://bucket/",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "addressing": "path",
        **extra,
    }


async def test_an_s3_listing_cut_off_mid_body_fails_only_the_bucket(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A listing whose connection drops mid-body is the bucket's own failure: it is left out
    of pages and the list, and says it could not read its listing."""

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        response.content_length = 5000
        await response.prepare(request)
        await response.write(LISTING_HEAD)
        assert request.transport is not None
        request.transport.close()
        return response

    bucket = await serve({"/bucket/": cut})
    good = await good_index(serve)
    proxy = await start_proxy(make_config([simple("good", good), s3("bucket", bucket)]))

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}
    assert await listed(http, proxy) == {"demo"}
    assert "reading the bucket listing" in await last_error(http, proxy, "bucket")


async def test_a_stalled_s3_listing_fails_only_the_bucket(
    serve: Serve,
    release: asyncio.Event,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A listing that stops sending after its headers times out as the bucket's own failure,
    which says it was reading its listing."""

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        await response.prepare(request)
        await response.write(LISTING_HEAD)
        await release.wait()
        return response

    bucket = await serve({"/bucket/": stall})
    good = await good_index(serve)
    proxy = await start_proxy(
        make_config([simple("good", good), s3("bucket", bucket, timeout="1s")])
    )

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}
    assert "timed out reading the bucket listing" in await last_error(http, proxy, "bucket")


async def test_an_oversized_s3_listing_fails_only_the_bucket(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A listing body over the page size cap is refused, like an oversized simple page."""
    monkeypatch.setattr("nightproxy.upstreams.http.MAX_PAGE_BYTES", 4096)
    contents = b"".join(
        b"<Contents><Key>big-1.0.dev%d-py3-none-any.whl</Key><Size>1</Size></Contents>" % i
        for i in range(200)
    )

    async def chunked(request: web.Request) -> web.StreamResponse:
        # Chunked: no Content-Length to refuse it by, the cap must apply while reading.
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(LISTING_HEAD + contents + b"</ListBucketResult>")
        await response.write_eof()
        return response

    bucket = await serve({"/bucket/": chunked})
    good = await good_index(serve)
    proxy = await start_proxy(make_config([simple("good", good), s3("bucket", bucket)]))

    assert await listed(http, proxy) == {"demo"}


# -- 3. anaconda channel API --------------------------------------------------------------------

CHANNEL_WHEEL = "demo-1.0.dev0-py3-none-any.whl"


async def channel_with_api(serve: Serve, api: Handler) -> tuple[TestServer, TestServer]:
    channel = await serve(
        {
            "/nightly/simple/demo/": html_handler(
                html([(f"/nightly/simple/demo/1.0.dev0/{CHANNEL_WHEEL}", CHANNEL_WHEEL)])
            )
        }
    )
    return channel, await serve({"/package/nightly/demo": api})


def anaconda(channel: TestServer, api: TestServer) -> dict[str, Any]:
    return {
        "name": "chan",
        "kind": "anaconda",
        "url": str(channel.make_url("/nightly/simple/")),
        "api_url": str(api.make_url("")).rstrip("/"),
        "timeout": "1s",
    }


async def test_a_stalled_channel_api_gives_the_page_without_upload_times(
    serve: Serve,
    release: asyncio.Event,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """An API that sends headers and then nothing times out into a page without upload times."""

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"files": [')
        await release.wait()
        return response

    channel, api = await channel_with_api(serve, stall)
    proxy = await start_proxy(make_config([anaconda(channel, api)]))

    status, doc = await json_page(http, proxy, "demo")

    assert status == 200, doc
    assert [f["filename"] for f in doc["files"]] == [CHANNEL_WHEEL]
    assert "upload-time" not in doc["files"][0]


async def test_a_deeply_nested_channel_api_answer_gives_the_page_without_upload_times(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """An API answer nested deeper than Python recurses is ignored like any bad answer."""

    async def nested(_request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200_000, content_type="application/json")

    channel, api = await channel_with_api(serve, nested)
    proxy = await start_proxy(make_config([anaconda(channel, api)]))

    assert await filenames(http, proxy, "demo") == {CHANNEL_WHEEL}


# -- 4. directory: a file overwritten in place ---------------------------------------------------


def overwrite(target: Path, source: Path, when: datetime) -> None:
    """``cp`` onto an existing name: the same inode, so no folder's mtime changes."""
    with target.open("r+b") as handle:
        handle.truncate(0)
        handle.write(source.read_bytes())
    stamp = when.timestamp()
    os.utime(target, (stamp, stamp))


async def test_a_file_overwritten_in_place_is_listed_and_served_anew(
    wheelhouse: Path,
    tmp_path: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Last night's build copied over by tonight's (same name) gets a new sha256 and size on
    the page, and the download is tonight's bytes."""
    night1 = build_wheel(tmp_path / "n1", "demo", "1.0.dev0", seed=1, payload_size=100)
    night2 = build_wheel(tmp_path / "n2", "demo", "1.0.dev0", seed=2, payload_size=300)
    target = wheelhouse / night1.name
    target.write_bytes(night1.read_bytes())
    os.utime(target, (1_790_000_000, 1_790_000_000))
    config = make_config([{"name": "local", "kind": "directory", "path": "./wheelhouse", "ttl": 0}])
    proxy = await start_proxy(config)
    status, first = await json_page(http, proxy, "demo")
    assert status == 200, first
    assert first["files"][0]["hashes"]["sha256"] == sha256_file(night1)

    overwrite(target, night2, datetime(2026, 11, 21, tzinfo=UTC))
    status, second = await json_page(http, proxy, "demo")

    assert status == 200, second
    (published,) = second["files"]
    assert published["hashes"]["sha256"] == sha256_file(night2)
    assert published["size"] == night2.stat().st_size
    url = proxy.make_url("/simple/demo/").join(URL(published["url"]))
    async with http.get(url) as resp:
        body = await resp.read()
    assert resp.status == 200
    assert hashlib.sha256(body).hexdigest() == sha256_file(night2)


async def listed_file(root: Path, content: bytes) -> tuple[DirectoryUpstream, Path, ProjectPage]:
    path = root / "demo-1.0.dev0-py3-none-any.whl"
    path.write_bytes(content)
    upstream = DirectoryUpstream(
        UpstreamConfig(name="local", kind="directory", options=DirectoryOptions(path=root))
    )
    page = await upstream.fetch_project(canonicalize_name("demo"))
    assert isinstance(page, ProjectPage)
    return upstream, path, page


async def read_all(upstream: DirectoryUpstream, page: ProjectPage) -> bytes:
    async with upstream.open_file(page.files[0]) as download:
        return b"".join([chunk async for chunk in download.chunks()])


async def test_a_directory_download_stops_at_the_announced_size(tmp_path: Path) -> None:
    """A file that grew since its page was built fails the download instead of giving more
    bytes than the page announced."""
    upstream, path, page = await listed_file(tmp_path, b"x" * 100)
    path.write_bytes(b"y" * 300)

    with pytest.raises(UpstreamError):
        await read_all(upstream, page)


async def test_a_directory_download_of_a_shrunk_file_fails(tmp_path: Path) -> None:
    """A file that shrank since its page was built fails the download."""
    upstream, path, page = await listed_file(tmp_path, b"x" * 100)
    path.write_bytes(b"y" * 10)

    with pytest.raises(UpstreamError):
        await read_all(upstream, page)


async def test_a_directory_download_of_an_unchanged_file_is_whole(tmp_path: Path) -> None:
    """An unchanged file downloads as exactly the bytes listed."""
    upstream, _path, page = await listed_file(tmp_path, b"x" * 100)

    assert await read_all(upstream, page) == b"x" * 100


# -- 5. static trees: dotted project folders ------------------------------------------------------

DOTTED_WHEEL = "zope.interface-7.0.dev20250101-py3-none-any.whl"


def dotted_tree_pages(requested: list[str]) -> Handler:
    """A tree's project pages: only the dotted folder ``zope.interface/`` exists. Each request
    path is appended to ``requested``."""

    async def project(request: web.Request) -> web.Response:
        requested.append(request.path)
        if request.match_info["p"] != "zope.interface":
            return web.Response(status=404)
        return web.Response(
            text=html([(f"/whl/nightly/{DOTTED_WHEEL}", DOTTED_WHEEL)]), content_type="text/html"
        )

    return project


async def test_a_dotted_static_tree_project_listed_is_served(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A tree folder ``zope.interface/`` (dots kept, no redirect) is fetched where the list
    links it once the list has been read."""
    requested: list[str] = []

    tree = await serve(
        {
            "/whl/nightly/": html_handler(html([("zope.interface/", "zope.interface")])),
            "/whl/nightly/{p}/": dotted_tree_pages(requested),
        }
    )
    proxy = await start_proxy(make_config([simple("tree", tree, "/whl/nightly/")]))

    assert await listed(http, proxy) == {"zope-interface"}
    assert await filenames(http, proxy, "zope-interface") == {DOTTED_WHEEL}
    assert requested == ["/whl/nightly/zope.interface/"]


async def test_a_dotted_static_tree_project_is_found_on_a_fresh_proxy(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """pip asking a fresh proxy straight for ``/simple/zope-interface/``: the tree's 404 for
    that spelling makes the proxy read the tree's list once, which links the dotted folder;
    a second miss soon after reads no list again."""
    requested: list[str] = []

    async def root(request: web.Request) -> web.Response:
        requested.append(request.path)
        return web.Response(
            text=html([("zope.interface/", "zope.interface")]), content_type="text/html"
        )

    tree = await serve({"/whl/nightly/": root, "/whl/nightly/{p}/": dotted_tree_pages(requested)})
    proxy = await start_proxy(make_config([simple("tree", tree, "/whl/nightly/")]))

    assert await filenames(http, proxy, "zope-interface") == {DOTTED_WHEEL}
    async with http.get(proxy.make_url("/simple/no-such/")) as resp:
        assert resp.status == 404
    assert requested == [
        "/whl/nightly/zope-interface/",
        "/whl/nightly/",
        "/whl/nightly/zope.interface/",
        "/whl/nightly/no-such/",
    ]


async def test_a_project_list_too_large_is_not_read_for_a_miss(
    serve: Serve,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An index whose list is too large to be a static tree's (the public index) answers a
    miss with its 404; the list is given up on at its size, not read whole for the miss."""
    monkeypatch.setattr(simple_module, "RELIST_MAX_BYTES", 1000)

    async def root(_request: web.Request) -> web.Response:
        body = html([(f"p{i}/", f"p{i}") for i in range(200)])
        return web.Response(text=body, content_type="text/html")

    async def missing(_request: web.Request) -> web.Response:
        return web.Response(status=404)

    tree = await serve({"/simple/": root, "/simple/{p}/": missing})
    proxy = await start_proxy(make_config([simple("big", tree)]))
    with caplog.at_level(logging.DEBUG, logger="nightproxy.upstreams.simple"):
        async with http.get(proxy.make_url("/simple/zope-interface/")) as resp:
            assert resp.status == 404
    assert "project list not read for a miss: the project list is too large" in caplog.text


async def test_a_project_list_link_to_another_host_is_not_followed(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A list linking a project on another host does not redirect that project's page fetch
    there: the page is asked of the upstream itself."""
    elsewhere_hits: list[str] = []

    async def elsewhere_page(request: web.Request) -> web.Response:
        elsewhere_hits.append(request.path)
        return web.Response(status=404)

    elsewhere = await serve({"/{tail:.*}": elsewhere_page})
    link = str(elsewhere.make_url("/evil/zope.interface/"))
    tree = await serve(
        {
            "/whl/nightly/": html_handler(html([(link, "zope.interface")])),
            "/whl/nightly/zope-interface/": html_handler(
                html([(f"/whl/nightly/{DOTTED_WHEEL}", DOTTED_WHEEL)])
            ),
        }
    )
    proxy = await start_proxy(make_config([simple("tree", tree, "/whl/nightly/")]))

    assert await listed(http, proxy) == {"zope-interface"}
    assert await filenames(http, proxy, "zope-interface") == {DOTTED_WHEEL}
    assert elsewhere_hits == []


# -- 6. rate limits -------------------------------------------------------------------------------


async def test_a_429_beyond_the_page_timeout_fails_the_upstream_at_once(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A page answered 429 with a Retry-After longer than the upstream's timeout is not waited
    for: that upstream is left out after one request, and the others' files are served."""
    hits: list[str] = []

    async def throttled(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=429, headers={"Retry-After": "20"}, text="slow down")

    feed = await serve({"/feed/simple/demo/": throttled})
    good = await good_index(serve)
    azure = {
        "name": "ado",
        "kind": "azure",
        "url": str(feed.make_url("/feed/simple/")),
        "username": "x",
        "password": "pat",
        "timeout": "5s",
    }
    proxy = await start_proxy(make_config([simple("good", good), azure]))

    assert await filenames(http, proxy, "demo") == {GOOD_WHEEL}
    assert hits == ["/feed/simple/demo/"]


async def test_a_download_still_waits_out_a_429_longer_than_the_page_timeout(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """File downloads keep the longer 429 retries: the page budget does not apply to them."""
    answered: list[int] = []
    body = b"PK-not-really-a-wheel" * 10

    async def file(_request: web.Request) -> web.Response:
        if not answered:
            answered.append(429)
            return web.Response(status=429, headers={"Retry-After": "2"})
        answered.append(200)
        return web.Response(body=body, content_type="application/octet-stream")

    digest = hashlib.sha256(body).hexdigest()
    upstream = await serve(
        {
            "/simple/demo/": html_handler(html([(f"/f/{GOOD_WHEEL}#sha256={digest}", GOOD_WHEEL)])),
            f"/f/{GOOD_WHEEL}": file,
        }
    )
    proxy = await start_proxy(make_config([simple("up", upstream, timeout="1s")]))
    status, doc = await json_page(http, proxy, "demo")
    assert status == 200, doc

    url = proxy.make_url("/simple/demo/").join(URL(doc["files"][0]["url"]))
    async with http.get(url) as resp:
        got = await resp.read()

    assert resp.status == 200
    assert got == body
    assert answered == [429, 200]


# -- 7. large pages -------------------------------------------------------------------------------


async def test_a_page_larger_than_the_inline_parse_limit_is_parsed_whole(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A project page of several MiB (parsed off the event loop) lists every one of its files."""
    names = [f"demo-1.0.dev{i}-py3-none-any.whl" for i in range(8000)]
    text = html([(f"/f/{name}#sha256={SHA}", name) for name in names])
    assert len(text) > PARSE_INLINE_MAX
    upstream = await serve({"/simple/demo/": html_handler(text)})
    proxy = await start_proxy(make_config([simple("up", upstream)]))

    assert await filenames(http, proxy, "demo") == set(names)


async def test_a_project_list_larger_than_the_inline_parse_limit_is_parsed_whole(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A large ``/simple/`` page (parsed off the event loop) lists every project."""
    names = {f"project-{i}" for i in range(20000)}
    text = html([(f"{name}/", name) for name in sorted(names)])
    assert len(text) > PARSE_INLINE_MAX
    upstream = await serve({"/simple/": html_handler(text)})
    proxy = await start_proxy(make_config([simple("up", upstream)]))

    assert await listed(http, proxy) == names


# -- 8. times datetime cannot hold in UTC ---------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "0001-01-01T00:30+00:31"]
)
def test_a_time_outside_datetime_in_utc_is_not_a_time(value: str) -> None:
    """A valid ISO time whose UTC value is outside datetime's range parses as None."""
    assert parse_upload_time(value) is None


@given(st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()))
def test_parse_upload_time_never_raises(value: str) -> None:
    """Any ISO 8601 time, in any zone, is an aware UTC datetime or None, never an exception."""
    parsed = parse_upload_time(value)
    assert parsed is None or parsed.utcoffset() is not None


async def test_an_as_of_outside_datetime_in_utc_is_a_400(
    serve: Serve, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """``?as_of=9999-12-31T23:59:59-01:00`` on a project page is the client's error (400)."""
    good = await good_index(serve)
    proxy = await start_proxy(make_config([simple("good", good)]))
    url = proxy.make_url("/simple/demo/").with_query(as_of="9999-12-31T23:59:59-01:00")

    async with http.get(url) as resp:
        assert resp.status == 400
