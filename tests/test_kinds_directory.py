"""``kind: directory``: a local folder of wheels (flat or one folder per project)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.server import keys
from tests.conftest import JSON_TYPE, MakeConfig, StartProxy
from tests.wheels import build_sdist, build_wheel, sha256_file, wheel_metadata

MTIME = datetime(2026, 11, 20, 5, 6, 7, tzinfo=UTC)


def entry(**extra: Any) -> dict[str, Any]:
    # Relative to the config file (tmp_path/nightproxy.yaml), like the shipped config.
    return {"name": "local", "kind": "directory", "path": "./wheelhouse", "ttl": "0s", **extra}


def set_mtime(path: Path, when: datetime = MTIME) -> Path:
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))
    return path


async def get_json(http: aiohttp.ClientSession, proxy: TestServer, path: str) -> tuple[int, Any]:
    async with http.get(proxy.make_url(path), headers={"Accept": JSON_TYPE}) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if resp.status == 200 else text


async def files_of(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[dict[str, dict[str, Any]], URL]:
    status, doc = await get_json(http, proxy, f"/simple/{project}/")
    assert status == 200, doc
    return {f["filename"]: f for f in doc["files"]}, proxy.make_url(f"/simple/{project}/")


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


async def test_flat_wheel_has_sha256_and_mtime_upload_time(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A wheel directly in the folder is listed with its sha256 and its mtime as upload-time."""
    wheel = set_mtime(build_wheel(wheelhouse, "demo", "1.1.dev20261120"))
    proxy = await start_proxy(make_config([entry()]))

    files, _ = await files_of(http, proxy, "demo")

    published = files[wheel.name]
    assert published["hashes"] == {"sha256": sha256_file(wheel)}
    upload = datetime.fromisoformat(published["upload-time"].replace("Z", "+00:00"))
    assert upload == MTIME


