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
from yarl import URL

try:  # same module objects as conftest.py (tests.fakes), so isinstance checks agree
    from tests.fakes import (
        AnonymousDenyingS3Proxy,
        FakeAnacondaAPI,
        FakeAnacondaChannel,
        FakeAzureFeed,
        FakeBlobHost,
        FakeCdnHost,
        FakeObjectStore,
        FakeSimpleIndex,
        FakeStaticTree,
        MotoS3,
        shorten_version,
    )
    from tests.wheels import build_sdist, build_wheel, sha256_file, wheel_metadata
except ModuleNotFoundError:  # pragma: no cover - only tests/ on sys.path
    from fakes import (
        AnonymousDenyingS3Proxy,
        FakeAnacondaAPI,
        FakeAnacondaChannel,
        FakeAzureFeed,
        FakeBlobHost,
        FakeCdnHost,
        FakeObjectStore,
        FakeSimpleIndex,
        FakeStaticTree,
        MotoS3,
        shorten_version,
    )
    from wheels import build_sdist, build_wheel, sha256_file, wheel_metadata


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


# -- azure --------------------------------------------------------------------


def test_shorten_version() -> None:
    assert shorten_version("2.31.0") == "2.31"
    assert shorten_version("4.0.0") == "4"
    assert shorten_version("1.20.0.dev20240928001") == "1.20.dev20240928001"
    assert shorten_version("1.0.0rc1+local") == "1rc1+local"


