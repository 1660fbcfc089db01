"""What a cache, an archive or a local folder cannot make the proxy serve.

- A project pinned to feeds is never answered from a cached file of another feed, also when
  the cache was filled before the pin (a cache kept across a config change).
- An imported archive cannot decide which bytes stand for a file whose feed publishes no
  hash, unless the operator says it may (``--trust-aliases``).
- A ``directory`` feed serves no file a link in it points to outside the folder.

Real proxies on loopback in front of real fake upstreams; cache commands as subprocesses.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from yarl import URL

from nightproxy.config import load_config
from tests.conftest import JSON_TYPE, StartFake, StartProxy, simple_url
from tests.fakes import FakeCdnHost, FakeSimpleIndex, FakeStaticTree
from tests.wheels import build_wheel, sha256_file


def write_config(path: Path, cache: Path, upstreams: str, extra: str = "") -> Path:
    path.write_text(
        f"cache:\n  dir: {cache}\nretention:\n  dev_max_age: off\nupstreams:\n{upstreams}{extra}"
    )
    return path


async def page_files(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[int, dict[str, dict[str, Any]], URL]:
    url = proxy.make_url(f"/simple/{project}/")
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        text = await resp.text()
        if resp.status != 200:
            return resp.status, {}, url
    return 200, {f["filename"]: f for f in json.loads(text)["files"]}, url


async def get(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("X-Nightproxy-Cache", "")


# -- pinned projects ---------------------------------------------------------------------------


async def test_pinned_project_is_not_served_from_a_cached_file_of_another_feed(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """numpy 9.0 was cached from feed 'evil'; once numpy is pinned to 'good', its old URL
    and its ``.metadata`` are 404, while good's numpy is still served."""
    good, evil = FakeSimpleIndex(), FakeSimpleIndex()
    good.add_file("numpy", build_wheel(tmp_path / "g", "numpy", "2.0.0"))
    evil.add_file("numpy", build_wheel(tmp_path / "e", "numpy", "9.0.0"))
    await start_fake(good)
    await start_fake(evil)
    cache = tmp_path / "cache"
    feeds = (
        f"  - {{name: good, kind: simple, url: '{simple_url(good)}'}}\n"
        f"  - {{name: evil, kind: simple, url: '{simple_url(evil)}'}}\n"
    )
    before = await start_proxy(load_config(write_config(tmp_path / "a.yaml", cache, feeds)))
    _status, files, page = await page_files(http, before, "numpy")
    evil_url = page.join(URL(files["numpy-9.0.0-py3-none-any.whl"]["url"]))
    assert (await get(http, evil_url))[0] == 200
    assert (await get(http, evil_url.with_name(evil_url.name + ".metadata")))[0] == 200
    await before.close()

    pin = "projects:\n  numpy: [good]\n"
    after = await start_proxy(load_config(write_config(tmp_path / "b.yaml", cache, feeds, pin)))
    old = after.make_url(evil_url.path)
    assert (await get(http, old))[0] == 404
    assert (await get(http, old.with_name(old.name + ".metadata")))[0] == 404
    _status, files, page = await page_files(http, after, "numpy")
    assert set(files) == {"numpy-2.0.0-py3-none-any.whl"}
    status, _body, _cache = await get(
        http, page.join(URL(files["numpy-2.0.0-py3-none-any.whl"]["url"]))
    )
    assert status == 200


# -- cache import ------------------------------------------------------------------------------


