"""``kind: s3``: a bucket of wheels on a real S3-compatible server (moto's server mode).

One moto server serves the whole module (it is slow to start); each test starts its own
proxy and, where real-S3 anonymous semantics matter, an ``AnonymousDenyingS3Proxy`` in front.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes.s3 import AnonymousDenyingS3Proxy, MotoS3, moto_s3
from tests.wheels import build_wheel, sha256_file, wheel_metadata

PRIVATE = "nightly-private"
PUBLIC = "nightly-public"
PREFIX = "whl/nightly"
FILLERS = 1100
SECRET = "s3-secret-SENTINEL-do-not-leak-42"


class Bucketful:
    """What the module fixture put in the buckets."""

    def __init__(self, moto: MotoS3, wheels: dict[str, Path]) -> None:
        self.moto = moto
        self.wheels = wheels


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucketful]:
    """moto with a private and a public bucket holding the same layout:

    * 1100 filler wheels of ``aaa-filler`` directly under the prefix (two listing pages);
    * ``zzz-late`` directly under the prefix, sorting after every filler (second page);
    * ``sub-proj`` under ``<prefix>/sub-proj/``;
    * ``local-ver`` whose version has a ``+`` local part;
    * non-distribution keys and keys nested too deep.
    """
    dest = tmp_path_factory.mktemp("s3wheels")
    wheels = {
        "zzz-late": build_wheel(dest, "zzz-late", "1.0.dev20261120"),
        "sub-proj": build_wheel(dest, "sub-proj", "2.0.dev3"),
        "local-ver": build_wheel(dest, "local-ver", "1.0.dev1+cpu"),
    }
    with moto_s3() as moto:
        for bucket in (PRIVATE, PUBLIC):
            moto.create_bucket(bucket, public_read=bucket == PUBLIC)
            # put_many writes into moto's backend directly: fast, but such objects are not
            # anonymously readable even in a public-read bucket, so the wheels that tests
            # download go through PutObject.
            fillers: dict[str, Path | bytes] = {
                f"{PREFIX}/aaa_filler-0.0.{n}-py3-none-any.whl": b"filler" for n in range(FILLERS)
            }
            fillers[f"{PREFIX}/README.txt"] = b"not a wheel"
            fillers[f"{PREFIX}/index.html"] = b"<html></html>"
            fillers[f"{PREFIX}/sub-proj/index.html"] = b"<html></html>"
            fillers[f"{PREFIX}/a/b/deep_one-1.0-py3-none-any.whl"] = b"too deep"
            fillers["other/outside-1.0-py3-none-any.whl"] = b"outside the prefix"
            moto.put_many(bucket, fillers)
            moto.put(bucket, f"{PREFIX}/{wheels['zzz-late'].name}", wheels["zzz-late"])
            moto.put(bucket, f"{PREFIX}/sub-proj/{wheels['sub-proj'].name}", wheels["sub-proj"])
            moto.put(bucket, f"{PREFIX}/{wheels['local-ver'].name}", wheels["local-ver"])
        yield Bucketful(moto, wheels)


def entry(
    bucket: str, endpoint: str, *, signed: bool = False, secret: str = "testing"
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "nightly-s3",
        "kind": "s3",
        "url": f"s3://{bucket}/{PREFIX}/",
        "endpoint": endpoint,
        "addressing": "path",
    }
    if signed:
        out |= {"access_key_id": "testing", "secret_access_key": secret}
    return out


@pytest.fixture
async def gate(start_fake: StartFake, s3: Bucketful) -> AnonymousDenyingS3Proxy:
    """Real-S3 semantics in front of moto: anonymous requests to private buckets are denied,
    a raw ``+`` in a path is a space."""
    proxy: AnonymousDenyingS3Proxy = await start_fake(AnonymousDenyingS3Proxy(s3.moto))
    return proxy


async def get_json(
    http: aiohttp.ClientSession, proxy: TestServer, path: str
) -> tuple[int, str, URL]:
    url = proxy.make_url(path)
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        return resp.status, await resp.text(), url


async def files_of(
    http: aiohttp.ClientSession, proxy: TestServer, project: str
) -> tuple[dict[str, dict[str, Any]], URL]:
    status, text, url = await get_json(http, proxy, f"/simple/{project}/")
    assert status == 200, text
    return {f["filename"]: f for f in json.loads(text)["files"]}, url


async def download(
    http: aiohttp.ClientSession, proxy: TestServer, project: str, wheel: Path
) -> tuple[int, bytes]:
    files, page_url = await files_of(http, proxy, project)
    async with http.get(page_url.join(URL(files[wheel.name]["url"]))) as resp:
        return resp.status, await resp.read()


async def test_project_on_second_listing_page_appears(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With more than 1000 keys the listing is followed past its first page."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))

    files, _ = await files_of(http, proxy, "zzz-late")

    assert set(files) == {s3.wheels["zzz-late"].name}
    listings = [r for r in gate.requests if "list-type=2" in r.path_qs]
    assert len(listings) >= 2
    assert any("continuation-token=" in r.path_qs for r in listings)


async def test_all_first_page_files_are_listed(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Every one of the 1100 filler wheels, spread over two listing pages, is published."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))

    files, _ = await files_of(http, proxy, "aaa-filler")

    assert len(files) == FILLERS


async def test_project_list_has_only_distributions_under_the_prefix(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Non-wheel keys (README.txt, index.html), keys nested too deep and keys outside the
    prefix do not become projects."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))

    status, text, _ = await get_json(http, proxy, "/simple/")

    assert status == 200, text
    names = {p["name"] for p in json.loads(text)["projects"]}
    assert names == {"aaa-filler", "zzz-late", "sub-proj", "local-ver"}


async def test_file_directly_under_prefix_downloads(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A wheel directly under the prefix downloads byte for byte."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["zzz-late"]

    assert await download(http, proxy, "zzz-late", wheel) == (200, wheel.read_bytes())


async def test_file_in_project_folder_downloads(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A wheel under ``<prefix>/<project>/`` is listed and downloads byte for byte."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["sub-proj"]

    assert await download(http, proxy, "sub-proj", wheel) == (200, wheel.read_bytes())


async def test_key_with_plus_downloads(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A key with a ``+`` (local version) is requested as ``%2B`` and downloads correctly on a
    store that decodes a raw ``+`` as a space."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["local-ver"]
    assert "+" in wheel.name

    assert await download(http, proxy, "local-ver", wheel) == (200, wheel.read_bytes())
    object_gets = [r for r in gate.requests if "local" in r.path and "list-type" not in r.path_qs]
    assert object_gets
    assert all("%2B" in r.path for r in object_gets)


async def test_last_modified_is_upload_time(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """The listing's LastModified is published as the file's PEP 700 upload-time."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["zzz-late"]
    listed = s3.moto.client.list_objects_v2(Bucket=PUBLIC, Prefix=f"{PREFIX}/zzz")["Contents"]
    (obj,) = listed

    files, _ = await files_of(http, proxy, "zzz-late")

    published = datetime.fromisoformat(files[wheel.name]["upload-time"].replace("Z", "+00:00"))
    assert published.astimezone(UTC) == obj["LastModified"].astimezone(UTC)


