"""``kind: simple`` over a static PEP 503 tree served from a bucket/CDN (pytorch-nightly style).

The tree host lists pages; files are linked absolutely to a second (CDN) host, root-relatively
or relatively, without ``#sha256``; pages carry ``data-upload-time`` and a comment after
``</html>``; files answer ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes import FakeCdnHost, FakeStaticTree
from tests.fakes.static_tree import LinkStyle
from tests.wheels import build_wheel, sha256_file, wheel_metadata


class Tree:
    def __init__(self, tree: FakeStaticTree, cdn: FakeCdnHost) -> None:
        self.tree = tree
        self.cdn = cdn

    def entry(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "torch-nightly",
            "kind": "simple",
            "url": self.tree.url("/whl/nightly/"),
            **extra,
        }


@pytest.fixture
async def static(start_fake: StartFake) -> Tree:
    cdn = await start_fake(FakeCdnHost())
    tree = await start_fake(FakeStaticTree(cdn, timestamp=1_795_000_000))
    return Tree(tree, cdn)


async def files_of(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[dict[str, dict[str, Any]], URL]:
    url = proxy.make_url(f"/simple/{project}/")
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    return {f["filename"]: f for f in json.loads(text)["files"]}, url


async def fetch(http: aiohttp.ClientSession, url: URL) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def file_gets(fake: Any, filename: str) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path.endswith(filename))


@pytest.mark.parametrize("link", ["absolute", "root", "relative"])
async def test_link_style_downloads(
    link: LinkStyle,
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Absolute links to the CDN host, root-relative and relative links all resolve against
    the right host and download byte for byte."""
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120")
    static.tree.add_file("torch", wheel, link=link)
    proxy = await start_proxy(make_config([static.entry()]))

    files, page_url = await files_of(http, proxy, "torch")
    status, body, _ = await fetch(http, page_url.join(URL(files[wheel.name]["url"])))

    assert status == 200
    assert body == wheel.read_bytes()
    served_by = static.cdn if link == "absolute" else static.tree
    other = static.tree if link == "absolute" else static.cdn
    assert file_gets(served_by, wheel.name) == 1
    assert file_gets(other, wheel.name) == 0


