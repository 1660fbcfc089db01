"""The merged project pages: negotiation, normalization, merging, routing and failure handling.

Every test runs the real proxy app against real fake upstreams on loopback sockets.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import (
    JSON_TYPE,
    PIP_ACCEPT,
    UV_ACCEPT,
    MakeConfig,
    StartFake,
    StartProxy,
    simple_url,
)
from tests.fakes import FakeSimpleIndex
from tests.wheels import build_wheel, sha256_file, wheel_filename

HTML_TYPES = {"text/html", "application/vnd.pypi.simple.v1+html"}


class _Anchors(HTMLParser):
    """Collects the attributes (unescaped by the parser) and text of every ``<a>``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.metas: list[dict[str, str | None]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)
            self._open["__text__"] = ""
            self.anchors.append(self._open)
        elif tag == "meta":
            self.metas.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["__text__"] = (self._open["__text__"] or "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None


def parse_html(text: str) -> _Anchors:
    parser = _Anchors()
    parser.feed(text)
    parser.close()
    return parser


def html_links(text: str) -> dict[str, dict[str, str | None]]:
    """Anchor attributes keyed by the anchor's text (the filename)."""
    return {str(a["__text__"]).strip(): a for a in parse_html(text).anchors}


def json_files(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filename"]: f for f in doc["files"]}


def upstream_entry(name: str, fake: FakeSimpleIndex, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simple", "url": simple_url(fake), **extra}


async def new_fake(start_fake: StartFake, wheelhouse: Path, files: dict[str, list[str]]) -> Any:
    """A started FakeSimpleIndex publishing one real wheel per (project, version)."""
    fake = FakeSimpleIndex()
    for project, versions in files.items():
        for version in versions:
            fake.add_file(project, build_wheel(wheelhouse / "shared", project, version))
    return await start_fake(fake)


async def get(
    http: aiohttp.ClientSession,
    proxy: TestServer,
    path: str,
    accept: str | None = PIP_ACCEPT,
    **kwargs: Any,
) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = dict(kwargs.pop("headers", {}))
    skip: list[str] = []
    if accept is None:
        skip.append("Accept")
    else:
        headers["Accept"] = accept
    async with http.get(
        proxy.make_url(path),
        headers=headers,
        skip_auto_headers=skip,
        allow_redirects=False,
        **kwargs,
    ) as resp:
        body = await resp.read()
    return resp, body


@pytest.fixture
async def alpha(start_fake: StartFake, wheelhouse: Path) -> Any:
    """Upstream 'alpha': demo 1.0."""
    return await new_fake(start_fake, wheelhouse, {"demo": ["1.0"]})


@pytest.fixture
async def beta(start_fake: StartFake, wheelhouse: Path) -> Any:
    """Upstream 'beta': demo 2.0.dev20261120 and 'other' 0.1."""
    return await new_fake(start_fake, wheelhouse, {"demo": ["2.0.dev20261120"], "other": ["0.1"]})


@pytest.fixture
async def one_proxy(
    simple_upstream: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    """The proxy in front of the conftest's single 'demo' upstream."""
    return await start_proxy(make_config([upstream_entry("main", simple_upstream)]))


@pytest.fixture
async def two_proxy(
    alpha: Any, beta: Any, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    """The proxy in front of alpha then beta (alpha has priority)."""
    return await start_proxy(
        make_config([upstream_entry("alpha", alpha), upstream_entry("beta", beta)])
    )


# -- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [PIP_ACCEPT, UV_ACCEPT], ids=["pip", "uv"])
async def test_installer_accept_gets_pep691_json(
    http: aiohttp.ClientSession, one_proxy: TestServer, accept: str
) -> None:
    """pip's and uv's exact Accept headers get PEP 691 JSON with the exact JSON media type."""
    resp, body = await get(http, one_proxy, "/simple/demo/", accept)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON_TYPE
    doc = json.loads(body)
    assert doc["name"] == "demo"
    assert {f["filename"] for f in doc["files"]} == {
        wheel_filename("demo", "1.0"),
        wheel_filename("demo", "1.1.dev20261120"),
    }


async def test_text_html_accept_gets_html(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """``Accept: text/html`` alone gets a PEP 503 HTML page typed text/html."""
    resp, body = await get(http, one_proxy, "/simple/demo/", "text/html")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert wheel_filename("demo", "1.0") in html_links(body.decode())


async def test_no_accept_gets_html(http: aiohttp.ClientSession, one_proxy: TestServer) -> None:
    """A request without any Accept header gets HTML, the PEP 503 default."""
    resp, body = await get(http, one_proxy, "/simple/demo/", None)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert wheel_filename("demo", "1.0") in html_links(body.decode())


async def test_format_query_overrides_accept(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """``?format=application/vnd.pypi.simple.v1+html`` wins over a JSON-preferring Accept."""
    resp, body = await get(
        http,
        one_proxy,
        "/simple/demo/",
        PIP_ACCEPT,
        params={"format": "application/vnd.pypi.simple.v1+html"},
    )
    assert resp.status == 200
    assert resp.content_type in HTML_TYPES
    assert wheel_filename("demo", "1.0") in html_links(body.decode())


async def test_unsupported_accept_is_406(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """An Accept header naming nothing the index can produce is answered 406."""
    resp, _body = await get(http, one_proxy, "/simple/demo/", "application/xml")
    assert resp.status == 406


@pytest.mark.parametrize("accept", [PIP_ACCEPT, "text/html"])
async def test_vary_names_accept(
    http: aiohttp.ClientSession, one_proxy: TestServer, accept: str
) -> None:
    """Project pages carry ``Vary: Accept`` so shared caches keep the formats apart."""
    resp, _body = await get(http, one_proxy, "/simple/demo/", accept)
    vary = [v.strip().lower() for v in resp.headers.get("Vary", "").split(",")]
    assert "accept" in vary


async def test_html_has_pep629_repository_version(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """The HTML page declares ``<meta name="pypi:repository-version" content="1.x">``."""
    _resp, body = await get(http, one_proxy, "/simple/demo/", "text/html")
    metas = {m.get("name"): m.get("content") for m in parse_html(body.decode()).metas}
    version = metas.get("pypi:repository-version")
    assert version is not None
    assert version.split(".")[0] == "1"


async def test_json_has_api_version(http: aiohttp.ClientSession, one_proxy: TestServer) -> None:
    """The JSON page carries ``meta.api-version`` 1.x."""
    _resp, body = await get(http, one_proxy, "/simple/demo/")
    assert json.loads(body)["meta"]["api-version"].split(".")[0] == "1"


# -- URLs -----------------------------------------------------------------------------------


async def test_non_normalized_name_redirects(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """``/simple/Demo_Pkg/`` is a 301 to ``/simple/demo-pkg/``."""
    resp, _body = await get(http, one_proxy, "/simple/Demo_Pkg/")
    assert resp.status == 301
    target = one_proxy.make_url("/simple/Demo_Pkg/").join(URL(resp.headers["Location"]))
    assert target.path == "/simple/demo-pkg/"


async def test_missing_trailing_slash_redirects(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """``/simple/demo`` is a 301 to ``/simple/demo/``."""
    resp, _body = await get(http, one_proxy, "/simple/demo")
    assert resp.status == 301
    target = one_proxy.make_url("/simple/demo").join(URL(resp.headers["Location"]))
    assert target.path == "/simple/demo/"


async def test_unknown_project_is_404(http: aiohttp.ClientSession, one_proxy: TestServer) -> None:
    """A project that no upstream has is a 404, not an empty page."""
    resp, _body = await get(http, one_proxy, "/simple/no-such-project/")
    assert resp.status == 404


async def test_unknown_project_stays_404_while_the_answer_is_cached(
    http: aiohttp.ClientSession, one_proxy: TestServer
) -> None:
    """Asked again within the page ttl, an unknown project is still a 404, not an empty page."""
    statuses = [(await get(http, one_proxy, "/simple/no-such-project/"))[0].status for _ in "ab"]
    assert statuses == [404, 404]


@pytest.mark.parametrize("fmt", ["json", "html"])
async def test_file_links_point_at_the_proxy_without_query(
    http: aiohttp.ClientSession,
    one_proxy: TestServer,
    simple_upstream: FakeSimpleIndex,
    fmt: str,
) -> None:
    """Every file link resolves to the proxy's own host and carries no query string."""
    page = one_proxy.make_url("/simple/demo/")
    accept = PIP_ACCEPT if fmt == "json" else "text/html"
    _resp, body = await get(http, one_proxy, "/simple/demo/", accept)
    if fmt == "json":
        hrefs = [f["url"] for f in json.loads(body)["files"]]
    else:
        hrefs = [str(a["href"]) for a in html_links(body.decode()).values()]
    assert len(hrefs) == 2
    upstream = URL(simple_upstream.base_url)
    for href in hrefs:
        resolved = page.join(URL(href))
        assert resolved.query_string == ""
        assert (resolved.host, resolved.port) == (page.host, page.port)
        assert (resolved.host, resolved.port) != (upstream.host, upstream.port)
        assert simple_upstream.origin not in href


# -- merging and routing --------------------------------------------------------------------


@pytest.mark.parametrize("order", [("alpha", "beta"), ("beta", "alpha")])
async def test_same_filename_earlier_upstream_wins(
    http: aiohttp.ClientSession,
    start_fake: StartFake,
    wheelhouse: Path,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    order: tuple[str, str],
) -> None:
    """Where two upstreams list the same filename, the earlier upstream's entry is published."""
    wheels = {
        "alpha": build_wheel(wheelhouse / "a", "demo", "1.0"),
        "beta": build_wheel(wheelhouse / "b", "demo", "1.0", payload_size=100, seed=7),
    }
    assert sha256_file(wheels["alpha"]) != sha256_file(wheels["beta"])
    fakes = {}
    for name, path in wheels.items():
        fake = FakeSimpleIndex()
        fake.add_file("demo", path)
        fakes[name] = await start_fake(fake)
    proxy = await start_proxy(make_config([upstream_entry(n, fakes[n]) for n in order]))
    _resp, body = await get(http, proxy, "/simple/demo/")
    files = json_files(json.loads(body))
    assert list(files) == [wheel_filename("demo", "1.0")]
    entry = files[wheel_filename("demo", "1.0")]
    winner = order[0]
    assert entry["_nightproxy"]["upstream"] == winner
    assert entry["hashes"]["sha256"] == sha256_file(wheels[winner])


async def test_files_are_united_across_upstreams(
    http: aiohttp.ClientSession, two_proxy: TestServer
) -> None:
    """A project's page lists the files of every upstream that has it, each with its source."""
    _resp, body = await get(http, two_proxy, "/simple/demo/")
    files = json_files(json.loads(body))
    assert {name: f["_nightproxy"]["upstream"] for name, f in files.items()} == {
        wheel_filename("demo", "1.0"): "alpha",
        wheel_filename("demo", "2.0.dev20261120"): "beta",
    }


async def test_pinned_project_ignores_other_upstreams(
    http: aiohttp.ClientSession,
    alpha: Any,
    beta: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """A pinned project gets no files from, and sends no request to, an upstream not pinned."""
    config = make_config(
        [upstream_entry("alpha", alpha), upstream_entry("beta", beta)],
        projects={"demo": ["alpha"]},
    )
    proxy = await start_proxy(config)
    resp, body = await get(http, proxy, "/simple/demo/")
    assert resp.status == 200
    files = json_files(json.loads(body))
    assert list(files) == [wheel_filename("demo", "1.0")]
    assert all(f["_nightproxy"]["upstream"] == "alpha" for f in files.values())
    assert beta.count(path_contains="demo") == 0
    assert alpha.count("GET", "/simple/demo/") == 1


# -- degraded upstreams ---------------------------------------------------------------------


def _missing(resp: aiohttp.ClientResponse) -> set[str]:
    return {p.strip() for p in resp.headers.get("X-Nightproxy-Missing", "").split(",") if p}


async def test_upstream_down_is_left_out_with_header(
    http: aiohttp.ClientSession, alpha: Any, two_proxy: TestServer
) -> None:
    """An upstream answering 503 is left out; the page is served from the others and says so."""
    alpha.down = True
    resp, body = await get(http, two_proxy, "/simple/demo/")
    assert resp.status == 200
    assert _missing(resp) == {"alpha"}
    files = json_files(json.loads(body))
    assert list(files) == [wheel_filename("demo", "2.0.dev20261120")]


async def test_upstream_slower_than_its_timeout_is_left_out(
    http: aiohttp.ClientSession,
    alpha: Any,
    beta: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """An upstream slower than its own ``timeout`` is left out of the page with the header."""
    alpha.delay = 3
    config = make_config(
        [upstream_entry("alpha", alpha, timeout="1s"), upstream_entry("beta", beta)]
    )
    proxy = await start_proxy(config)
    resp, body = await get(http, proxy, "/simple/demo/")
    assert resp.status == 200
    assert _missing(resp) == {"alpha"}
    assert list(json_files(json.loads(body))) == [wheel_filename("demo", "2.0.dev20261120")]


async def test_garbage_page_is_left_out_with_header(
    http: aiohttp.ClientSession, alpha: Any, two_proxy: TestServer
) -> None:
    """An upstream answering an unparsable page is left out and named in the header."""
    alpha.garbage = True
    resp, body = await get(http, two_proxy, "/simple/demo/")
    assert resp.status == 200
    assert _missing(resp) == {"alpha"}
    assert list(json_files(json.loads(body))) == [wheel_filename("demo", "2.0.dev20261120")]


async def test_left_out_upstream_is_logged_as_warning(
    http: aiohttp.ClientSession,
    alpha: Any,
    two_proxy: TestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Leaving an upstream out of a page logs a WARNING that names it."""
    alpha.down = True
    with caplog.at_level(logging.WARNING, logger="nightproxy"):
        resp, _body = await get(http, two_proxy, "/simple/demo/")
    assert resp.status == 200
    assert any(
        r.levelno == logging.WARNING and "alpha" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def test_all_upstreams_down_is_502_with_reason(
    http: aiohttp.ClientSession, alpha: Any, beta: Any, two_proxy: TestServer
) -> None:
    """With every upstream failing the answer is a plain-text 502 naming why, not a page."""
    alpha.down = True
    beta.down = True
    resp, body = await get(http, two_proxy, "/simple/demo/")
    assert resp.status == 502
    assert resp.content_type == "text/plain"
    text = body.decode()
    assert "alpha" in text
    assert "beta" in text
    assert "503" in text
    assert "files" not in text


async def test_healthy_page_has_no_missing_header(
    http: aiohttp.ClientSession, two_proxy: TestServer
) -> None:
    """When every upstream answers, no ``X-Nightproxy-Missing`` header is sent."""
    resp, _body = await get(http, two_proxy, "/simple/demo/")
    assert resp.status == 200
    assert "X-Nightproxy-Missing" not in resp.headers


# -- pass-through of upstream facts ---------------------------------------------------------


@pytest.fixture
async def annotated_proxy(
    start_fake: StartFake, wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    """demo 1.0 with ``Requires-Python: >=3.9,<4`` and demo 1.1 yanked with a reason."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"), requires_python=">=3.9,<4")
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.1"), yanked='broken <build> & "bad"')
    await start_fake(fake)
    return await start_proxy(make_config([upstream_entry("main", fake)]))


async def test_requires_python_is_escaped_in_html(
    http: aiohttp.ClientSession, annotated_proxy: TestServer
) -> None:
    """``data-requires-python`` is passed through, HTML-escaped in the markup."""
    _resp, body = await get(http, annotated_proxy, "/simple/demo/", "text/html")
    text = body.decode()
    assert 'data-requires-python="&gt;=3.9,&lt;4"' in text
    links = html_links(text)
    assert links[wheel_filename("demo", "1.0")]["data-requires-python"] == ">=3.9,<4"
    assert "data-requires-python" not in links[wheel_filename("demo", "1.1")]


async def test_requires_python_in_json(
    http: aiohttp.ClientSession, annotated_proxy: TestServer
) -> None:
    """The JSON entry carries the upstream's ``requires-python`` verbatim."""
    _resp, body = await get(http, annotated_proxy, "/simple/demo/")
    files = json_files(json.loads(body))
    assert files[wheel_filename("demo", "1.0")]["requires-python"] == ">=3.9,<4"


async def test_yank_reason_in_html(
    http: aiohttp.ClientSession, annotated_proxy: TestServer
) -> None:
    """A yanked file keeps its reason in ``data-yanked``; an unyanked one has no attribute."""
    _resp, body = await get(http, annotated_proxy, "/simple/demo/", "text/html")
    links = html_links(body.decode())
    assert links[wheel_filename("demo", "1.1")]["data-yanked"] == 'broken <build> & "bad"'
    assert "data-yanked" not in links[wheel_filename("demo", "1.0")]


async def test_yank_reason_in_json(
    http: aiohttp.ClientSession, annotated_proxy: TestServer
) -> None:
    """A yanked file's JSON entry has ``yanked`` set to the reason; others are not yanked."""
    _resp, body = await get(http, annotated_proxy, "/simple/demo/")
    files = json_files(json.loads(body))
    assert files[wheel_filename("demo", "1.1")]["yanked"] == 'broken <build> & "bad"'
    assert files[wheel_filename("demo", "1.0")].get("yanked", False) is False


# -- project list, sharing, encodings -------------------------------------------------------


async def test_project_list_is_the_union(
    http: aiohttp.ClientSession, two_proxy: TestServer
) -> None:
    """``/simple/`` lists the projects of every upstream, once each."""
    _resp, body = await get(http, two_proxy, "/simple/")
    names = [p["name"] for p in json.loads(body)["projects"]]
    assert sorted(names) == ["demo", "other"]
    _resp, body = await get(http, two_proxy, "/simple/", "text/html")
    texts = sorted(str(a["__text__"]).strip() for a in parse_html(body.decode()).anchors)
    assert texts == ["demo", "other"]


async def test_concurrent_page_requests_share_one_upstream_fetch(
    http: aiohttp.ClientSession, simple_upstream: FakeSimpleIndex, one_proxy: TestServer
) -> None:
    """Ten simultaneous requests for one project cause a single upstream page request."""
    simple_upstream.delay = 0.3
    results = await asyncio.gather(*(get(http, one_proxy, "/simple/demo/") for _ in range(10)))
    assert all(resp.status == 200 for resp, _ in results)
    assert len({body for _, body in results}) == 1
    assert simple_upstream.count("GET", "/simple/demo/") == 1


async def test_gzip_when_asked(http: aiohttp.ClientSession, one_proxy: TestServer) -> None:
    """``Accept-Encoding: gzip`` gets a gzip body that decompresses to the JSON page."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(
            one_proxy.make_url("/simple/demo/"),
            headers={"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Type"] == JSON_TYPE
        packed = await resp.read()
    doc = json.loads(gzip.decompress(packed))
    assert doc["name"] == "demo"
    assert len(doc["files"]) == 2


async def test_if_none_match_is_304(http: aiohttp.ClientSession, one_proxy: TestServer) -> None:
    """Revalidating with the page's ETag gets 304 Not Modified with no body."""
    first, _body = await get(http, one_proxy, "/simple/demo/")
    etag = first.headers["ETag"]
    resp, body = await get(http, one_proxy, "/simple/demo/", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert body == b""


@pytest.mark.parametrize(
    "encoding",
    [
        "gzip;q=0",
        "gzip;q=0.0",
    ],
)
async def test_gzip_refused_with_q_zero(one_proxy: TestServer, encoding: str) -> None:
    """A client that rules gzip out with q=0 gets an unencoded page."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(
            one_proxy.make_url("/simple/demo/"),
            headers={"Accept": PIP_ACCEPT, "Accept-Encoding": encoding},
        ) as resp,
    ):
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert json.loads(await resp.read())["name"] == "demo"