async def test_signed_access_lists_and_downloads_private_bucket(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With access keys, requests are SigV4-signed: a private bucket lists and downloads."""
    proxy = await start_proxy(make_config([entry(PRIVATE, gate.origin, signed=True)]))
    wheel = s3.wheels["local-ver"]

    assert await download(http, proxy, "local-ver", wheel) == (200, wheel.read_bytes())
    assert gate.requests
    assert all(
        r.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 ") for r in gate.requests
    )


async def test_signed_access_directly_against_moto(
    s3: Bucketful, make_config: MakeConfig, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """Signed access to the moto endpoint itself (``http://IP:PORT``, path addressing) lists
    the second listing page and downloads."""
    proxy = await start_proxy(make_config([entry(PRIVATE, s3.moto.endpoint, signed=True)]))
    wheel = s3.wheels["zzz-late"]

    assert await download(http, proxy, "zzz-late", wheel) == (200, wheel.read_bytes())


async def test_anonymous_private_bucket_is_502_naming_upstream(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Anonymous listing of a private bucket is denied (403): with no other upstream the
    project page is a 502 that names the upstream and the denial."""
    proxy = await start_proxy(make_config([entry(PRIVATE, gate.origin)]))

    status, text, _ = await get_json(http, proxy, "/simple/zzz-late/")

    assert status == 502
    assert "nightly-s3" in text
    assert "403" in text


async def test_anonymous_public_bucket_works(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A public-read bucket lists and downloads anonymously, sending no Authorization."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["sub-proj"]

    assert await download(http, proxy, "sub-proj", wheel) == (200, wheel.read_bytes())
    assert all("Authorization" not in r.headers for r in gate.requests)


async def test_published_sha256_after_download_is_real(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """S3 gives no sha256 (an ETag is not one): after a download the page publishes the
    sha256 the proxy computed, which is the file's real digest."""
    proxy = await start_proxy(make_config([entry(PUBLIC, gate.origin)]))
    wheel = s3.wheels["zzz-late"]
    files, _ = await files_of(http, proxy, "zzz-late")
    assert "sha256" not in files[wheel.name].get("hashes", {})
    assert await download(http, proxy, "zzz-late", wheel) == (200, wheel.read_bytes())

    files, _ = await files_of(http, proxy, "zzz-late")

    assert files[wheel.name]["hashes"]["sha256"] == sha256_file(wheel)


async def test_secret_never_in_responses_or_logs(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The secret access key appears in no page, header or log line, on success or failure."""
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(
        make_config([entry(PRIVATE, gate.origin, signed=True, secret=SECRET)])
    )
    gate.deny_all_anonymous = True
    seen: list[str] = []
    for path in ("/simple/", "/simple/local-ver/", "/simple/no-such-project/"):
        async with http.get(proxy.make_url(path), headers={"Accept": JSON_TYPE}) as resp:
            seen += [await resp.text(), str(resp.headers)]
    wheel = s3.wheels["local-ver"]
    assert await download(http, proxy, "local-ver", wheel) == (200, wheel.read_bytes())
    assert all("Credential=testing/" in r.headers.get("Authorization", "") for r in gate.requests)

    assert caplog.records
    for text in [*seen, caplog.text]:
        assert SECRET not in text
        assert "SENTINEL" not in text


async def test_metadata_of_a_private_object_is_read_by_signed_ranges(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """``.metadata`` of a wheel in a private bucket (no ``.metadata`` objects) comes from
    SigV4-signed range reads of the object, not from downloading it."""
    proxy = await start_proxy(make_config([entry(PRIVATE, gate.origin, signed=True)]))
    wheel = s3.wheels["sub-proj"]
    files, page_url = await files_of(http, proxy, "sub-proj")

    async with http.get(page_url.join(URL(files[wheel.name]["url"] + ".metadata"))) as resp:
        assert (resp.status, await resp.read()) == (200, wheel_metadata(wheel))

    object_gets = [r for r in gate.requests if r.method == "GET" and wheel.name in r.path]
    assert object_gets
    assert all("Range" in r.headers for r in object_gets)
    assert all(r.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ") for r in object_gets)


async def test_a_listing_size_that_is_not_ascii_digits_is_ignored(
    aiohttp_server: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A listing whose ``Size`` is not plain ASCII digits (a superscript digit, which
    ``int()`` refuses) still lists the object, without a size."""

    async def listing(request: web.Request) -> web.Response:
        return web.Response(
            content_type="application/xml",
            text=(
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>b</Name><Prefix>{PREFIX}/</Prefix><KeyCount>1</KeyCount>"
                "<IsTruncated>false</IsTruncated><Contents>"
                f"<Key>{PREFIX}/odd_size-1.0.dev1-py3-none-any.whl</Key>"
                "<LastModified>2026-11-20T00:00:00.000Z</LastModified>"
                '<ETag>"abc"</ETag><Size>\u00b2</Size></Contents></ListBucketResult>'
            ),
        )

    app = web.Application()
    app.router.add_get("/b/", listing)
    server = await aiohttp_server(app)
    proxy = await start_proxy(make_config([entry("b", str(server.make_url("")).rstrip("/"))]))

    files, _ = await files_of(http, proxy, "odd-size")

    assert list(files) == ["odd_size-1.0.dev1-py3-none-any.whl"]
    assert "size" not in files["odd_size-1.0.dev1-py3-none-any.whl"]


async def test_an_object_added_later_is_listed_within_the_global_ttl(
    s3: Bucketful,
    gate: AnonymousDenyingS3Proxy,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> None:
    """An s3 upstream with no ``ttl`` of its own keeps its bucket listing only as long as
    ``index.ttl`` says: with ``0s`` a wheel put into the bucket is on the very next page."""
    bucket = "ttl-later"
    s3.moto.create_bucket(bucket, public_read=True)
    first = build_wheel(wheelhouse, "late-proj", "1.0")
    s3.moto.put(bucket, f"{PREFIX}/{first.name}", first)
    proxy = await start_proxy(make_config([entry(bucket, gate.origin)], index={"ttl": "0s"}))
    files, _ = await files_of(http, proxy, "late-proj")
    assert set(files) == {first.name}
    second = build_wheel(wheelhouse, "late-proj", "1.1")
    s3.moto.put(bucket, f"{PREFIX}/{second.name}", second)
    files, _ = await files_of(http, proxy, "late-proj")
    assert set(files) == {first.name, second.name}