def forged_archive(path: Path, key: str, filename: str, evil: bytes) -> Path:
    """An archive whose one blob is ``evil`` and whose alias says it is the file ``key``."""
    sha = hashlib.sha256(evil).hexdigest()
    manifest = {
        "format": 1,
        "exported_at": time.time(),
        "blobs": [
            {
                "sha256": sha,
                "size": len(evil),
                "filename": filename,
                "upstream": "tree",
                "last_use": time.time(),
            }
        ],
        "aliases": {key: sha},
    }
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (f"blobs/{sha}", evil),
            ("nightproxy-cache.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


async def test_an_imported_alias_cannot_swap_the_bytes_of_an_unhashed_file(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An archive naming its own blob as a file of a feed without hashes is imported without
    that claim: the file is downloaded from the feed and verified, the archive's bytes are
    never served for it."""
    cdn = await start_fake(FakeCdnHost())
    tree = await start_fake(FakeStaticTree(cdn))
    real = build_wheel(tmp_path / "real", "torch", "2.10.0.dev20261120")
    evil = build_wheel(
        tmp_path / "evil", "torch", "2.10.0.dev20261120", payload_size=5000, seed=7
    ).read_bytes()
    assert hashlib.sha256(evil).hexdigest() != sha256_file(real)
    tree.add_file("torch", real)
    cache = tmp_path / "cache"
    config = write_config(
        tmp_path / "c.yaml",
        cache,
        f"  - {{name: tree, kind: simple, url: '{tree.url('/whl/nightly/')}'}}\n",
    )
    probe = await start_proxy(load_config(config))
    _status, files, page = await page_files(http, probe, "torch")
    url = page.join(URL(files[real.name]["url"]))
    key = url.parts[-2]
    await probe.close()

    archive = forged_archive(tmp_path / "evil.tar", key, real.name, evil)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nightproxy",
            "cache",
            "import",
            str(archive),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "left out 1 file aliases" in done.stdout

    proxy = await start_proxy(load_config(config))
    status, body, source = await get(http, proxy.make_url(url.path))
    assert status == 200
    assert source == "miss"
    assert body == real.read_bytes()


# -- directory feeds ---------------------------------------------------------------------------


async def test_a_link_out_of_a_directory_feed_is_not_served(
    start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A wheel-named link to a file outside the folder is skipped; a link to a wheel inside
    the folder is served like the wheel itself."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    (house / "leak-1.0-py3-none-any.whl").symlink_to(secret)
    wheel = build_wheel(house / "builds", "demo", "1.0")
    (house / "demo-1.0-py3-none-any.whl").symlink_to(wheel)
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "cache",
        f"  - {{name: local, kind: directory, path: '{house}', ttl: 0s}}\n",
    )
    proxy = await start_proxy(load_config(config))
    status, files, _page = await page_files(http, proxy, "leak")
    assert (status, files) == (404, {})
    status, files, page = await page_files(http, proxy, "demo")
    assert status == 200
    body = (await get(http, page.join(URL(files[wheel.name]["url"]))))[1]
    assert body == wheel.read_bytes()


async def test_a_pinned_projects_imported_file_is_still_a_hit_while_its_feed_is_down(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A cache moved with export and import (no ``--trust-aliases``) knows no file's feed; a
    pinned project's file in it is still served from the cache when the feed cannot be
    asked, as it is for any other project."""
    good, other = FakeSimpleIndex(), FakeSimpleIndex()
    wheel = build_wheel(tmp_path / "g", "demo", "1.0")
    good.add_file("demo", wheel)
    other.add_file("other", build_wheel(tmp_path / "o", "other", "1.0"))
    await start_fake(good)
    await start_fake(other)
    feeds = (
        f"  - {{name: good, kind: simple, url: '{simple_url(good)}'}}\n"
        f"  - {{name: other, kind: simple, url: '{simple_url(other)}'}}\n"
    )
    pin = "projects:\n  demo: [good]\n"
    first = write_config(tmp_path / "a.yaml", tmp_path / "cache-a", feeds, pin)
    proxy = await start_proxy(load_config(first))
    _status, files, page = await page_files(http, proxy, "demo")
    url = page.join(URL(files[wheel.name]["url"]))
    assert (await get(http, url))[0] == 200
    await proxy.close()
    moved = write_config(tmp_path / "b.yaml", tmp_path / "cache-b", feeds, pin)
    for args in (
        ("export", tmp_path / "c.tar", "--config", first),
        ("import", tmp_path / "c.tar", "--config", moved),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "nightproxy", "cache", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    good.down = True
    proxy = await start_proxy(load_config(moved))
    status, body, source = await get(http, proxy.make_url(url.path))
    assert (status, source) == (200, "hit")
    assert body == wheel.read_bytes()
