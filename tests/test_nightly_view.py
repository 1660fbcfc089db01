"""The nightly view through the real proxy: retention, keep_missing, dev_only, PEP 700/658/714
facts on pages, ``.metadata`` and ``as_of``. Every upstream is a fake on a real loopback socket.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore, FakeSimpleIndex
from tests.support import html_anchors as parse_anchors
from tests.wheels import build_wheel, wheel_metadata

CHANNEL = "scientific-python-nightly-wheels"


# -- helpers ------------------------------------------------------------------------------------


@dataclass
class Page:
    url: URL
    headers: dict[str, str]
    files: dict[str, dict[str, Any]]
    doc: dict[str, Any]

    def link(self, filename: str) -> URL:
        return self.url.join(URL(self.files[filename]["url"]))


async def json_page(http: aiohttp.ClientSession, url: URL) -> Page:
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        doc = json.loads(text)
        return Page(resp.url, dict(resp.headers), {f["filename"]: f for f in doc["files"]}, doc)


async def html_anchors(http: aiohttp.ClientSession, url: URL) -> dict[str, dict[str, str | None]]:
    async with http.get(url, headers={"Accept": "text/html"}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    return parse_anchors(text)


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def nightly(days_ago: int) -> str:
    return f"1.0.dev{today() - timedelta(days=days_ago):%Y%m%d}"


def whl(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def versions(page: Page) -> set[str]:
    return set(page.doc["versions"])


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_z(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00")


@dataclass
class Conda:
    store: FakeObjectStore
    channel: FakeAnacondaChannel
    api: FakeAnacondaAPI

    def entry(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "spnw",
            "kind": "anaconda",
            "url": self.channel.index_url(),
            "api_url": self.api.origin,
            **extra,
        }


@pytest.fixture
async def conda(start_fake: StartFake) -> Conda:
    store = await start_fake(FakeObjectStore())
    channel = await start_fake(FakeAnacondaChannel(CHANNEL, store))
    api = await start_fake(FakeAnacondaAPI(channel))
    return Conda(store, channel, api)


def simple_entry(name: str, fake: FakeSimpleIndex, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simple", "url": simple_url(fake), **extra}


# -- retention by age ---------------------------------------------------------------------------

# 60 distinct build days over the last 90; day 7 (the 7d boundary itself) is left out.
SIXTY_DAYS = [0, 1, 2, 4, 5, 6, *range(9, 90, 3), *range(10, 90, 3)][:60]


@pytest.fixture
async def sixty_nightlies(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """'busy': 60 nightlies over 90 days plus an old release; 'stalled': 5 nightlies, the
    newest 60 days old."""
    assert len(set(SIXTY_DAYS)) == 60
    fake = FakeSimpleIndex()
    for days in SIXTY_DAYS:
        built = today() - timedelta(days=days)
        fake.add_file("busy", build_wheel(wheelhouse, "busy", nightly(days)), upload_time=built)
    fake.add_file(
        "busy", build_wheel(wheelhouse, "busy", "0.9"), upload_time=today() - timedelta(400)
    )
    for days in range(60, 65):
        fake.add_file(
            "stalled",
            build_wheel(wheelhouse, "stalled", nightly(days)),
            upload_time=today() - timedelta(days=days),
        )
    return await start_fake(fake)


@pytest.fixture
async def week_proxy(
    sixty_nightlies: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    config = make_config(
        [simple_entry("nightly", sixty_nightlies)],
        retention={"dev_max_age": "7d", "keep_latest": 3},
    )
    return await start_proxy(config)


async def test_sixty_nightlies_show_only_the_last_week(
    http: aiohttp.ClientSession, week_proxy: TestServer
) -> None:
    """Of 60 nightlies over 90 days only the last week's builds (and the release) are listed."""
    page = await json_page(http, week_proxy.make_url("/simple/busy/"))
    recent = {nightly(d) for d in SIXTY_DAYS if d < 7}
    assert versions(page) == recent | {"0.9"}
    assert len(recent) >= 3
    assert set(page.files) == {whl("busy", v) for v in recent | {"0.9"}}
    for entry in page.files.values():
        if ".dev" in entry["filename"]:
            assert entry["_nightproxy"]["build-time-source"] == "version"


async def test_html_page_hides_the_same_builds(
    http: aiohttp.ClientSession, week_proxy: TestServer
) -> None:
    """The HTML representation applies the same retention as JSON."""
    anchors = await html_anchors(http, week_proxy.make_url("/simple/busy/"))
    recent = {nightly(d) for d in SIXTY_DAYS if d < 7}
    assert set(anchors) == {whl("busy", v) for v in recent | {"0.9"}}


