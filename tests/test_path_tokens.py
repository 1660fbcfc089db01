"""Tokens in upstream URL paths (anaconda.org private channels: ``/t/<token>/<channel>/``).

The token is a credential like any other: it reaches its own feed and nothing else ever
shows it. Real proxy, real fake channel and store on loopback.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from nightproxy.config import mask_url
from nightproxy.upstreams.anaconda import channel_index_url
from nightproxy.upstreams.http import describe_url
from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes import FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore
from tests.support import free_port
from tests.wheels import build_wheel

TOKEN = "pt-9d8c7b6a5f4e"
CHANNEL = "private-nightlies"


def test_mask_url_hides_a_path_token_and_keeps_the_rest() -> None:
    """The segment after ``t`` is masked; host, channel and page stay readable."""
    url = f"https://feed.invalid/t/{TOKEN}/{CHANNEL}/simple/numpy/"
    assert mask_url(url) == f"https://feed.invalid/t/***/{CHANNEL}/simple/numpy/"
    assert describe_url(url) == f"https://feed.invalid/t/***/{CHANNEL}/simple/numpy/"


def test_channel_url_with_a_token_keeps_it_and_finds_the_channel() -> None:
    """A private channel's index is read under its token, and its owner is the channel."""
    url = f"https://feed.invalid/t/{TOKEN}/{CHANNEL}/simple/"
    assert channel_index_url(url, None) == (url, CHANNEL)
    assert channel_index_url(url, "dev") == (
        f"https://feed.invalid/t/{TOKEN}/{CHANNEL}/label/dev/simple/",
        CHANNEL,
    )


async def test_private_channel_pages_and_files_work_without_showing_the_token(
    start_fake: StartFake,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Through ``/t/<token>/``, the channel's page lists its wheel, the wheel downloads
    whole, and neither representation of the page carries the token."""
    store = await start_fake(FakeObjectStore())
    channel = FakeAnacondaChannel(CHANNEL, store)
    channel.token = TOKEN
    await start_fake(channel)
    api = await start_fake(FakeAnacondaAPI(channel))
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0")
    channel.add_file("numpy", wheel)
    entry = {
        "name": "private",
        "kind": "anaconda",
        "url": channel.index_url(),
        "api_url": api.origin,
    }
    proxy = await start_proxy(make_config([entry]))

    page_url = proxy.make_url("/simple/numpy/")
    async with http.get(page_url, headers={"Accept": JSON_TYPE}) as resp:
        assert resp.status == 200
        text = await resp.text()
    files = {f["filename"]: f for f in json.loads(text)["files"]}
    async with http.get(page_url.join(URL(files[wheel.name]["url"]))) as resp:
        assert resp.status == 200
        assert await resp.read() == wheel.read_bytes()
    async with http.get(page_url, headers={"Accept": "text/html"}) as resp:
        html = await resp.text()
    assert TOKEN not in text
    assert TOKEN not in html


async def test_a_failing_feed_never_shows_its_path_token(
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A feed that cannot be reached: its 502 text, /readyz, the status page and the log
    name it, with the token masked."""
    dead = f"http://127.0.0.1:{free_port()}/t/{TOKEN}/{CHANNEL}/simple/"
    proxy = await start_proxy(make_config([{"name": "private", "kind": "simple", "url": dead}]))
    shown = []
    with caplog.at_level(logging.DEBUG):
        for path in ("/simple/numpy/", "/readyz", "/"):
            async with http.get(proxy.make_url(path)) as resp:
                shown.append(await resp.text())
    assert "t/***/" in shown[0]
    for text in [*shown, caplog.text]:
        assert TOKEN not in text


def test_check_prints_the_feed_url_with_its_path_token_masked(tmp_path: Path) -> None:
    """``nightproxy check`` shows the configuration without the token."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
        "upstreams:\n"
        f"  - {{name: private, kind: anaconda, url: 'https://feed.invalid/t/{TOKEN}/{CHANNEL}/simple/'}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "nightproxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"t/***/{CHANNEL}" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
