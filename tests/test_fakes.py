"""Quick checks that the fake upstreams behave like the feeds they imitate."""

from __future__ import annotations

import asyncio
import base64
import email.parser
import hashlib
import json
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from fakes import (
        FakeAnacondaAPI,
        FakeAnacondaChannel,
        FakeObjectStore,
        FakeSimpleIndex,
    )
    from wheels import build_sdist, build_wheel, sha256_file, wheel_metadata
except ModuleNotFoundError:  # pragma: no cover - if tests/ becomes a package
    from tests.fakes import (
        FakeAnacondaAPI,
        FakeAnacondaChannel,
        FakeObjectStore,
        FakeSimpleIndex,
    )
    from tests.wheels import build_sdist, build_wheel, sha256_file, wheel_metadata

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


# -- wheels -------------------------------------------------------------------


def test_build_wheel_is_valid(tmp_path: Path) -> None:
    path = build_wheel(
        tmp_path,
        "My.Pkg_name",
        "1.2.0.dev20250102+cu126",
        requires_python=">=3.9",
        requires_dist=["numpy>=1.20"],
        payload_size=3 * 1024 * 1024 + 17,
        seed=7,
    )
    assert path.name == "my_pkg_name-1.2.0.dev20250102+cu126-py3-none-any.whl"
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert "my_pkg_name/__init__.py" in names
        assert zf.getinfo("my_pkg_name/payload.bin").file_size == 3 * 1024 * 1024 + 17
        record = zf.read("my_pkg_name-1.2.0.dev20250102+cu126.dist-info/RECORD").decode()
        for line in record.splitlines():
            arc, digest, size = line.rsplit(",", 2)
            if digest:
                data = zf.read(arc)
                assert int(size) == len(data)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert digest == "sha256=" + expected.decode()
    msg = email.parser.BytesParser().parsebytes(wheel_metadata(path))
    assert msg["Name"] == "My.Pkg_name"
    assert msg["Version"] == "1.2.0.dev20250102+cu126"
    assert msg["Requires-Python"] == ">=3.9"
    assert msg.get_all("Requires-Dist") == ["numpy>=1.20"]
    # deterministic
    again = build_wheel(
        tmp_path / "b",
        "My.Pkg_name",
        "1.2.0.dev20250102+cu126",
        requires_python=">=3.9",
        requires_dist=["numpy>=1.20"],
        payload_size=3 * 1024 * 1024 + 17,
        seed=7,
    )
    assert sha256_file(again) == sha256_file(path)
    sdist = build_sdist(tmp_path, "My.Pkg_name", "1.0")
    assert sdist.name == "my_pkg_name-1.0.tar.gz"
    assert b"Version: 1.0" in wheel_metadata(sdist)


# -- simple index -------------------------------------------------------------


@pytest.fixture
async def simple(aiohttp_server: Any, tmp_path: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.bind(await aiohttp_server(fake.make_app()))
    fake.add_file("Foo_Bar", build_wheel(tmp_path, "foo-bar", "1.0"), requires_python=">=3.8")
    fake.add_file("foo-bar", build_sdist(tmp_path, "foo-bar", "1.0"), with_metadata=False)
    return fake


async def test_simple_negotiation(simple: FakeSimpleIndex, session: aiohttp.ClientSession) -> None:
    url = simple.url("/simple/foo-bar/")
    for accept, expected in [
        (None, "text/html"),
        (PIP_ACCEPT, "application/vnd.pypi.simple.v1+json"),
        (UV_ACCEPT, "application/vnd.pypi.simple.v1+json"),
        ("application/vnd.pypi.simple.v1+html;q=0.5,text/html;q=0.9", "text/html"),
        ("application/vnd.pypi.simple.v1+json;q=0, text/html", "text/html"),
    ]:
        headers = {} if accept is None else {"Accept": accept}
        async with session.get(url, headers=headers) as r:
            assert r.status == 200
            assert r.content_type == expected, accept
            assert r.headers["Vary"] == "Accept"
    async with session.get(url + "?format=text/html", headers={"Accept": PIP_ACCEPT}) as r:
        assert r.content_type == "text/html"
    async with session.get(url, headers={"Accept": "application/xml"}) as r:
        assert r.status == 406

    async with session.get(url, headers={"Accept": PIP_ACCEPT}) as r:
        doc = json.loads(await r.read())
        etag = r.headers["ETag"]
    assert doc["meta"]["api-version"] == "1.1"
    whl = next(f for f in doc["files"] if f["filename"].endswith(".whl"))
    assert whl["upload-time"].endswith("Z")
    assert whl["requires-python"] == ">=3.8"
    assert whl["core-metadata"] == whl["data-dist-info-metadata"]
    assert isinstance(whl["size"], int)
    sdist = next(f for f in doc["files"] if f["filename"].endswith(".tar.gz"))
    assert sdist["core-metadata"] is False
    async with session.get(url, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag}) as r:
        assert r.status == 304
    async with session.get(whl["url"]) as r:
        assert hashlib.sha256(await r.read()).hexdigest() == whl["hashes"]["sha256"]
    async with session.get(whl["url"] + ".metadata") as r:
        assert hashlib.sha256(await r.read()).hexdigest() == whl["core-metadata"]["sha256"]

    async with session.get(url) as r:
        page = await r.text()
    assert 'data-requires-python="&gt;=3.8"' in page
    assert "data-core-metadata=" in page
    assert "data-dist-info-metadata=" in page