async def test_stalled_project_keeps_its_three_newest_nightlies(
    http: aiohttp.ClientSession, week_proxy: TestServer
) -> None:
    """A project whose last nightly is 60 days old still shows its 3 newest versions."""
    page = await json_page(http, week_proxy.make_url("/simple/stalled/"))
    assert versions(page) == {nightly(60), nightly(61), nightly(62)}


# -- a fixed version overwritten nightly -------------------------------------------------------


async def test_overwritten_fixed_version_uses_upstream_time_and_serves_newest_bytes(
    conda: Conda,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """``2.3.0.dev0`` re-uploaded every night: its build time comes from the channel API
    (source ``upstream``) and the proxy serves the newest upload's bytes."""
    old = build_wheel(tmp_path / "night1", "numpy", "2.3.0.dev0", payload_size=100, seed=1)
    new = build_wheel(tmp_path / "night2", "numpy", "2.3.0.dev0", payload_size=100, seed=2)
    assert old.read_bytes() != new.read_bytes()
    first = today() - timedelta(days=1, hours=-3)
    second = today() + timedelta(hours=0, minutes=1)
    conda.channel.add_file("numpy", old, upload_time=first)
    proxy = await start_proxy(
        make_config(
            [conda.entry()],
            retention={"dev_max_age": "7d", "keep_latest": 1},
            index={"ttl": 0},
        )
    )
    url = proxy.make_url("/simple/numpy/")
    before = await json_page(http, url)
    assert (await fetch(http, before.link(old.name)))[1] == old.read_bytes()

    conda.channel.overwrite("numpy", old.name, new, upload_time=second)
    after = await json_page(http, url)

    entry = after.files[new.name]
    assert entry["_nightproxy"]["build-time-source"] == "upstream"
    assert parse_z(entry["_nightproxy"]["build-time"]) == second
    assert parse_z(entry["upload-time"]) == second
    assert entry["url"] != before.files[old.name]["url"]
    status, body = await fetch(http, after.link(new.name))
    assert status == 200
    assert body == new.read_bytes()


async def test_anaconda_page_without_api_publishes_no_upload_time(
    conda: Conda,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With the channel API down the channel gives no per-file time: no ``upload-time`` or
    ``data-upload-time`` is published, though a build time (version, first-seen) still is."""
    dated = build_wheel(tmp_path / "w", "scipy", nightly(1))
    undated = build_wheel(tmp_path / "w", "scipy", "1.17.0.dev0")
    conda.channel.add_file("scipy", dated)
    conda.channel.add_file("scipy", undated)
    conda.api.fail = True
    proxy = await start_proxy(make_config([conda.entry()]))
    url = proxy.make_url("/simple/scipy/")

    page = await json_page(http, url)
    anchors = await html_anchors(http, url)

    for name in (dated.name, undated.name):
        assert "upload-time" not in page.files[name]
        assert "data-upload-time" not in anchors[name]
    assert page.files[dated.name]["_nightproxy"]["build-time-source"] == "version"
    assert page.files[undated.name]["_nightproxy"]["build-time-source"] == "first-seen"
    assert parse_z(page.files[dated.name]["_nightproxy"]["build-time"]) == today() - timedelta(1)


# -- keep_missing -------------------------------------------------------------------------------


@pytest.fixture
async def deleting_feed(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    for days in (1, 2, 3):
        fake.add_file("pandas", build_wheel(wheelhouse, "pandas", nightly(days)))
    return await start_fake(fake)


@pytest.fixture
async def ttl0_proxy(
    deleting_feed: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(
        make_config([simple_entry("nightly", deleting_feed)], index={"ttl": 0})
    )


async def test_deleted_cached_file_is_retained_and_still_downloads(
    deleting_feed: FakeSimpleIndex,
    ttl0_proxy: TestServer,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> None:
    """A file the proxy holds stays listed (marked retained) after the upstream deletes it,
    the page says how many are retained, and the cached copy is served."""
    url = ttl0_proxy.make_url("/simple/pandas/")
    name = whl("pandas", nightly(2))
    page = await json_page(http, url)
    status, body = await fetch(http, page.link(name))
    assert status == 200
    assert "retained" not in page.files[name]["_nightproxy"]

    deleting_feed.remove_file("pandas", name)
    wheel_gets = deleting_feed.count("GET", "/files/" + name)
    after = await json_page(http, url)

    assert name in after.files
    assert after.files[name]["_nightproxy"]["retained"] is True
    assert after.headers["X-Nightproxy-Retained"] == "1"
    assert all("retained" not in f["_nightproxy"] for n, f in after.files.items() if n != name)
    status, again = await fetch(http, after.link(name))
    assert (status, again) == (200, body)
    assert body == (wheelhouse / name).read_bytes()
    assert deleting_feed.count("GET", "/files/" + name) == wheel_gets


async def test_file_deleted_while_the_proxy_was_down_is_retained_after_restart(
    deleting_feed: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A cached file the upstream deletes while the proxy is stopped is still listed, marked
    retained, by the restarted proxy (it compares with the page it persisted)."""
    config = make_config([simple_entry("nightly", deleting_feed)], index={"ttl": 0})
    first = await start_proxy(config)
    name = whl("pandas", nightly(2))
    page = await json_page(http, first.make_url("/simple/pandas/"))
    status, body = await fetch(http, page.link(name))
    assert status == 200
    await first.close()

    deleting_feed.remove_file("pandas", name)
    second = await start_proxy(config)
    after = await json_page(http, second.make_url("/simple/pandas/"))

    assert after.files[name]["_nightproxy"]["retained"] is True
    status, again = await fetch(http, after.link(name))
    assert (status, again) == (200, body)


async def test_retained_file_stays_retained_across_a_restart(
    deleting_feed: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A file already being retained when the proxy restarts is still listed as retained and
    still downloads afterwards (the keep_missing state is persisted)."""
    config = make_config([simple_entry("nightly", deleting_feed)], index={"ttl": 0})
    first = await start_proxy(config)
    url = first.make_url("/simple/pandas/")
    name = whl("pandas", nightly(2))
    page = await json_page(http, url)
    status, body = await fetch(http, page.link(name))
    assert status == 200
    deleting_feed.remove_file("pandas", name)
    assert (await json_page(http, url)).files[name]["_nightproxy"]["retained"] is True
    await first.close()

    second = await start_proxy(config)
    after = await json_page(http, second.make_url("/simple/pandas/"))

    assert after.files[name]["_nightproxy"]["retained"] is True
    status, again = await fetch(http, after.link(name))
    assert (status, again) == (200, body)


async def test_deleted_uncached_file_disappears(
    deleting_feed: FakeSimpleIndex, ttl0_proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A file the proxy never downloaded leaves the page with its upstream listing."""
    url = ttl0_proxy.make_url("/simple/pandas/")
    name = whl("pandas", nightly(2))
    assert name in (await json_page(http, url)).files

    deleting_feed.remove_file("pandas", name)
    after = await json_page(http, url)

    assert name not in after.files
    assert nightly(2) not in versions(after)
    assert "X-Nightproxy-Retained" not in after.headers


async def test_anaconda_deleted_version_is_retained(
    conda: Conda,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The channel's cleanup (``anaconda remove``) of a cached version keeps it served."""
    kept = build_wheel(tmp_path / "w", "scipy", nightly(1))
    doomed = build_wheel(tmp_path / "w", "scipy", nightly(2))
    conda.channel.add_file("scipy", kept)
    conda.channel.add_file("scipy", doomed)
    proxy = await start_proxy(make_config([conda.entry()], index={"ttl": 0}))
    url = proxy.make_url("/simple/scipy/")
    page = await json_page(http, url)
    assert (await fetch(http, page.link(doomed.name)))[0] == 200

    conda.channel.delete_version("scipy", nightly(2))
    after = await json_page(http, url)

    assert after.files[doomed.name]["_nightproxy"]["retained"] is True
    assert after.headers["X-Nightproxy-Retained"] == "1"
    status, body = await fetch(http, after.link(doomed.name))
    assert (status, body) == (200, doomed.read_bytes())


# -- dev_only -----------------------------------------------------------------------------------


@pytest.fixture
async def nightly_and_stable(start_fake: StartFake, wheelhouse: Path) -> tuple[Any, Any]:
    """'nightly' carries release wheels next to its dev ones; 'stable' carries releases."""
    night = FakeSimpleIndex()
    for version in ("2.0", "2.1rc1", nightly(1)):
        night.add_file("xarray", build_wheel(wheelhouse / "night", "xarray", version))
    stable = FakeSimpleIndex()
    for version in ("1.9", "2.0"):
        stable.add_file("xarray", build_wheel(wheelhouse / "stable", "xarray", version))
    return await start_fake(night), await start_fake(stable)


async def test_dev_only_hides_releases_of_that_upstream_only(
    nightly_and_stable: tuple[FakeSimpleIndex, FakeSimpleIndex],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Releases of the ``dev_only`` feed are hidden, its pre-releases shown, and the other
    feed's releases are untouched."""
    night, stable = nightly_and_stable
    proxy = await start_proxy(
        make_config([simple_entry("stable", stable), simple_entry("nightly", night, dev_only=True)])
    )
    page = await json_page(http, proxy.make_url("/simple/xarray/"))
    assert versions(page) == {"1.9", "2.0", "2.1rc1", nightly(1)}
    assert page.files[whl("xarray", "2.0")]["_nightproxy"]["upstream"] == "stable"
    assert page.files[whl("xarray", "2.1rc1")]["_nightproxy"]["upstream"] == "nightly"


async def test_dev_only_feed_first_does_not_shadow_the_real_release(
    nightly_and_stable: tuple[FakeSimpleIndex, FakeSimpleIndex],
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With the nightly feed listed first, its 2.0 release wheel must not hide stable's 2.0."""
    night, stable = nightly_and_stable
    proxy = await start_proxy(
        make_config([simple_entry("nightly", night, dev_only=True), simple_entry("stable", stable)])
    )
    page = await json_page(http, proxy.make_url("/simple/xarray/"))
    assert versions(page) == {"1.9", "2.0", "2.1rc1", nightly(1)}
    assert page.files[whl("xarray", "2.0")]["_nightproxy"]["upstream"] == "stable"


# -- PEP 700 / 658 / 714 facts on pages ---------------------------------------------------------


@pytest.fixture
async def timed_feed(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    """Two wheels and an sdist with known upload times; one wheel without upstream metadata."""
    fake = FakeSimpleIndex()
    fake.add_file(
        "attrs",
        build_wheel(wheelhouse, "attrs", "25.1.0.dev0", requires_dist=["six"]),
        upload_time=datetime(2026, 11, 20, 1, 2, 3, 456000, tzinfo=UTC),
    )
    fake.add_file(
        "attrs",
        build_wheel(wheelhouse, "attrs", "25.0.0"),
        upload_time=datetime(2026, 10, 1, 12, 0, tzinfo=UTC),
        with_metadata=False,
    )
    return await start_fake(fake)


@pytest.fixture
async def timed_proxy(
    timed_feed: FakeSimpleIndex, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    return await start_proxy(make_config([simple_entry("pypi", timed_feed)]))


async def test_json_carries_versions_size_upload_time_and_build_time(
    timed_feed: FakeSimpleIndex,
    timed_proxy: TestServer,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> None:
    """PEP 700 fields come from the upstream; ``_nightproxy`` says which build time was used."""
    page = await json_page(http, timed_proxy.make_url("/simple/attrs/"))
    assert page.doc["versions"] == ["25.0.0", "25.1.0.dev0"]
    assert page.doc["meta"]["api-version"] == "1.1"
    upstream = timed_feed.projects["attrs"].files
    for name, entry in page.files.items():
        assert entry["size"] == (wheelhouse / name).stat().st_size
        assert entry["upload-time"] == iso(upstream[name].upload_time)
        assert entry["_nightproxy"]["build-time-source"] == "upstream"
        assert entry["_nightproxy"]["build-time"] == entry["upload-time"]


async def test_html_carries_upload_time_and_both_metadata_attributes(
    timed_feed: FakeSimpleIndex, timed_proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Every wheel link has ``data-upload-time``, ``data-dist-info-metadata`` and
    ``data-core-metadata`` (``true`` when the upstream has none: the proxy extracts it)."""
    anchors = await html_anchors(http, timed_proxy.make_url("/simple/attrs/"))
    upstream = timed_feed.projects["attrs"].files
    assert set(anchors) == set(upstream)
    for name, attrs in anchors.items():
        assert attrs["data-upload-time"] == iso(upstream[name].upload_time)
        assert attrs["data-core-metadata"] == attrs["data-dist-info-metadata"]
        expected = upstream[name].metadata_sha256
        assert attrs["data-core-metadata"] == (f"sha256={expected}" if expected else "true")


async def test_json_wheels_advertise_core_metadata(
    timed_proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """JSON entries of wheels carry ``core-metadata`` (PEP 714), mirrored under the public
    index's ``data-dist-info-metadata``, and never ``dist-info-metadata``, which pip 22.3 to
    23.1 crash on."""
    page = await json_page(http, timed_proxy.make_url("/simple/attrs/"))
    for entry in page.files.values():
        assert entry["core-metadata"] not in (None, False)
        assert entry["data-dist-info-metadata"] == entry["core-metadata"]
        assert "dist-info-metadata" not in entry


async def test_metadata_is_passed_through_from_the_upstream(
    timed_feed: FakeSimpleIndex,
    timed_proxy: TestServer,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> None:
    """When the upstream publishes PEP 658 metadata the proxy fetches that, never the wheel."""
    name = whl("attrs", "25.1.0.dev0")
    page = await json_page(http, timed_proxy.make_url("/simple/attrs/"))
    status, body = await fetch(http, URL(str(page.link(name)) + ".metadata"))
    assert status == 200
    assert body == wheel_metadata(wheelhouse / name)
    assert b"Requires-Dist: six" in body
    assert timed_feed.count("GET", f"/files/{quote(name)}.metadata") == 1
    assert timed_feed.count("GET", f"/files/{quote(name)}") == 1  # only the .metadata


async def test_metadata_is_extracted_when_the_upstream_has_none(
    timed_feed: FakeSimpleIndex,
    timed_proxy: TestServer,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> None:
    """Without upstream metadata the proxy reads METADATA from the wheel it fetched, and the
    page then advertises the metadata's sha256."""
    name = whl("attrs", "25.0.0")
    url = timed_proxy.make_url("/simple/attrs/")
    page = await json_page(http, url)
    status, body = await fetch(http, URL(str(page.link(name)) + ".metadata"))
    assert status == 200
    assert body == wheel_metadata(wheelhouse / name)
    assert timed_feed.count("GET", f"/files/{quote(name)}.metadata") == 0

    after = await json_page(http, url)
    assert after.files[name]["core-metadata"] == {"sha256": hashlib.sha256(body).hexdigest()}


async def test_metadata_extracted_from_an_anaconda_wheel(
    conda: Conda,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A channel without PEP 658 still gets ``.metadata`` served (from the wheel)."""
    wheel = build_wheel(tmp_path / "w", "numpy", "2.3.0.dev0", requires_dist=["packaging"])
    conda.channel.add_file("numpy", wheel)
    proxy = await start_proxy(make_config([conda.entry()]))
    page = await json_page(http, proxy.make_url("/simple/numpy/"))
    assert page.files[wheel.name]["core-metadata"] is True
    status, body = await fetch(http, URL(str(page.link(wheel.name)) + ".metadata"))
    assert (status, body) == (200, wheel_metadata(wheel))


# -- as_of --------------------------------------------------------------------------------------


@pytest.fixture
async def as_of_proxy(
    start_fake: StartFake, wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy
) -> TestServer:
    fake = FakeSimpleIndex()
    for days in (1, 5, 10):
        # Uploaded, as nightlies are, some hours into the day their version names.
        uploaded = today() - timedelta(days=days) + timedelta(hours=2)
        fake.add_file("dask", build_wheel(wheelhouse, "dask", nightly(days)), upload_time=uploaded)
    fake.add_file("dask", build_wheel(wheelhouse, "dask", "2026.1.0"), upload_time=today())
    await start_fake(fake)
    return await start_proxy(make_config([simple_entry("nightly", fake)]))


def three_days_ago() -> str:
    return (today() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_as_of_query_hides_files_built_after_it(
    as_of_proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """``?as_of=`` shows the index as it was: later nightlies and a later release are gone."""
    url = as_of_proxy.make_url("/simple/dask/").with_query(as_of=three_days_ago())
    page = await json_page(http, url)
    assert versions(page) == {nightly(5), nightly(10)}
    full = await json_page(http, as_of_proxy.make_url("/simple/dask/"))
    assert versions(full) == {nightly(1), nightly(5), nightly(10), "2026.1.0"}


async def test_as_of_path_form_hides_later_files_and_its_links_download(
    as_of_proxy: TestServer, http: aiohttp.ClientSession, wheelhouse: Path
) -> None:
    """``/as-of/<ts>/simple/<project>/`` works as an index URL, links included."""
    url = as_of_proxy.make_url(f"/as-of/{three_days_ago()}/simple/dask/")
    page = await json_page(http, url)
    assert versions(page) == {nightly(5), nightly(10)}
    anchors = await html_anchors(http, url)
    assert set(anchors) == {whl("dask", nightly(5)), whl("dask", nightly(10))}
    name = whl("dask", nightly(5))
    link = page.link(name)
    assert link.path.startswith("/as-of/")
    status, body = await fetch(http, link)
    assert (status, body) == (200, (wheelhouse / name).read_bytes())


async def test_malformed_as_of_is_a_client_error(
    as_of_proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """An unparsable timestamp is a 400, not an unfiltered page."""
    url = as_of_proxy.make_url("/simple/dask/").with_query(as_of="last-tuesday")
    status, _body = await fetch(http, url)
    assert status == 400