async def test_azure_feed(
    aiohttp_server: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    blobs = FakeBlobHost()
    blobs.bind(await aiohttp_server(blobs.make_app()))
    feed = FakeAzureFeed("ignored", "s3cret-pat", blobs)
    feed.bind(await aiohttp_server(feed.make_app()))
    whl = build_wheel(tmp_path, "requests", "2.31.0", payload_size=5000)
    feed.add_file("requests", whl, requires_python=">=3.7")
    # Spelled out: aiohttp 3.11 has no encode_basic_auth, 3.14 deprecates BasicAuth.
    token = base64.b64encode(b"VssSessionToken:s3cret-pat").decode()
    auth = {"Authorization": f"Basic {token}"}

    async with session.get(feed.index_url + "requests/") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
    async with session.get(feed.index_url, headers=auth) as r:
        assert r.status == 200
        assert "<a " not in await r.text()
    async with session.get(
        feed.index_url + "requests/", headers={**auth, "Accept": UV_ACCEPT}
    ) as r:
        assert r.content_type == "text/html"
        page = await r.text()
    guid_path = f"/_packaging/{feed.feed_guid}/pypi/download/requests/2.31/{whl.name}"
    assert f'href="{feed.origin}/my-organization{guid_path}#sha256={sha256_file(whl)}"' in page
    assert 'data-requires-python="&gt;=3.7"' in page

    dl = feed.download_url("requests", whl.name)
    async with session.head(dl, headers=auth) as r:
        assert r.status == 405
    async with session.get(dl, headers=auth, allow_redirects=False) as r:
        assert r.status == 303
        sas = r.headers["Location"]
    assert sas.startswith(blobs.base_url)
    assert "sr=b" in sas
    assert "sp=r" in sas
    async with session.get(sas, headers=auth) as r:
        assert r.status == 401
    async with session.get(sas) as r:
        assert r.status == 200
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.content_type == "application/octet-stream"
        assert r.headers["ETag"].startswith('"0x')
        assert await r.read() == whl.read_bytes()
    async with session.get(sas, headers={"Range": "bytes=-22"}) as r:
        assert r.status == 206
        assert await r.read() == whl.read_bytes()[-22:]
    blobs.truncate_body = True
    async with session.get(sas) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()

    feed.rate_limit_next(2, retry_after=3)
    for _ in range(2):
        async with session.get(feed.index_url, headers=auth) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "3"
            assert r.headers["X-RateLimit-Remaining"] == "0"
    async with session.get(feed.index_url, headers=auth) as r:
        assert r.status == 200
    with pytest.raises(ValueError, match="409"):
        feed.add_file("requests", whl)


# -- static tree --------------------------------------------------------------


async def test_static_tree(
    aiohttp_server: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    cdn = FakeCdnHost()
    cdn.bind(await aiohttp_server(cdn.make_app()))
    tree = FakeStaticTree(cdn, timestamp=1735900000)
    tree.bind(await aiohttp_server(tree.make_app()))
    torch = build_wheel(
        tmp_path, "torch", "2.6.0.dev20250103+cu126", tag="cp310-cp310-linux_x86_64"
    )
    triton = build_wheel(tmp_path, "pytorch_triton", "3.1.0+cf34004b8a")
    other = build_wheel(tmp_path, "filelock", "3.16.1")
    tree.add_file("torch", torch, link="absolute", with_metadata=True)
    tree.add_file("pytorch_triton", triton, link="root")
    tree.add_file("filelock", other, link="relative")

    async with session.get(tree.url("/whl/nightly/")) as r:
        root = await r.text()
    assert 'href="pytorch-triton/"' in root
    async with session.get(tree.url("/whl/nightly/torch/")) as r:
        assert r.content_type == "text/html"
        assert r.headers["Cache-Control"] == "no-cache,no-store,must-revalidate"
        page = await r.text()
    assert page.rstrip().endswith("</html>\n<!--TIMESTAMP 1735900000-->")
    assert "#sha256" not in page
    quoted = torch.name.replace("+", "%2B")
    assert f'href="{cdn.origin}/whl/nightly/{quoted}"' in page
    assert 'data-core-metadata="sha256=' in page
    assert 'data-upload-time="' in page
    assert "https://example.invalid/docs/" in page
    async with session.get(tree.url("/whl/nightly/pytorch-triton/index.html")) as r:
        page = await r.text()
    assert "data-core-metadata" not in page
    assert f'href="/whl/nightly/{triton.name.replace("+", "%2B")}"' in page
    async with session.get(tree.url("/whl/nightly/filelock/")) as r:
        assert f'href="../{other.name}"' in await r.text()

    async with session.get(f"{cdn.origin}/whl/nightly/{quoted}") as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        assert await r.read() == torch.read_bytes()
    async with session.get(f"{cdn.origin}/whl/nightly/{quoted}.metadata") as r:
        assert b"Name: torch" in await r.read()
    raw_plus = URL(f"{tree.origin}/whl/nightly/{torch.name}", encoded=True)
    async with session.get(raw_plus) as r:
        assert r.status == 403  # '+' decoded as a space: no such key
    tree.xml_root = True
    async with session.get(tree.url("/whl/nightly/")) as r:
        assert r.content_type == "application/xml"
        assert "<ListBucketResult" in await r.text()


# -- s3 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Any:
    server = MotoS3().start()
    yield server
    server.stop()


def test_moto_pagination(moto: MotoS3) -> None:
    moto.create_bucket("many", public_read=True)
    moto.put_many("many", {f"nightly/pkg-{i:04d}.whl": b"x" for i in range(1105)})
    pages = list(
        moto.client.get_paginator("list_objects_v2").paginate(Bucket="many", Prefix="nightly/")
    )
    assert len(pages) == 2
    assert pages[0]["IsTruncated"] is True
    assert pages[0]["KeyCount"] == 1000
    assert sum(p["KeyCount"] for p in pages) == 1105
    etag = moto.put_multipart("many", "big.whl", b"y" * 100)
    assert etag.startswith('"')
    assert etag.endswith('-1"')


async def test_s3_proxy_anonymous_and_plus(
    moto: MotoS3, aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    moto.create_bucket("private", public_read=False)
    moto.create_bucket("public", public_read=True)
    moto.put("public", "nightly/torch-2.6.0.dev20250102+cu126-py3-none-any.whl", b"plus")
    moto.put("private", "k.whl", b"secret")
    proxy = AnonymousDenyingS3Proxy(moto)
    proxy.bind(await aiohttp_server(proxy.make_app()))

    async with session.get(proxy.url("/private?list-type=2")) as r:
        assert r.status == 403
        assert "<Code>AccessDenied</Code>" in await r.text()
    async with session.get(proxy.url("/public?list-type=2&prefix=nightly/&max-keys=1")) as r:
        assert r.status == 200
        body = await r.text()
    assert "<IsTruncated>false</IsTruncated>" in body
    assert "torch-2.6.0.dev20250102+cu126" in body
    base = proxy.url("/public/nightly/torch-2.6.0.dev20250102")
    encoded = URL(base + "%2Bcu126-py3-none-any.whl", encoded=True)
    async with session.get(URL(base + "%2Bcu126-py3-none-any.whl", encoded=True)) as r:
        assert r.status == 200
        assert await r.read() == b"plus"
    async with session.get(URL(base + "+cu126-py3-none-any.whl", encoded=True)) as r:
        assert r.status == 404
        assert "NoSuchKey" in await r.text()
    async with session.get(
        proxy.url("/?list-type=2"), headers={"Host": "public.s3.fake.invalid"}
    ) as r:
        assert r.status == 200
        assert "torch-2.6.0" in await r.text()
    async with session.get(
        encoded,
        headers={"Range": "bytes=0-1"},
    ) as r:
        assert r.status == 206
        assert await r.read() == b"pl"
