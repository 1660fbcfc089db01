"""``kind: anaconda``: an anaconda.org-style channel behind the proxy.

Real sockets only: the fake channel, its presigned object store and its JSON API are aiohttp
servers on loopback, and the proxy is the real app.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes import FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore
from tests.support import html_anchors
from tests.wheels import build_wheel, sha256_file

CHANNEL = "scientific-python-nightly-wheels"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class Channel:
    """A started channel, its object store and API."""

    def __init__(
        self, store: FakeObjectStore, channel: FakeAnacondaChannel, api: FakeAnacondaAPI
    ) -> None:
        self.store = store
        self.channel = channel
        self.api = api

    def entry(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "spnw",
            "kind": "anaconda",
            "url": self.channel.index_url(),
            "api_url": self.api.origin,
            **extra,
        }


@pytest.fixture
async def conda(start_fake: StartFake) -> Channel:
    store = await start_fake(FakeObjectStore())
    channel = await start_fake(FakeAnacondaChannel(CHANNEL, store))
    api = await start_fake(FakeAnacondaAPI(channel))
    return Channel(store, channel, api)


async def page(
    http: aiohttp.ClientSession, proxy: TestServer, project: str, accept: str = JSON_TYPE
) -> tuple[int, str, URL]:
    url = proxy.make_url(f"/simple/{project}/")
    async with http.get(url, headers={"Accept": accept}) as resp:
        return resp.status, await resp.text(), url


async def json_page(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[dict[str, dict[str, Any]], str, URL]:
    status, text, url = await page(http, proxy, project)
    assert status == 200, text
    doc = json.loads(text)
    return {f["filename"]: f for f in doc["files"]}, text, url


async def download(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url, allow_redirects=False) as resp:
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            body = b"<truncated>"
        return resp.status, body, dict(resp.headers)


def blob_files(tmp_path: Path) -> list[Path]:
    blobs = tmp_path / "cache" / "blobs"
    return [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []


async def test_local_version_file_downloads_through_presigned_redirect(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A root-relative href with a %2B local version resolves and downloads via the 302."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0+git20261120.abc123")
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))

    files, _text, page_url = await json_page(http, proxy, "numpy")
    status, body, _ = await download(http, page_url.join(URL(files[wheel.name]["url"])))

    assert status == 200
    assert body == wheel.read_bytes()
    channel_gets = [r for r in conda.channel.requests if r.path.endswith(".whl")]
    assert len(channel_gets) == 1
    assert "%2B" in channel_gets[0].path_qs
    assert conda.store.count("GET") == 1


async def test_presigned_url_never_appears_in_pages(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Neither HTML nor JSON pages mention the object store or its signed query, even after
    a download went through the redirect."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    status, _body, _ = await download(http, page_url.join(URL(files[wheel.name]["url"])))
    assert status == 200

    _files, json_text, _ = await json_page(http, proxy, "numpy")
    _status, html_text, _ = await page(http, proxy, "numpy", accept="text/html")
    for text in (json_text, html_text):
        assert conda.store.origin not in text
        assert "X-Amz" not in text
        assert conda.channel.origin not in text


async def test_non_file_anchor_is_skipped(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The channel's 'homepage' anchor is not a distribution and is not published."""
    wheels = [build_wheel(tmp_path / "w", "scipy", v) for v in ("1.17.0.dev0", "1.17.0.dev1")]
    for wheel in wheels:
        conda.channel.add_file("scipy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))

    files, text, _ = await json_page(http, proxy, "scipy")

    assert set(files) == {w.name for w in wheels}
    assert "example.invalid" not in text


async def test_channel_name_is_case_insensitive(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A channel URL spelled in another case still lists and downloads the channel's files."""
    wheel = build_wheel(tmp_path / "w", "pandas", "3.0.0.dev0")
    conda.channel.add_file("pandas", wheel)
    mixed = conda.channel.url("/Scientific-Python-Nightly-Wheels/simple/")
    proxy = await start_proxy(make_config([conda.entry(url=mixed)]))

    files, _text, page_url = await json_page(http, proxy, "pandas")
    status, body, _ = await download(http, page_url.join(URL(files[wheel.name]["url"])))

    assert status == 200
    assert body == wheel.read_bytes()


async def test_label_reads_the_label_index(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """``label: rc`` publishes the files of that label and not those only on main."""
    main = build_wheel(tmp_path / "w", "matplotlib", "3.11.0.dev1")
    rc = build_wheel(tmp_path / "w", "matplotlib", "3.11.0rc1")
    conda.channel.add_file("matplotlib", main)
    conda.channel.add_file("matplotlib", rc, label="rc")
    proxy = await start_proxy(make_config([conda.entry(label="rc")]))

    files, _text, page_url = await json_page(http, proxy, "matplotlib")
    status, body, _ = await download(http, page_url.join(URL(files[rc.name]["url"])))

    assert set(files) == {rc.name}
    assert status == 200
    assert body == rc.read_bytes()
    assert any("/label/rc/simple/matplotlib/" in r.path for r in conda.channel.requests)


async def test_api_upload_time_is_pep700_upload_time_in_json(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The API's upload_time for a file is its ``upload-time`` in the JSON page."""
    when = datetime(2026, 11, 20, 3, 14, 15, 926535, tzinfo=UTC)
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel, upload_time=when)
    proxy = await start_proxy(make_config([conda.entry()]))

    files, _text, _ = await json_page(http, proxy, "numpy")

    assert parse_time(files[wheel.name]["upload-time"]) == when


async def test_api_size_is_pep700_size_in_json(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The channel's pages give no sizes; the API's size for a file is its PEP 700 ``size``."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0", payload_size=12_345)
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))

    files, _text, _ = await json_page(http, proxy, "numpy")

    assert files[wheel.name]["size"] == wheel.stat().st_size


async def test_api_sha256_is_the_published_hash(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With no ``#sha256`` on the channel's links, the API's sha256 for a file is the hash the
    page publishes, before anything was downloaded."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))

    files, _text, _ = await json_page(http, proxy, "numpy")

    assert files[wheel.name]["hashes"] == {"sha256": sha256_file(wheel)}


async def test_bytes_not_matching_the_api_sha256_are_refused(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """An object whose bytes are not the ones the API's sha256 names (a broken or raced
    upload) is never served as the file and never cached."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    wheel.write_bytes(wheel.read_bytes() + b"tampered")

    status, body, _ = await download(http, page_url.join(URL(files[wheel.name]["url"])))

    assert body != wheel.read_bytes()
    assert status == 502 or len(body) < wheel.stat().st_size
    assert blob_files(tmp_path) == []


async def test_api_upload_time_is_data_upload_time_in_html(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The API's upload_time for a file is its ``data-upload-time`` in the HTML page."""
    when = datetime(2026, 11, 20, 3, 14, 15, 926535, tzinfo=UTC)
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel, upload_time=when)
    proxy = await start_proxy(make_config([conda.entry()]))

    status, text, _ = await page(http, proxy, "numpy", accept="text/html")

    assert status == 200
    value = html_anchors(text)[wheel.name].get("data-upload-time")
    assert value is not None
    assert parse_time(value) == when


async def test_failing_api_degrades_to_no_upload_time(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With the API answering 500 the page is still served, without upload times."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel)
    conda.api.fail = True
    proxy = await start_proxy(make_config([conda.entry()]))

    status, text, _ = await page(http, proxy, "numpy")

    assert status == 200
    (entry,) = json.loads(text)["files"]
    assert entry["filename"] == wheel.name
    assert "upload-time" not in entry
    assert conda.api.count("GET") >= 1


async def test_overwrite_in_place_gets_new_key_and_new_bytes(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """After a --force re-upload of the same filename, the next page links a new file key
    and downloading it gives the new bytes."""
    old = build_wheel(tmp_path / "old", "numpy", "2.3.0.dev0")
    new = build_wheel(tmp_path / "new", "numpy", "2.3.0.dev0", payload_size=64, seed=7)
    assert old.name == new.name
    assert old.read_bytes() != new.read_bytes()
    conda.channel.add_file("numpy", old, upload_time=datetime(2026, 11, 19, tzinfo=UTC))
    proxy = await start_proxy(make_config([conda.entry(ttl="0s")]))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    old_url = page_url.join(URL(files[old.name]["url"]))

    conda.channel.overwrite("numpy", new.name, new, upload_time=datetime(2026, 11, 20, tzinfo=UTC))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    new_url = page_url.join(URL(files[new.name]["url"]))
    status, body, _ = await download(http, new_url)

    assert new_url != old_url
    assert status == 200
    assert body == new.read_bytes()


async def test_overwrite_in_place_old_link_still_gives_cached_old_bytes(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A client resolving against the old page still gets the old bytes once they were cached,
    even after the channel overwrote the file and the new bytes were downloaded too."""
    old = build_wheel(tmp_path / "old", "numpy", "2.3.0.dev0")
    new = build_wheel(tmp_path / "new", "numpy", "2.3.0.dev0", payload_size=64, seed=7)
    conda.channel.add_file("numpy", old, upload_time=datetime(2026, 11, 19, tzinfo=UTC))
    proxy = await start_proxy(make_config([conda.entry(ttl="0s")]))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    old_url = page_url.join(URL(files[old.name]["url"]))
    status, body, _ = await download(http, old_url)
    assert (status, body) == (200, old.read_bytes())

    conda.channel.overwrite("numpy", new.name, new, upload_time=datetime(2026, 11, 20, tzinfo=UTC))
    files, _text, page_url = await json_page(http, proxy, "numpy")
    new_status, new_body, _ = await download(http, page_url.join(URL(files[new.name]["url"])))
    status, body, headers = await download(http, old_url)

    assert (new_status, new_body) == (200, new.read_bytes())
    assert status == 200
    assert body == old.read_bytes()
    assert headers.get("X-Nightproxy-Cache") == "hit"
    assert sha256_file(old) != sha256_file(new)


async def test_missing_object_is_an_error_and_nothing_is_cached(
    conda: Channel,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """When the object store answers 404 NoSuchKey behind the redirect, the client gets an
    error status and no blob is stored."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    conda.channel.add_file("numpy", wheel)
    conda.channel.missing_object.add(wheel.name)
    proxy = await start_proxy(make_config([conda.entry()]))
    files, _text, page_url = await json_page(http, proxy, "numpy")

    status, body, _ = await download(http, page_url.join(URL(files[wheel.name]["url"])))

    assert status >= 500
    assert body != wheel.read_bytes()
    assert conda.store.count("GET") == 1
    assert blob_files(tmp_path) == []
