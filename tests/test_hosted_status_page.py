"""A hosted feed's section of the status page and its metrics, from the real server.

The feed is filled beforehand with an injected clock: Linux wheels every day, Windows wheels
that stopped three days ago, a project quiet for 20 days and builds past ``dev_max_age``.
The section is read as HTML and, where Chromium is installed, as the DOM a browser builds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from nightproxy.config import load_config
from nightproxy.hosted.setup import find_hosted, make_feed
from tests.hosted_support import publish
from tests.support import free_port, needs, nightproxy_serve, tool
from tests.test_hosted_e2e import write_config
from tests.test_status_browser import TableText, chromium
from tests.wheels import build_wheel

LINUX = "cp311-cp311-manylinux_2_17_x86_64"
WINDOWS = "cp311-cp311-win_amd64"


async def fill_feed(tmp_path: Path) -> Path:
    config_path = write_config(
        tmp_path,
        publishers={"numpy": {"tokens": ["sha256:" + "0" * 64]}},
    )
    config = load_config(config_path)
    upstream = find_hosted(config, "community")
    assert upstream is not None
    # A minute before now: each build lands on the day it names, days apart to the second
    # (within a minute of midnight UTC the matrix's columns would shift by one).
    today = datetime.now(UTC) - timedelta(minutes=1)
    when = [today - timedelta(days=40)]
    feed = make_feed(config, upstream, clock=lambda: when[0])
    await feed.open()
    dist = tmp_path / "dist"
    await publish(feed, build_wheel(dist, "scipy", "1.0.dev0", tag=LINUX))
    when[0] = today - timedelta(days=20)
    await publish(feed, build_wheel(dist, "scipy", "1.0.dev1", tag=LINUX))
    for days_ago in range(40, -1, -1):
        when[0] = today - timedelta(days=days_ago)
        version = f"2.0.dev{40 - days_ago}"
        await publish(feed, build_wheel(dist, "numpy", version, tag=LINUX))
        if days_ago >= 3:
            await publish(feed, build_wheel(dist, "numpy", version, tag=WINDOWS))
    await feed.close()
    return config_path


@pytest.fixture
async def feed_server(tmp_path: Path) -> AsyncIterator[str]:
    config = await fill_feed(tmp_path)
    port = free_port()
    async with nightproxy_serve(["--config", str(config)], port):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def chromium_path() -> str:
    """As the status page's own browser test finds it (skips without Chromium)."""
    return needs(
        tool("chromium"),
        "Chromium (the status page test's browser)",
        "apt-get install chromium",
        "NIGHTPROXY_REQUIRE_BROWSER",
    )


def check_section(tables: dict[str, list[list[str]]]) -> None:
    newest = {(r[0], r[1]): r[2] for r in tables["feed-community-newest"][1:]}
    assert newest[("numpy", LINUX)] == "2.0.dev40"
    assert newest[("numpy", WINDOWS)] == "2.0.dev37"
    matrix = {(r[0], r[1]): r[2:] for r in tables["feed-community-matrix"][1:]}
    built = "\u25a0"
    assert matrix[("numpy", LINUX)] == [built] * 14
    assert matrix[("numpy", WINDOWS)] == [built] * 11 + ["\u00b7"] * 3
    assert [r[0] for r in tables["feed-community-stale"][1:]] == ["scipy"]
    planned = tables["feed-community-prune"][1:]
    # Older than 30 days and past the two newest of their platform: days 40..30 ago, twice.
    assert len(planned) == 22
    assert all(row[2].startswith("dev_max_age: ") for row in planned)


async def test_status_section_and_metrics(feed_server: str) -> None:
    """The section shows the newest build per platform, a build matrix where Windows stopped
    three days ago, the quiet project and the next prune; /metrics has the same facts."""
    async with aiohttp.ClientSession() as http:
        async with http.get(feed_server) as response:
            html = await response.text()
        async with http.get(feed_server + "metrics") as response:
            metrics = await response.text()
    parser = TableText()
    parser.feed(html)
    check_section(parser.tables)
    assert 'nightproxy_feed_files{feed="community",project="numpy"} 79.0' in metrics
    assert 'nightproxy_feed_files{feed="community",project="scipy"} 2.0' in metrics
    assert 'nightproxy_feed_last_upload_timestamp_seconds{feed="community",project="numpy"}' in (
        metrics
    )


async def test_status_section_in_chromium(
    chromium_path: str, feed_server: str, tmp_path: Path
) -> None:
    """Chromium's DOM of the status page holds the feed's tables with the same rows."""
    dom = (await chromium(chromium_path, tmp_path / "profile", "--dump-dom", feed_server)).decode()
    parser = TableText()
    parser.feed(dom)
    check_section(parser.tables)
