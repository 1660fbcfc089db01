"""Page redirects and conditional requests: where a 301 points, what is no project name at all,
and ``If-None-Match: *``.

Real proxy app in front of a real fake upstream on loopback; request targets are sent exactly
as written (percent-escapes included), and redirects are not followed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server.pages import etag_matches
from tests.conftest import PIP_ACCEPT, MakeConfig, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex

AS_OF = "2030-01-01T00:00:00Z"


@pytest.fixture
async def proxy(
    simple_upstream: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(
        make_config([{"name": "main", "kind": "simple", "url": simple_url(simple_upstream)}])
    )


@pytest.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends targets as written and never follows a redirect."""
    async with aiohttp.ClientSession(requote_redirect_url=False) as session:
        yield session


async def get(
    session: aiohttp.ClientSession, proxy: TestServer, target: str, **headers: str
) -> aiohttp.ClientResponse:
    url = URL(f"http://{proxy.host}:{proxy.port}{target}", encoded=True)
    async with session.get(
        url, headers={"Accept": PIP_ACCEPT, **headers}, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp


# -- names that are not names ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/simple/Demo%2Fbar/", id="escaped slash"),
        pytest.param("/simple/Demo%3Fx/", id="escaped question mark"),
        pytest.param("/simple/Demo%23x/", id="escaped hash"),
        pytest.param("/simple/demo%2Fbar/", id="escaped slash, canonical case"),
        pytest.param("/simple/Demo%2Fbar", id="escaped slash, no trailing slash"),
        pytest.param(f"/as-of/{AS_OF}/simple/Demo%3Fx/", id="escaped question mark, as-of"),
    ],
)
async def test_invalid_project_name_is_404_never_a_redirect(
    raw: aiohttp.ClientSession, proxy: TestServer, target: str
) -> None:
    """A path segment that is no valid project name once decoded is answered 404; it is never
    redirected (its decoded ``/``, ``?`` or ``#`` would point the redirect at another page)."""
    resp = await get(raw, proxy, target)
    assert resp.status == 404
    assert "Location" not in resp.headers


async def test_redirect_location_is_the_canonical_name(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """``/simple/Demo_/``-style spellings of a valid name 301 to ``/simple/<canonical>/``."""
    resp = await get(raw, proxy, "/simple/DEMO/")
    assert resp.status == 301
    assert resp.headers["Location"] == "/simple/demo/"


async def test_missing_slash_redirects_straight_to_the_canonical_page(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """``/simple/Demo`` is one 301, to ``/simple/demo/``."""
    resp = await get(raw, proxy, "/simple/Demo")
    assert resp.status == 301
    assert resp.headers["Location"] == "/simple/demo/"


async def test_redirect_keeps_the_query_string_as_sent(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """The query string of a redirected request is carried over byte for byte, escapes kept."""
    resp = await get(raw, proxy, "/simple/Demo/?format=text%2Fhtml&x=%26y")
    assert resp.status == 301
    assert resp.headers["Location"] == "/simple/demo/?format=text%2Fhtml&x=%26y"


async def test_as_of_project_redirect_keeps_the_as_of_prefix(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """``/as-of/<t>/simple/Demo/`` 301s to ``/as-of/<t>/simple/demo/``."""
    resp = await get(raw, proxy, f"/as-of/{AS_OF}/simple/Demo/")
    assert resp.status == 301
    assert resp.headers["Location"] == f"/as-of/{AS_OF}/simple/demo/"


async def test_as_of_index_without_slash_redirects(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """``/as-of/<t>/simple`` is a 301 to ``/as-of/<t>/simple/``, like ``/simple``."""
    resp = await get(raw, proxy, f"/as-of/{AS_OF}/simple")
    assert resp.status == 301
    assert resp.headers["Location"] == f"/as-of/{AS_OF}/simple/"


async def test_escaped_as_of_is_requoted_in_the_redirect(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """An as-of segment holding an escaped ``/`` stays escaped in the Location."""
    resp = await get(raw, proxy, "/as-of/2030%2F01/simple")
    assert resp.status == 301
    assert resp.headers["Location"] == "/as-of/2030%2F01/simple/"


# -- If-None-Match ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/simple/demo/", "/simple/"])
async def test_if_none_match_star_on_an_existing_page_is_304(
    raw: aiohttp.ClientSession, proxy: TestServer, page: str
) -> None:
    """``If-None-Match: *`` matches any current representation: a 304 with no body."""
    resp = await get(raw, proxy, page, **{"If-None-Match": "*"})
    assert resp.status == 304
    assert "ETag" in resp.headers


async def test_weak_form_of_the_page_etag_is_304(
    raw: aiohttp.ClientSession, proxy: TestServer
) -> None:
    """If-None-Match compares weakly: ``W/"<etag>"`` among other tags matches the page."""
    etag = (await get(raw, proxy, "/simple/demo/")).headers["ETag"]
    resp = await get(raw, proxy, "/simple/demo/", **{"If-None-Match": f'"other", W/{etag}'})
    assert resp.status == 304


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("*", True),
        (' "abc" ', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"abcd"', False),
        ('"ab"', False),
        ("", False),
    ],
)
def test_etag_matches(header: str | None, matches: bool) -> None:
    """The If-None-Match comparison of RFC 9110 13.1.2 against the strong tag ``"abc"``."""
    assert etag_matches(header, '"abc"') is matches


async def test_as_of_query_with_a_plus_offset_as_typed_is_that_time(
    proxy: TestServer, raw: aiohttp.ClientSession
) -> None:
    """``?as_of=...+01:00`` typed without escaping the ``+`` (which form decoding reads as a
    space) means the same time as the escaped ``%2B``, the ``+hhmm`` form and the path form."""
    answers = []
    for target in (
        "/simple/demo/?as_of=2099-01-01T00:00:00+01:00",
        "/simple/demo/?as_of=2099-01-01T00:00:00%2B01:00",
        "/simple/demo/?as_of=2099-01-01T00:00:00+0100",
        "/as-of/2099-01-01T00:00:00+01:00/simple/demo/",
    ):
        url = URL(f"http://{proxy.host}:{proxy.port}{target}", encoded=True)
        async with raw.get(url, headers={"Accept": PIP_ACCEPT}) as resp:
            answers.append((resp.status, await resp.text()))
    assert [status for status, _text in answers] == [200, 200, 200, 200]
    assert len({text for _status, text in answers}) == 1
