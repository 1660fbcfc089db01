"""``kind: azure``: an Azure-Artifacts-style feed (Basic auth with a PAT, 303 to a blob host)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server import keys
from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes import FakeAzureFeed, FakeBlobHost
from tests.wheels import build_wheel, sha256_file

PAT = "azdo-pat-0123456789abcdefSENTINELzyxwvu"


class Feed:
    def __init__(self, feed: FakeAzureFeed, blobs: FakeBlobHost) -> None:
        self.feed = feed
        self.blobs = blobs

    def entry(self, *, credentials: bool = True, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": "ort-nightly", "kind": "azure", "url": self.feed.index_url}
        if credentials:
            entry |= {"username": "x", "password": PAT}
        return entry | extra


@pytest.fixture
async def azure(start_fake: StartFake, tmp_path: Path) -> Feed:
    blobs = await start_fake(FakeBlobHost())
    feed = await start_fake(FakeAzureFeed("anyone", PAT, blobs))
    # 1.20.0.dev… is shortened to 1.20.dev… in the GUID download path.
    wheel = build_wheel(tmp_path / "w", "ort-nightly", "1.20.0.dev20261120001")
    feed.add_file("ort-nightly", wheel, requires_python=">=3.10")
    return Feed(feed, blobs)


def the_wheel(tmp_path: Path) -> Path:
    return tmp_path / "w" / "ort_nightly-1.20.0.dev20261120001-py3-none-any.whl"


async def json_page(
    http: aiohttp.ClientSession, proxy: TestServer, project: str = "ort-nightly"
) -> tuple[int, str, URL]:
    url = proxy.make_url(f"/simple/{project}/")
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        return resp.status, await resp.text(), url


async def file_url(http: aiohttp.ClientSession, proxy: TestServer, filename: str) -> URL:
    status, text, url = await json_page(http, proxy)
    assert status == 200, text
    files = {f["filename"]: f for f in json.loads(text)["files"]}
    return url.join(URL(files[filename]["url"]))


async def download(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes | None, str]:
    """(status, body or None when the body was cut short, text of the body)."""
    async with http.get(url, allow_redirects=False) as resp:
        try:
            body: bytes | None = await resp.read()
        except aiohttp.ClientPayloadError:
            body = None
        return resp.status, body, (body or b"").decode("latin-1")


def blob_files(tmp_path: Path) -> list[Path]:
    blobs = tmp_path / "cache" / "blobs"
    return [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []


async def test_page_with_credentials_lists_the_feed_files(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With a PAT the project page lists the wheel with the feed's sha256 and requires-python."""
    proxy = await start_proxy(make_config([azure.entry()]))

    status, text, _ = await json_page(http, proxy)

    assert status == 200
    (entry,) = json.loads(text)["files"]
    wheel = the_wheel(tmp_path)
    assert entry["filename"] == wheel.name
    assert entry["hashes"]["sha256"] == sha256_file(wheel)
    assert entry["requires-python"] == ">=3.10"


async def test_download_follows_303_to_blob_host(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A file downloads through the feed's 303 from the blob host, byte for byte."""
    proxy = await start_proxy(make_config([azure.entry()]))
    wheel = the_wheel(tmp_path)

    status, body, _ = await download(http, await file_url(http, proxy, wheel.name))

    assert status == 200
    assert body == wheel.read_bytes()
    assert azure.feed.count("GET", "/pypi/download/") == 1
    assert azure.blobs.count("GET") == 1


async def test_blob_host_never_sees_authorization(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The feed gets the Basic credentials; the redirect target (another origin) never does."""
    proxy = await start_proxy(make_config([azure.entry()]))
    status, _body, _ = await download(http, await file_url(http, proxy, the_wheel(tmp_path).name))
    assert status == 200

    assert azure.blobs.requests
    assert all("Authorization" not in r.headers for r in azure.blobs.requests)
    assert all("Authorization" in r.headers for r in azure.feed.requests)


async def test_missing_credentials_is_502_naming_feed_and_401(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Without a PAT the only upstream answers 401, surfaced as a 502 that names the upstream
    and the 401 and carries no secret."""
    proxy = await start_proxy(make_config([azure.entry(credentials=False)]))

    status, text, _ = await json_page(http, proxy)

    assert status == 502
    assert "ort-nightly" in text
    assert "401" in text
    assert PAT not in text


async def test_rate_limit_with_retry_after_is_retried(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A 429 with Retry-After is waited out and retried; the client sees a normal page."""
    proxy = await start_proxy(make_config([azure.entry()]))
    azure.feed.rate_limit_next(1, retry_after=1)

    status, text, _ = await json_page(http, proxy)

    assert status == 200
    assert [f["filename"] for f in json.loads(text)["files"]] == [the_wheel(tmp_path).name]
    page_gets = [r for r in azure.feed.requests if r.path.endswith("/ort-nightly/")]
    assert len(page_gets) == 2


async def test_truncated_blob_body_fails_and_caches_nothing(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A blob body that ends early is a failed download: the client never receives the full
    wheel and no blob lands in the cache."""
    proxy = await start_proxy(make_config([azure.entry()]))
    wheel = the_wheel(tmp_path)
    url = await file_url(http, proxy, wheel.name)
    azure.blobs.truncate_body = True

    status, body, _ = await download(http, url)

    assert status != 200 or body is None
    assert body != wheel.read_bytes()
    assert blob_files(tmp_path) == []


async def test_truncated_download_is_fetched_again_next_time(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """After a truncated download nothing poisoned the cache: the next request goes upstream
    again and returns the complete, correct bytes."""
    proxy = await start_proxy(make_config([azure.entry()]))
    wheel = the_wheel(tmp_path)
    url = await file_url(http, proxy, wheel.name)
    azure.blobs.truncate_body = True
    await download(http, url)
    azure.blobs.truncate_body = False
    # The failed fill may still be winding down after the client saw its error (a retry in
    # that window joins the dead fill: a race in nightproxy/cache/fill.py, reported); this
    # test is about what the failure left behind, so wait for it to be gone.
    fills = proxy.app[keys.FILLS]
    for _ in range(200):
        if fills.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert fills.in_flight == 0

    status, body, text = await download(http, url)

    assert status == 200, text
    assert body == wheel.read_bytes()
    assert azure.blobs.count("GET") == 2


async def test_pat_never_in_pages_or_logs(
    azure: Feed,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Across pages (HTML, JSON, root), downloads and logged warnings, the PAT appears nowhere."""
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(make_config([azure.entry()]))
    azure.feed.rate_limit_next(1, retry_after=0)
    bodies: list[str] = []
    for path, accept in (
        ("/simple/ort-nightly/", JSON_TYPE),
        ("/simple/ort-nightly/", "text/html"),
        ("/simple/", JSON_TYPE),
    ):
        async with http.get(proxy.make_url(path), headers={"Accept": accept}) as resp:
            bodies.append(await resp.text())
            bodies.append(str(resp.headers))
    status, _body, _ = await download(http, await file_url(http, proxy, the_wheel(tmp_path).name))
    assert status == 200

    assert caplog.records
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in [*bodies, logged, caplog.text]:
        assert PAT not in text
        assert "SENTINEL" not in text