async def test_simple_redirects_and_switches(
    simple: FakeSimpleIndex, session: aiohttp.ClientSession
) -> None:
    for path in ("/simple/Foo_Bar/", "/simple/foo-bar"):
        async with session.get(simple.url(path), allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == "/simple/foo-bar/"
    async with session.get(simple.url("/simple/"), headers={"Accept": UV_ACCEPT}) as r:
        assert [p["name"] for p in (await r.json(content_type=None))["projects"]] == ["Foo_Bar"]
    simple.down = True
    async with session.get(simple.url("/simple/foo-bar/")) as r:
        assert r.status == 503
    simple.down = False
    simple.garbage = True
    async with session.get(simple.url("/simple/foo-bar/"), headers={"Accept": UV_ACCEPT}) as r:
        assert r.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.read())
    simple.garbage = False

    whl = "foo_bar-1.0-py3-none-any.whl"
    simple.truncate.add(whl)
    async with session.get(simple.file_url(whl)) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    simple.truncate.clear()

    simple.slow_file.add(whl)
    simple.slow.hold = True
    simple.slow.chunk_size = 100
    async with session.get(simple.file_url(whl)) as r:
        first = await r.content.readexactly(simple.slow.chunk_size)
        assert len(first) == simple.slow.chunk_size
        reader = asyncio.ensure_future(r.read())
        await asyncio.sleep(0.05)
        assert not reader.done()
        simple.slow.release.set()
        rest = await reader
    assert first + rest == simple.projects["foo-bar"].files[whl].path.read_bytes()
    assert simple.count("GET", "/files/") >= 2


# -- anaconda -----------------------------------------------------------------


async def test_anaconda_redirect_chain(
    aiohttp_server: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    clock = [1_750_000_000.0]
    store = FakeObjectStore(now=lambda: clock[0])
    store.bind(await aiohttp_server(store.make_app()))
    chan = FakeAnacondaChannel("Scientific-Nightly", store)
    chan.bind(await aiohttp_server(chan.make_app()))
    api = FakeAnacondaAPI(chan)
    api.bind(await aiohttp_server(api.make_app()))

    w1 = build_wheel(tmp_path / "a", "numpy", "2.2.0.dev0+g1234", tag="cp312-cp312-linux_x86_64")
    chan.add_file("numpy", w1)
    dev = build_wheel(tmp_path / "d", "numpy", "2.3.0.dev0")
    chan.add_file("numpy", dev, label="dev")

    async with session.get(
        chan.url("/scientific-nightly/simple/numpy/"), headers={"Accept": UV_ACCEPT}
    ) as r:
        assert r.content_type == "text/html"
        page = await r.text()
    href = f"/scientific-nightly/simple/numpy/2.2.0.dev0%2Bg1234/{w1.name.replace('+', '%2B')}"
    assert f'href="{href}"' in page
    assert "https://example.invalid/" in page
    assert "#sha256" not in page
    assert "2.3.0.dev0" not in page
    async with session.get(chan.url("/Scientific-Nightly/label/dev/simple/numpy/")) as r:
        assert "2.3.0.dev0" in await r.text()

    async with session.head(chan.url(href), allow_redirects=False) as r:
        assert r.status == 302
        assert "Accept-Ranges" not in r.headers
    async with session.get(chan.url(href), allow_redirects=False) as r:
        assert r.status == 302
        location = r.headers["Location"]
    assert location.startswith(store.base_url)
    assert "X-Amz-Expires=600" in location
    async with session.get(location) as r:
        assert r.status == 200
        assert "Accept-Ranges" not in r.headers
        assert await r.read() == w1.read_bytes()

    clock[0] += 601
    async with session.get(location) as r:
        assert r.status == 403
    chan.missing_object.add(w1.name)
    async with session.get(chan.url(href)) as r:
        assert r.status == 404
        assert "<Code>NoSuchKey</Code>" in await r.text()
    chan.missing_object.clear()

    w2 = build_wheel(
        tmp_path / "b", "numpy", "2.2.0.dev0+g1234", tag="cp312-cp312-linux_x86_64", payload_size=10
    )
    clock[0] += 3600
    chan.overwrite("numpy", w1.name, w2)
    async with session.get(chan.url(href)) as r:
        assert await r.read() == w2.read_bytes()

    async with session.get(api.url("/release/scientific-nightly/numpy/2.2.0.dev0+g1234")) as r:
        rel = await r.json()
    (dist,) = rel["distributions"]
    assert dist["basename"].endswith(w1.name)
    assert dist["upload_time"].endswith("+00:00")
    async with session.get(api.url("/package/scientific-nightly/numpy")) as r:
        pkg = await r.json()
    # overwrite re-creates the release, so it moves to the end (API order = upload order)
    assert [x["version"] for x in pkg["releases"]] == ["2.3.0.dev0", "2.2.0.dev0+g1234"]

    chan.project_404.add("numpy")
    async with session.get(chan.url("/scientific-nightly/simple/numpy/")) as r:
        assert r.status == 404
    chan.project_404.clear()
    chan.delete_version("numpy", "2.2.0.dev0+g1234")
    async with session.get(chan.url(href)) as r:
        assert r.status == 404
    api.fail = True
    async with session.get(api.url("/package/scientific-nightly/numpy")) as r:
        assert r.status == 500
