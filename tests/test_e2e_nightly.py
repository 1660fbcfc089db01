"""End to end: real pip and real uv against the nightly view.

The installers run as subprocesses started with ``asyncio.create_subprocess_exec``: the proxy
and the fakes serve from this test's event loop, which must keep running meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore, FakeSimpleIndex
from tests.support import installed_version, pip_install, uv_install
from tests.wheels import build_wheel, wheel_filename

INSTALL_TIMEOUT = 240.0  # a bound so a hung installer fails the test instead of the run
CHANNEL = "scientific-python-nightly-wheels"


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def nightly(days_ago: int, base: str = "1.1") -> str:
    return f"{base}.dev{today() - timedelta(days=days_ago):%Y%m%d}"


# -- a nightly feed -----------------------------------------------------------------------------

PICKY_OLD = nightly(3, "3.0")
PICKY_NEW = nightly(1, "3.0")


@dataclass
class Feed:
    fake: FakeSimpleIndex
    proxy: TestServer

    @property
    def index_url(self) -> str:
        return str(self.proxy.make_url("/simple/"))

    def wheel_gets(self, filename: str) -> int:
        """Upstream GETs of the wheel itself (not of its ``.metadata``)."""
        path = "/files/" + quote(filename)
        return sum(1 for r in self.fake.requests if r.method == "GET" and r.path == path)

    def metadata_gets(self, filename: str) -> int:
        path = "/files/" + quote(filename) + ".metadata"
        return sum(1 for r in self.fake.requests if r.method == "GET" and r.path == path)


@pytest.fixture
async def feed(
    start_fake: StartFake, wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy
) -> Feed:
    """'nightly-app': a release and nightlies, the newest from yesterday, plus one too old for
    the 7-day view. 'picky': its newest nightly needs ``helper>=2``, which does not exist, so
    resolving it needs that wheel's metadata but installs the older nightly."""
    fake = FakeSimpleIndex()
    for version, days in (("1.0", 30), (nightly(20), 20), (nightly(2), 2), (nightly(1), 1)):
        fake.add_file(
            "nightly-app",
            build_wheel(wheelhouse, "nightly-app", version),
            upload_time=today() - timedelta(days=days),
        )
    fake.add_file("picky", build_wheel(wheelhouse, "picky", PICKY_OLD))
    fake.add_file("picky", build_wheel(wheelhouse, "picky", PICKY_NEW, requires_dist=["helper>=2"]))
    fake.add_file("helper", build_wheel(wheelhouse, "helper", "1.0"))
    await start_fake(fake)
    config = make_config(
        [{"name": "nightly", "kind": "simple", "url": simple_url(fake)}],
        retention={"dev_max_age": "7d", "keep_latest": 1},
    )
    return Feed(fake, await start_proxy(config))


async def test_pip_install_pre_gets_the_newest_nightly(feed: Feed, tmp_path: Path) -> None:
    """``pip install --pre`` through the proxy installs yesterday's nightly."""
    target = tmp_path / "target"
    await pip_install(feed.index_url, target, tmp_path, "nightly-app")
    assert installed_version(target, "nightly_app") == nightly(1)


async def test_uv_install_prerelease_allow_gets_the_newest_nightly(
    feed: Feed, tmp_path: Path
) -> None:
    """``uv pip install --prerelease=allow`` through the proxy installs yesterday's nightly."""
    target = tmp_path / "target"
    await uv_install(feed.index_url, target, tmp_path, "nightly-app")
    assert installed_version(target, "nightly_app") == nightly(1)


async def test_pip_resolves_with_metadata_not_whole_wheels(feed: Feed, tmp_path: Path) -> None:
    """pip reads the rejected candidate's ``.metadata``; its wheel is never fetched upstream."""
    target = tmp_path / "target"
    await pip_install(feed.index_url, target, tmp_path, "picky")
    assert installed_version(target, "picky") == PICKY_OLD
    rejected = wheel_filename("picky", PICKY_NEW)
    assert feed.metadata_gets(rejected) == 1
    assert feed.wheel_gets(rejected) == 0
    assert feed.wheel_gets(wheel_filename("picky", PICKY_OLD)) == 1


async def test_uv_resolves_with_metadata_not_whole_wheels(feed: Feed, tmp_path: Path) -> None:
    """uv reads the rejected candidate's ``.metadata``; its wheel is never fetched upstream."""
    target = tmp_path / "target"
    await uv_install(feed.index_url, target, tmp_path, "picky")
    assert installed_version(target, "picky") == PICKY_OLD
    rejected = wheel_filename("picky", PICKY_NEW)
    assert feed.metadata_gets(rejected) == 1
    assert feed.wheel_gets(rejected) == 0
    assert feed.wheel_gets(wheel_filename("picky", PICKY_OLD)) == 1


# -- --exclude-newer against a feed whose times come only from the anaconda API ------------------


async def test_uv_exclude_newer_through_the_proxy_against_anaconda(
    start_fake: StartFake, make_config: MakeConfig, start_proxy: StartProxy, tmp_path: Path
) -> None:
    """The channel's pages carry no times; the proxy publishes the API's upload times, so
    ``uv --exclude-newer`` picks the build uploaded before the cut-off."""
    store = await start_fake(FakeObjectStore())
    channel = await start_fake(FakeAnacondaChannel(CHANNEL, store))
    api = await start_fake(FakeAnacondaAPI(channel))
    for n, days in ((0, 10), (1, 5), (2, 1)):
        wheel = build_wheel(tmp_path / "w", "numpy", f"2.3.0.dev{n}")
        channel.add_file("numpy", wheel, upload_time=today() - timedelta(days=days, hours=-6))
    config = make_config(
        [
            {
                "name": "spnw",
                "kind": "anaconda",
                "url": channel.index_url(),
                "api_url": api.origin,
            }
        ]
    )
    proxy = await start_proxy(config)
    cutoff = (today() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = tmp_path / "target"
    await uv_install(
        str(proxy.make_url("/simple/")),
        target,
        tmp_path,
        "numpy",
        extra=("--exclude-newer", cutoff),
    )
    assert installed_version(target, "numpy") == "2.3.0.dev1"
    assert api.count("GET", "/package/") >= 1
