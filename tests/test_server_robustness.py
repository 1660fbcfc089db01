"""What the server does with requests it cannot parse, and with PEP 691's ``latest`` versions.

The proxy runs as ``nightproxy serve`` runs it, on a real socket; malformed requests are sent
as raw bytes, since no HTTP client would send them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp.http_exceptions import LineTooLong
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from nightproxy.server.access import ConnectionLog
from nightproxy.simple_api.negotiate import negotiate
from tests.conftest import JSON_TYPE, MakeConfig, StartProxy
from tests.wheels import build_wheel

LATEST_JSON = "application/vnd.pypi.simple.latest+json"
LATEST_HTML = "application/vnd.pypi.simple.latest+html"


@pytest.fixture
async def proxy(make_config: MakeConfig, start_proxy: StartProxy, wheelhouse: Path) -> TestServer:
    """The proxy over a local directory holding one wheel of 'demo'."""
    build_wheel(wheelhouse, "demo", "1.0")
    config = make_config([{"name": "local", "kind": "directory", "path": str(wheelhouse)}])
    return await start_proxy(config)


async def send_raw(proxy: TestServer, data: bytes) -> bytes:
    """Write ``data`` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def request_counts(proxy: TestServer) -> dict[tuple[str, str], float]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.make_url("/metrics")) as resp,
    ):
        text = await resp.text()
    return {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nightproxy_requests_total"
    }


MALFORMED = {
    "bad method": b"GARBAGE\r\n\r\n",
    "header over 8190 bytes": b"GET /simple/ HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "bad request line": b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "data after Connection: close": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    b"Connection: close\r\n\r\nGARBAGE\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_is_answered_counted_and_logged_without_a_traceback(
    proxy: TestServer, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A request aiohttp's parser rejects gets its 400, one access line and a 400 under the
    route "unmatched" in the request counter, and nothing is logged as an error."""
    with caplog.at_level(logging.INFO):
        reply = await send_raw(proxy, data)
    assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 "))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "nightproxy.access"]
    assert len(lines) == 1
    assert " 400 " in lines[0]
    assert (await request_counts(proxy)).get(("unmatched", "400")) == 1


def test_the_servers_own_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Only the parser's verdicts on a client's request lose their traceback: any other
    error aiohttp reports on a connection (a handler raising) is still logged as an error."""
    log = ConnectionLog(logging.getLogger("aiohttp.server"))
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=RuntimeError("x"))
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=LineTooLong("x"))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info is not None for r in errors] == [True]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug == ["Error handling request from 127.0.0.1: LineTooLong, answered 400"]


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (LATEST_JSON, "json"),
        (LATEST_HTML, "html"),
        (f"{LATEST_JSON}, {LATEST_HTML};q=0.1", "json"),
        (f"{LATEST_HTML}, {LATEST_JSON};q=0.1", "html"),
        (f"{LATEST_JSON};q=0, {LATEST_HTML}", "html"),
    ],
)
def test_the_latest_meta_version_negotiates_as_version_1(accept: str, fmt: str) -> None:
    """PEP 691's ``latest`` media types pick the format they name, q-values included."""
    assert negotiate(accept) == fmt


@pytest.mark.parametrize(("param", "fmt"), [(LATEST_JSON, "json"), (LATEST_HTML, "html")])
def test_the_latest_meta_version_is_a_format_parameter_too(param: str, fmt: str) -> None:
    """``?format=`` takes the ``latest`` media types as it takes the v1 ones."""
    assert negotiate(None, param) == fmt


@pytest.mark.parametrize("path", ["/simple/", "/simple/demo/"])
async def test_latest_json_is_served_as_v1_json(proxy: TestServer, path: str) -> None:
    """``Accept: ...latest+json`` gets the JSON page, labelled with the concrete v1 type."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.make_url(path), headers={"Accept": LATEST_JSON}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == JSON_TYPE
        assert json.loads(await resp.read())["meta"]["api-version"]


async def test_a_warm_page_asked_for_as_latest_json_is_labelled_v1(proxy: TestServer) -> None:
    """A warm page (answered from the rendered copy) carries the concrete v1 type too."""
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            headers = {"Accept": LATEST_JSON}
            async with http.get(proxy.make_url("/simple/demo/"), headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == JSON_TYPE
                await resp.read()


@pytest.mark.parametrize("path", ["/simple/", "/simple/demo/"])
async def test_latest_html_is_served_as_html(proxy: TestServer, path: str) -> None:
    """``Accept: ...latest+html`` gets the HTML page (not a 406), named by the concrete
    version served, as PEP 691 asks: ``application/vnd.pypi.simple.v1+html``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.make_url(path), headers={"Accept": LATEST_HTML}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/vnd.pypi.simple.v1+html"
        assert b"<html" in (await resp.read()).lower()