async def test_flat_wheel_downloads(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A wheel directly in the folder downloads byte for byte."""
    wheel = build_wheel(wheelhouse, "demo", "1.1.dev20261120")
    proxy = await start_proxy(make_config([entry()]))
    files, page_url = await files_of(http, proxy, "demo")

    status, body = await fetch(http, page_url.join(URL(files[wheel.name]["url"])))

    assert status == 200
    assert body == wheel.read_bytes()


async def test_per_project_folder_is_served(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """Wheels and sdists in ``<dir>/<project>/`` are listed with sha256 and download."""
    wheel = build_wheel(wheelhouse / "other-proj", "other-proj", "0.3.dev2")
    sdist = build_sdist(wheelhouse / "other-proj", "other-proj", "0.3.dev2")
    proxy = await start_proxy(make_config([entry()]))

    files, page_url = await files_of(http, proxy, "other-proj")
    status, body = await fetch(http, page_url.join(URL(files[wheel.name]["url"])))

    assert set(files) == {wheel.name, sdist.name}
    assert files[sdist.name]["hashes"]["sha256"] == sha256_file(sdist)
    assert status == 200
    assert body == wheel.read_bytes()


async def test_new_wheel_appears_on_next_page_fetch(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """Dropping a wheel into the folder (flat or into an existing project folder) shows it on
    the next page fetch, without a restart."""
    first = build_wheel(wheelhouse, "demo", "1.1.dev1")
    (wheelhouse / "demo").mkdir()
    proxy = await start_proxy(make_config([entry()]))
    files, _ = await files_of(http, proxy, "demo")
    assert set(files) == {first.name}

    flat = build_wheel(wheelhouse, "demo", "1.1.dev2")
    nested = build_wheel(wheelhouse / "demo", "demo", "1.1.dev3")
    files, page_url = await files_of(http, proxy, "demo")
    status, body = await fetch(http, page_url.join(URL(files[nested.name]["url"])))

    assert set(files) == {first.name, flat.name, nested.name}
    assert files[nested.name]["hashes"]["sha256"] == sha256_file(nested)
    assert (status, body) == (200, nested.read_bytes())


async def test_new_project_appears_in_project_list(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A wheel of a new project dropped in later is served on that project's page."""
    build_wheel(wheelhouse, "demo", "1.1.dev1")
    proxy = await start_proxy(make_config([entry()]))
    status, _ = await get_json(http, proxy, "/simple/late-proj/")
    assert status == 404

    late = build_wheel(wheelhouse, "late-proj", "0.1.dev1")
    files, _ = await files_of(http, proxy, "late-proj")

    assert set(files) == {late.name}


async def test_unsafe_and_non_distribution_files_are_ignored(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """Files that are not valid distribution filenames, look like path tricks, are hidden,
    or sit too deep, are neither projects nor files."""
    good = build_wheel(wheelhouse, "demo", "1.1.dev1")
    payload = good.read_bytes()
    for name in (
        "..evil-1.0-py3-none-any.whl",
        ".hidden-1.0-py3-none-any.whl",
        "..\\evil-1.0-py3-none-any.whl",
        "evil.whl",
        "demo-1.2-py3-none-any.whl.partial",
        "notes.txt",
        "index.html",
    ):
        (wheelhouse / name).write_bytes(payload)
    deep = wheelhouse / "demo" / "nested"
    deep.mkdir(parents=True)
    (deep / "demo-9.0-py3-none-any.whl").write_bytes(payload)
    proxy = await start_proxy(make_config([entry()]))

    status, index = await get_json(http, proxy, "/simple/")
    files, _ = await files_of(http, proxy, "demo")

    assert status == 200
    assert {p["name"] for p in index["projects"]} == {"demo"}
    assert set(files) == {good.name}
    for project in ("evil", "hidden", "notes"):
        assert (await get_json(http, proxy, f"/simple/{project}/"))[0] == 404


async def test_metadata_is_read_in_place_without_copying_the_wheel(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """``.metadata`` of a wheel in the folder is read from the wheel where it lies: the
    right bytes, and the wheel is not copied into the cache for it."""
    wheel = build_wheel(
        wheelhouse, "demo", "1.1.dev20261120", requires_dist=["numpy"], payload_size=1_000_000
    )
    proxy = await start_proxy(make_config([entry()]))
    files, page_url = await files_of(http, proxy, "demo")

    status, body = await fetch(http, page_url.join(URL(files[wheel.name]["url"] + ".metadata")))

    assert (status, body) == (200, wheel_metadata(wheel))
    assert proxy.app[keys.STORE].file_count == 0


async def test_metadata_never_comes_from_a_wheel_rebuilt_since_it_was_listed(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A nightly rebuilt in place (same name, new bytes, the folder's mtime unchanged) after
    the page listed it: its ``.metadata`` URL, which names the listed wheel's hash, never
    serves the new wheel's metadata."""
    wheel = build_wheel(wheelhouse, "demo", "1.1.dev20261120", payload_size=10_000)
    folder_times = (wheelhouse.stat().st_atime, wheelhouse.stat().st_mtime)
    proxy = await start_proxy(make_config([entry(ttl="1h")]))
    files, page_url = await files_of(http, proxy, "demo")
    rebuilt = build_wheel(
        wheelhouse / "rebuild", "demo", "1.1.dev20261120", requires_dist=["evil-dep"]
    )
    rebuilt.replace(wheel)
    os.utime(wheelhouse, folder_times)

    status, body = await fetch(http, page_url.join(URL(files[wheel.name]["url"] + ".metadata")))

    assert b"evil-dep" not in body
    assert status == 502


def same_size_rebuild(wheel: Path, dest: Path) -> Path:
    """A rebuild of ``demo 1.1.dev20261120`` depending on an ``evil-*`` project, of exactly
    ``wheel``'s size (deflate output varies by a byte or two, so a few names are tried)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for first in letters:
        for second in letters:
            rebuilt = build_wheel(
                dest, "demo", "1.1.dev20261120", requires_dist=[f"evil-{first}{second}p"]
            )
            if rebuilt.stat().st_size == wheel.stat().st_size:
                return rebuilt
    raise AssertionError("no same-size rebuild found")


async def test_metadata_never_comes_from_a_same_size_rebuild_renamed_in(
    wheelhouse: Path, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """A rebuild of the same size renamed over the listed wheel (the folder rescanned): the
    old ``.metadata`` URL, which names the listed wheel's hash, never serves the rebuild's
    metadata."""
    wheel = build_wheel(wheelhouse, "demo", "1.1.dev20261120", requires_dist=["good-dep"])
    proxy = await start_proxy(make_config([entry(ttl="1h")]))
    files, page_url = await files_of(http, proxy, "demo")
    rebuilt = same_size_rebuild(wheel, wheelhouse.parent / "rebuild")
    rebuilt.replace(wheel)

    status, body = await fetch(http, page_url.join(URL(files[wheel.name]["url"] + ".metadata")))

    assert b"Requires-Dist: evil-" not in body
    assert status == 502