async def test_no_sha256_published_before_download(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The tree gives no hash, and the proxy publishes none it has not verified."""
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120")
    static.tree.add_file("torch", wheel)
    proxy = await start_proxy(make_config([static.entry()]))

    files, _ = await files_of(http, proxy, "torch")

    assert "sha256" not in files[wheel.name].get("hashes", {})


async def test_sha256_published_after_download_is_the_real_one(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Once the proxy has the file, the page publishes the sha256 it computed, which is the
    file's real sha256."""
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120")
    static.tree.add_file("torch", wheel, link="absolute")
    proxy = await start_proxy(make_config([static.entry()]))
    files, page_url = await files_of(http, proxy, "torch")
    status, _body, _ = await fetch(http, page_url.join(URL(files[wheel.name]["url"])))
    assert status == 200

    files, _ = await files_of(http, proxy, "torch")

    assert files[wheel.name]["hashes"]["sha256"] == sha256_file(wheel)


async def test_core_metadata_hash_where_tree_has_it(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A file the tree publishes a ``.metadata`` for is advertised with the tree's metadata
    hash, and the proxy's ``.metadata`` URL serves those bytes."""
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120", requires_python=">=3.10")
    entry = static.tree.add_file("torch", wheel, with_metadata=True)
    proxy = await start_proxy(make_config([static.entry()]))

    files, page_url = await files_of(http, proxy, "torch")
    published = files[wheel.name]
    status, body, _ = await fetch(http, page_url.join(URL(published["url"] + ".metadata")))

    assert published["core-metadata"] == {"sha256": entry.metadata_sha256}
    assert status == 200
    assert body == wheel_metadata(wheel)
    assert hashlib.sha256(body).hexdigest() == entry.metadata_sha256


async def test_data_upload_time_passes_through(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The tree's non-standard ``data-upload-time`` becomes the JSON ``upload-time``."""
    when = datetime(2026, 11, 20, 7, 30, 5, tzinfo=UTC)
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120")
    static.tree.add_file("torch", wheel, upload_time=when)
    proxy = await start_proxy(make_config([static.entry()]))

    files, _ = await files_of(http, proxy, "torch")

    published = files[wheel.name]["upload-time"]
    assert datetime.fromisoformat(published.replace("Z", "+00:00")) == when


async def test_comment_after_html_end_does_not_break_parsing(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Pages ending in ``</html>`` then ``<!--TIMESTAMP n-->`` are parsed completely: every
    file is listed and the non-distribution 'Documentation' anchor is not."""
    wheels = [
        build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261119"),
        build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120", tag="cp312-cp312-linux_x86_64"),
    ]
    for wheel in wheels:
        static.tree.add_file("torch", wheel)
    proxy = await start_proxy(make_config([static.entry()]))
    async with http.get(static.tree.url("/whl/nightly/torch/")) as resp:
        assert (await resp.text()).rstrip().endswith("<!--TIMESTAMP 1795000000-->")

    files, _ = await files_of(http, proxy, "torch")

    assert set(files) == {w.name for w in wheels}


async def test_project_list_comes_from_the_tree_root(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The tree's root page (also with a trailing comment) lists its projects in /simple/."""
    static.tree.add_file("torch", build_wheel(tmp_path / "w", "torch", "2.10.0.dev1"))
    static.tree.add_file("torchvision", build_wheel(tmp_path / "w", "torchvision", "0.25.0.dev1"))
    proxy = await start_proxy(make_config([static.entry()]))

    async with http.get(proxy.make_url("/simple/"), headers={"Accept": JSON_TYPE}) as resp:
        assert resp.status == 200
        names = {p["name"] for p in (await resp.json(content_type=None))["projects"]}

    assert names == {"torch", "torchvision"}


async def test_no_store_files_are_cached_anyway(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A file answered with ``Cache-Control: no-store`` is still cached: the second download
    is a cache hit and makes no upstream request."""
    wheel = build_wheel(tmp_path / "w", "torch", "2.10.0.dev20261120")
    static.tree.add_file("torch", wheel, link="absolute")
    proxy = await start_proxy(make_config([static.entry()]))
    files, page_url = await files_of(http, proxy, "torch")
    url = page_url.join(URL(files[wheel.name]["url"]))
    first = await fetch(http, url)
    assert first[0] == 200
    assert file_gets(static.cdn, wheel.name) == 1

    status, body, headers = await fetch(http, url)

    assert status == 200
    assert body == wheel.read_bytes()
    assert headers.get("X-Nightproxy-Cache") == "hit"
    assert file_gets(static.cdn, wheel.name) == 1


async def test_missing_project_403_is_not_found(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The tree answers a project it lacks with 403 AccessDenied (bucket without public
    listing): the proxy treats it as 'no such project', a 404, not an upstream failure."""
    static.tree.add_file("torch", build_wheel(tmp_path / "w", "torch", "2.10.0.dev1"))
    proxy = await start_proxy(make_config([static.entry()]))
    async with http.get(static.tree.url("/whl/nightly/absent/")) as upstream:
        assert upstream.status == 403

    async with http.get(proxy.make_url("/simple/absent/"), headers={"Accept": JSON_TYPE}) as resp:
        assert resp.status == 404


async def test_missing_projects_do_not_trip_the_tree_out_of_other_pages(
    static: Tree,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    wheelhouse: Path,
) -> None:
    """Next to another upstream, projects the tree lacks are served without marking the tree
    missing, and after several of them the tree's own project is still served."""
    torch = build_wheel(tmp_path / "w", "torch", "2.10.0.dev1")
    static.tree.add_file("torch", torch)
    others = [f"other-{n}" for n in range(5)]
    for name in others:
        build_wheel(wheelhouse, name, "1.0.dev1")
    local = {"name": "local", "kind": "directory", "path": str(wheelhouse)}
    proxy = await start_proxy(make_config([static.entry(), local]))

    for name in others:
        async with http.get(proxy.make_url(f"/simple/{name}/"), headers={"Accept": JSON_TYPE}) as r:
            assert r.status == 200
            assert "X-Nightproxy-Missing" not in r.headers
    files, _ = await files_of(http, proxy, "torch")

    assert set(files) == {torch.name}
