"""Reading a wheel's METADATA by byte ranges, for feeds that publish no PEP 658 files.

The rules (sparse file, range planning, Content-Range parsing) are checked without a network,
with Hypothesis; the range reader and the ``.metadata`` route against real HTTP servers that
answer ranges the way a blob host, a bucket, or a server that ignores them does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from nightproxy.cache import metadata as metadata_module
from nightproxy.cache.metadata import (
    MAX_METADATA_BYTES,
    MAX_RANGE_REQUESTS,
    TAIL_BYTES,
    MetadataError,
    SparseFile,
    extract_metadata,
    metadata_from_archive,
    read_remote_metadata,
)
from nightproxy.cache.remote_metadata import RemoteMetadata
from nightproxy.upstreams.base import RangeBody
from nightproxy.upstreams.http import Credentials, origin_of
from nightproxy.upstreams.ranges import HttpRangeReader, parse_content_range
from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy
from tests.fakes import FakeAzureFeed, FakeBlobHost, FakeSimpleIndex
from tests.support import installed_version, pip_install, uv_install
from tests.wheels import build_wheel, wheel_metadata

PAT = "range-pat-SENTINEL-5550123"
FILENAME = "demo-1.0.dev0-py3-none-any.whl"


# -- pure rules ---------------------------------------------------------------------------------


def make_archive(
    *, metadata: bytes, fillers: int, big: int, metadata_last: bool, comment: int, seed: int
) -> bytes:
    """A wheel-shaped zip: METADATA first or last, ``fillers`` small members, one ``big``
    incompressible member, and an archive comment of ``comment`` bytes."""
    rng = __import__("random").Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        if not metadata_last:
            archive.writestr("demo-1.0.dev0.dist-info/METADATA", metadata)
        for i in range(fillers):
            archive.writestr(f"demo/m{i:04d}.py", f"x = {i}\n" * (i % 7))
        if big:
            archive.writestr("demo/big.bin", rng.randbytes(big), zipfile.ZIP_STORED)
        if metadata_last:
            archive.writestr("demo-1.0.dev0.dist-info/METADATA", metadata)
        archive.comment = b"c" * comment
    return buf.getvalue()


class MemoryRanges:
    """A range fetch over bytes in memory that records what was asked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int | None, int]] = []

    async def __call__(self, start: int | None, length: int) -> RangeBody | None:
        self.calls.append((start, length))
        total = len(self.data)
        first = max(total - length, 0) if start is None else start
        return RangeBody(start=first, data=self.data[first : first + length], total=total)

    @property
    def fetched(self) -> int:
        return sum(min(length, len(self.data)) for _start, length in self.calls)


metadata_texts = st.binary(min_size=1, max_size=20_000).map(
    lambda b: b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0.dev0\n\n" + b
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata=metadata_texts,
    fillers=st.integers(0, 400),
    big=st.sampled_from([0, 1000, 200_000, 1_500_000]),
    metadata_last=st.booleans(),
    comment=st.sampled_from([0, 10, 65_535]),
    seed=st.integers(0, 2**16),
)
def test_range_reads_return_exactly_the_member_zipfile_reads(
    metadata: bytes, fillers: int, big: int, metadata_last: bool, comment: int, seed: int
) -> None:
    """Whatever the layout (member order, central directory size, archive comment), the
    metadata read by ranges is byte for byte the METADATA member, in a bounded number of
    requests, and a big wheel is never read whole."""
    data = make_archive(
        metadata=metadata,
        fillers=fillers,
        big=big,
        metadata_last=metadata_last,
        comment=comment,
        seed=seed,
    )
    fetch = MemoryRanges(data)
    got = asyncio.run(read_remote_metadata(fetch, FILENAME))
    assert got == metadata
    assert len(fetch.calls) <= MAX_RANGE_REQUESTS
    if len(data) > 4 * TAIL_BYTES:
        assert fetch.fetched < len(data) / 2


def test_metadata_in_the_tail_takes_one_request() -> None:
    """A wheel whose dist-info is written last (as wheel builders do) needs one range read."""
    data = make_archive(
        metadata=b"Name: demo\n", fillers=50, big=3_000_000, metadata_last=True, comment=0, seed=1
    )
    fetch = MemoryRanges(data)
    assert asyncio.run(read_remote_metadata(fetch, FILENAME)) == b"Name: demo\n"
    assert fetch.calls == [(None, TAIL_BYTES)]


@settings(max_examples=40, deadline=None)
@given(junk=st.binary(min_size=0, max_size=300_000))
def test_a_malformed_archive_means_download_instead(junk: bytes) -> None:
    """Bytes that are not a wheel never raise: the answer is None (download the wheel)."""
    assert asyncio.run(read_remote_metadata(MemoryRanges(junk), FILENAME)) is None


def test_a_file_that_changes_size_between_reads_is_not_mixed() -> None:
    """If a later read reports another total size, the read gives up rather than mixing
    two files."""
    data = make_archive(
        metadata=b"Name: demo\n", fillers=5, big=1_000_000, metadata_last=False, comment=0, seed=2
    )
    calls = 0

    async def fetch(start: int | None, length: int) -> RangeBody | None:
        nonlocal calls
        calls += 1
        body = await MemoryRanges(data)(start, length)
        assert body is not None
        return body if calls == 1 else RangeBody(body.start, body.data, body.total + 1)

    assert asyncio.run(read_remote_metadata(fetch, FILENAME)) is None
    assert calls == 2


def test_an_upstream_without_ranges_means_download_instead() -> None:
    """A fetch that answers None (no 206) ends the attempt after one request."""
    calls: list[int | None] = []

    async def fetch(start: int | None, length: int) -> RangeBody | None:
        calls.append(start)
        return None

    assert asyncio.run(read_remote_metadata(fetch, FILENAME)) is None
    assert calls == [None]


def lying_archive(real_size: int, claimed_size: int) -> bytes:
    """A wheel whose METADATA inflates to ``real_size`` bytes while its local and central
    headers both claim ``claimed_size`` (the shape of a zip bomb)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("demo-1.0.dev0.dist-info/METADATA", bytes(real_size))
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 22, claimed_size)  # local header: uncompressed size
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, claimed_size)
    return bytes(data)


def test_a_metadata_member_lying_about_its_size_is_refused_within_the_limit() -> None:
    """A member that inflates far past the size it declares is cut off at the metadata size
    limit and refused, never inflated whole into memory."""
    data = lying_archive(MAX_METADATA_BYTES * 2, 100)
    with zipfile.ZipFile(io.BytesIO(data)) as archive, pytest.raises(MetadataError):
        metadata_from_archive(archive, FILENAME)
    assert asyncio.run(read_remote_metadata(MemoryRanges(data), FILENAME)) is None


def bzip2_wheel() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("demo-1.0.dev0.dist-info/METADATA", b"Name: demo\n")
    return buf.getvalue()


def test_a_bzip2_metadata_is_not_read_by_ranges() -> None:
    """From ranges (bytes not covered by the wheel's hash), a METADATA in a compression whose
    inflation ``zipfile`` cannot bound is refused: the wheel is downloaded instead."""
    assert asyncio.run(read_remote_metadata(MemoryRanges(bzip2_wheel()), FILENAME)) is None


def test_a_bzip2_metadata_is_read_from_a_verified_wheel(tmp_path: Path) -> None:
    """A downloaded, verified wheel whose METADATA is bzip2-compressed (rare, but valid) still
    has its metadata read, in small bounded steps."""
    wheel = tmp_path / FILENAME
    wheel.write_bytes(bzip2_wheel())
    assert extract_metadata(wheel, FILENAME) == b"Name: demo\n"


def test_a_central_directory_over_the_limit_is_not_read_by_ranges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An end record announcing a central directory over the limit ends the attempt after
    the first request, even when that request already holds the whole archive."""
    data = make_archive(
        metadata=b"Name: demo\n", fillers=100, big=0, metadata_last=True, comment=0, seed=3
    )
    end = data.rindex(b"PK\x05\x06")
    (directory_size,) = struct.unpack_from("<I", data, end + 12)
    monkeypatch.setattr(metadata_module, "MAX_CENTRAL_DIRECTORY", directory_size - 1)
    fetch = MemoryRanges(data)
    assert asyncio.run(read_remote_metadata(fetch, FILENAME)) is None
    assert len(fetch.calls) == 1


def test_a_feed_answering_ranges_in_dribbles_costs_a_bounded_number_of_requests() -> None:
    """An upstream that answers every range with a few bytes only is given up on after
    ``MAX_RANGE_REQUESTS`` requests (the wheel is then downloaded)."""
    data = make_archive(
        metadata=b"Name: demo\n", fillers=3, big=500_000, metadata_last=False, comment=0, seed=4
    )
    whole = MemoryRanges(data)
    calls = 0

    async def dribble(start: int | None, length: int) -> RangeBody | None:
        nonlocal calls
        calls += 1
        body = await whole(start, length)
        assert body is not None
        if start is None:
            return body
        return RangeBody(body.start, body.data[:4], body.total)

    assert asyncio.run(read_remote_metadata(dribble, FILENAME)) is None
    assert calls == MAX_RANGE_REQUESTS


async def hang(start: int | None, length: int) -> RangeBody | None:
    """A range fetch that never answers: an upstream trickling bytes forever."""
    await asyncio.Event().wait()
    return None


def small_archive() -> bytes:
    return make_archive(
        metadata=b"Name: demo\n", fillers=3, big=0, metadata_last=True, comment=0, seed=5
    )


async def test_a_hung_range_read_gives_way_to_the_download_at_the_deadline() -> None:
    """A range read that never finishes ends at the deadline with "download instead", and
    its slot is free again: the next read gets it."""
    remote = RemoteMetadata(slots=1, deadline=1.0)
    async with asyncio.timeout(30):  # a guard against hanging the suite, not a speed check
        assert await remote.read("hung", hang, FILENAME) is None
        assert await remote.read("next", MemoryRanges(small_archive()), FILENAME) == (
            b"Name: demo\n"
        )
    await remote.close()


async def test_a_read_queued_behind_a_hung_one_runs_when_that_one_gives_way() -> None:
    """With every slot held by a read that never finishes, a read queued behind it is not
    stuck: it runs once the hung read reaches its deadline."""
    # The queued read starts half a deadline after the hung one, so it still has half of
    # its own left when the hung one gives the slot up: room for a loaded machine.
    remote = RemoteMetadata(slots=1, deadline=2.0)
    async with asyncio.timeout(30):  # a guard against hanging the suite, not a speed check
        hung = asyncio.create_task(remote.read("hung", hang, FILENAME))
        await asyncio.sleep(1.0)  # the hung read holds the slot; the next one queues
        queued = await remote.read("queued", MemoryRanges(small_archive()), FILENAME)
        assert await hung is None
    assert queued == b"Name: demo\n"
    await remote.close()


@given(
    size=st.integers(1, 2000),
    spans=st.lists(st.tuples(st.integers(0, 1999), st.integers(1, 400)), max_size=12),
    probe=st.tuples(st.integers(0, 1999), st.integers(0, 500)),
)
def test_sparse_file_reads_what_was_added_and_names_the_first_gap(
    size: int, spans: list[tuple[int, int]], probe: tuple[int, int]
) -> None:
    """Reads of present bytes return the original bytes; a read touching an absent byte
    names exactly the first absent span."""
    original = bytes(i % 251 for i in range(size))
    sparse = SparseFile(size)
    present = bytearray(size)
    for offset, length in spans:
        first = min(offset, size - 1)
        stop = min(first + length, size)
        sparse.add(first, original[first:stop])
        present[first:stop] = b"\x01" * (stop - first)
    start = min(probe[0], size)
    stop = min(start + probe[1], size)
    gap = sparse.missing(start, stop)
    absent = [i for i in range(start, stop) if not present[i]]
    if not absent:
        assert gap is None
        sparse.seek(start)
        assert sparse.read(stop - start) == original[start:stop]
    else:
        assert gap is not None
        gap_start, gap_len = gap
        assert gap_start == absent[0]
        assert gap_len > 0
        assert not any(present[gap_start : gap_start + gap_len])
        assert gap_start + gap_len == stop or present[gap_start + gap_len]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/1000", (0, 99, 1000)),
        ("bytes 900-999/1000", (900, 999, 1000)),
        ("BYTES 5-5/6", (5, 5, 6)),
        ("bytes 0-99/*", None),
        ("bytes */1000", None),
        ("bytes 100-99/1000", None),
        ("bytes 0-1000/1000", None),
        ("items 0-9/10", None),
        ("bytes -1-9/10", None),
        ("bytes \u00b2-5/10", None),
        ("bytes 0-5/" + "9" * 5000, None),
        ("", None),
        (None, None),
    ],
)
def test_content_range_parsing(value: str | None, parsed: tuple[int, int, int] | None) -> None:
    """Only a complete ``bytes first-last/total`` with a known total is usable."""
    assert parse_content_range(value) == parsed


# -- the range reader against a real server --------------------------------------------------------


class ChangingFile:
    """Serves one file with ranges and a strong ETag; ``replace`` swaps its bytes, after
    which an ``If-Range`` with the old ETag gets the whole new file (200), as RFC 9110 says."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.etag = '"v1"'
        self.requests: list[dict[str, str]] = []

    def replace(self, data: bytes) -> None:
        self.data = data
        self.etag = '"v2"'

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        header = request.headers.get("Range", "")
        if_range = request.headers.get("If-Range")
        total = len(self.data)
        if not header.startswith("bytes=") or (if_range is not None and if_range != self.etag):
            return web.Response(body=self.data, headers={"ETag": self.etag})
        first_s, _, last_s = header[6:].partition("-")
        if first_s:
            first, last = int(first_s), min(int(last_s), total - 1)
        else:
            first, last = max(total - int(last_s), 0), total - 1
        return web.Response(
            status=206,
            body=self.data[first : last + 1],
            headers={"ETag": self.etag, "Content-Range": f"bytes {first}-{last}/{total}"},
        )


@pytest.fixture
async def changing(aiohttp_server: object) -> tuple[ChangingFile, TestServer]:
    served = ChangingFile(os.urandom(300_000))
    app = web.Application()
    app.router.add_get("/f.whl", served.handle)
    server = await aiohttp_server(app)  # type: ignore[operator]
    return served, server


def reader_for(session: aiohttp.ClientSession, url: str) -> HttpRangeReader:
    return HttpRangeReader(
        session,
        "test",
        url,
        credentials=Credentials(origins=frozenset(), auth=None, headers={}),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def test_range_reader_returns_the_asked_bytes_and_total(
    changing: tuple[ChangingFile, TestServer], http: aiohttp.ClientSession
) -> None:
    """A suffix read and a positioned read return the bytes asked for and the file's size."""
    served, server = changing
    read = reader_for(http, str(server.make_url("/f.whl")))
    tail = await read(None, 1000)
    assert tail == RangeBody(start=299_000, data=served.data[-1000:], total=300_000)
    middle = await read(5000, 100)
    assert middle == RangeBody(start=5000, data=served.data[5000:5100], total=300_000)


async def test_range_reader_refuses_a_file_replaced_between_reads(
    changing: tuple[ChangingFile, TestServer], http: aiohttp.ClientSession
) -> None:
    """The second read carries ``If-Range``; a replaced file answers 200 and the reader
    gives up instead of returning bytes of another file."""
    served, server = changing
    read = reader_for(http, str(server.make_url("/f.whl")))
    assert await read(None, 1000) is not None
    served.replace(os.urandom(300_000))
    assert await read(0, 100) is None
    assert served.requests[-1].get("If-Range") == '"v1"'


# -- the .metadata route ---------------------------------------------------------------------------


class Azure:
    def __init__(self, feed: FakeAzureFeed, blobs: FakeBlobHost, wheel: Path) -> None:
        self.feed = feed
        self.blobs = blobs
        self.wheel = wheel

    def entry(self) -> dict[str, object]:
        return {
            "name": "ort",
            "kind": "azure",
            "url": self.feed.index_url,
            "username": "x",
            "password": PAT,
        }


@pytest.fixture
async def azure(start_fake: StartFake, tmp_path: Path) -> Azure:
    """An Azure-style feed (no PEP 658) whose blob host answers ranges; a 3 MB wheel."""
    blobs = await start_fake(FakeBlobHost())
    feed = await start_fake(FakeAzureFeed("anyone", PAT, blobs))
    wheel = build_wheel(
        tmp_path / "w",
        "ort-nightly",
        "1.20.0.dev20261120001",
        requires_dist=["numpy>=2"],
        payload_size=3_000_000,
    )
    feed.add_file("ort-nightly", wheel)
    return Azure(feed, blobs, wheel)


async def metadata_url(
    http: aiohttp.ClientSession, proxy: TestServer, project: str = "ort-nightly"
) -> tuple[URL, dict[str, object]]:
    """The ``.metadata`` URL of the first file on ``project``'s JSON page, and its entry."""
    page_url = proxy.make_url(f"/simple/{project}/")
    async with http.get(page_url, headers={"Accept": JSON_TYPE}) as resp:
        assert resp.status == 200
        entry = json.loads(await resp.text())["files"][0]
    return page_url.join(URL(entry["url"] + ".metadata")), entry


async def test_metadata_of_a_feed_without_pep658_is_read_by_ranges(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """``.metadata`` of a wheel on a feed without PEP 658 comes from a few byte ranges of the
    wheel at the blob host: the right bytes, and far fewer than the wheel."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _entry = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["X-Nightproxy-Cache"] == "miss"
    assert body == wheel_metadata(azure.wheel)
    blob_gets = [r for r in azure.blobs.requests if r.method == "GET"]
    assert blob_gets, "the blob host was never asked"
    assert all("Range" in r.headers for r in blob_gets)
    asked = sum(
        int(end) - int(start) + 1 if start else int(end)
        for r in blob_gets
        for start, _, end in [r.headers["Range"].removeprefix("bytes=").partition("-")]
    )
    assert asked < azure.wheel.stat().st_size / 10


async def test_range_metadata_is_not_published_as_a_hash_nor_cached_by_clients(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """Metadata read by ranges is not verified against the wheel's hash: the page keeps
    ``core-metadata: true`` and the response tells clients not to keep it."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _ = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-cache"
    _, entry = await metadata_url(http, proxy)
    assert entry["core-metadata"] is True


async def test_once_the_wheel_is_stored_its_metadata_hash_is_published(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """After the wheel itself is downloaded and verified, ``.metadata`` is extracted from it
    and served from the store (the same bytes the ranges gave), and the page publishes its
    sha256."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _ = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        ranged = await resp.read()
    async with http.get(url.with_name(url.name.removesuffix(".metadata"))) as resp:
        assert resp.status == 200
        await resp.read()
    async with http.get(url) as resp:
        stored = await resp.read()
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
    _, entry = await metadata_url(http, proxy)
    assert stored == ranged
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(stored).hexdigest()}


async def test_concurrent_metadata_requests_share_one_range_read(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Eight clients asking at once cost the blob host what one client costs."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _ = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        await resp.read()
    one_client = azure.blobs.count("GET")
    azure.blobs.clear_log()
    # A second proxy with a cache of its own, so nothing is held yet.
    proxy = await start_proxy(
        make_config([azure.entry()], cache={"dir": str(tmp_path / "second-cache")})
    )
    url, _ = await metadata_url(http, proxy)

    async def get() -> bytes:
        async with http.get(url) as resp:
            assert resp.status == 200
            return await resp.read()

    bodies = await asyncio.gather(*(get() for _ in range(8)))
    assert set(bodies) == {wheel_metadata(azure.wheel)}
    assert azure.blobs.count("GET") == one_client


async def test_metadata_read_by_ranges_is_then_answered_from_memory(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A second request for the same ``.metadata`` costs the upstream nothing."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _ = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        first = await resp.read()
    reads = azure.blobs.count("GET")
    async with http.get(url) as resp:
        assert resp.headers["X-Nightproxy-Cache"] == "hit"
        assert await resp.read() == first
    assert azure.blobs.count("GET") == reads


class CutRanges:
    """A simple index of one wheel whose server cuts every range answer short (full
    Content-Length, then the connection drops) but sends whole files intact."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.data = wheel.read_bytes()
        self.ranged = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/simple/{project}/", self.page)
        app.router.add_get("/files/{name}", self.file)
        return app

    async def page(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256(self.data).hexdigest()
        name = self.wheel.name
        return web.Response(
            text=f'<a href="../../files/{name}#sha256={digest}">{name}</a>',
            content_type="text/html",
        )

    async def file(self, request: web.Request) -> web.StreamResponse:
        if "Range" not in request.headers:
            return web.Response(body=self.data)
        self.ranged += 1
        total = len(self.data)
        first = total - 131072
        response = web.StreamResponse(
            status=206, headers={"Content-Range": f"bytes {first}-{total - 1}/{total}"}
        )
        response.content_length = total - first
        await response.prepare(request)
        await response.write(self.data[first : first + 1000])
        assert request.transport is not None
        request.transport.abort()
        return response


async def test_a_range_read_cut_short_falls_back_to_the_download(
    aiohttp_server: Any,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """An upstream that drops range answers half-way still gets its ``.metadata`` served:
    from one verified download of the wheel, not a 502."""
    wheel = build_wheel(tmp_path / "w", "cut", "1.0.dev1", payload_size=400_000)
    cut = CutRanges(wheel)
    server = await aiohttp_server(cut.app())
    proxy = await start_proxy(
        make_config([{"name": "up", "kind": "simple", "url": str(server.make_url("/simple/"))}])
    )
    url, _ = await metadata_url(http, proxy, "cut")
    async with http.get(url) as resp:
        assert (resp.status, await resp.read()) == (200, wheel_metadata(wheel))
    assert cut.ranged == 1


async def test_signing_headers_never_follow_a_redirect_to_another_host(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    """Request signing (SigV4 for S3) is asked for per hop and only for the upstream's own
    origin: a redirect target on another host never sees it."""
    seen: dict[str, dict[str, str]] = {}

    async def target(request: web.Request) -> web.Response:
        seen["target"] = dict(request.headers)
        return web.Response(status=206, body=b"x", headers={"Content-Range": "bytes 9-9/10"})

    target_app = web.Application()
    target_app.router.add_get("/obj", target)
    target_server = await aiohttp_server(target_app)

    async def origin(request: web.Request) -> web.Response:
        seen["origin"] = dict(request.headers)
        raise web.HTTPTemporaryRedirect(str(target_server.make_url("/obj")))

    origin_app = web.Application()
    origin_app.router.add_get("/obj", origin)
    origin_server = await aiohttp_server(origin_app)
    url = str(origin_server.make_url("/obj"))
    reader = HttpRangeReader(
        http,
        "test",
        url,
        credentials=Credentials(origins=frozenset({origin_of(url)}), auth=None, headers={}),
        timeout=aiohttp.ClientTimeout(total=10),
        signer=lambda _url: {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIASENTINEL/x"},
    )

    assert await reader(None, 1) == RangeBody(start=9, data=b"x", total=10)
    assert "AKIASENTINEL" in seen["origin"]["Authorization"]
    assert "Authorization" not in seen["target"]


@dataclass
class Plain:
    fake: FakeSimpleIndex
    wheel: Path
    proxy: TestServer


@pytest.fixture
async def plain(
    start_fake: StartFake, make_config: MakeConfig, start_proxy: StartProxy, tmp_path: Path
) -> Plain:
    """A simple feed that ignores ranges and has no ``.metadata`` files; a 2 MB wheel."""
    fake = await start_fake(FakeSimpleIndex())
    wheel = build_wheel(tmp_path / "w", "plain", "1.0.dev1", payload_size=2_000_000)
    fake.add_file("plain", wheel, with_metadata=False)
    proxy = await start_proxy(
        make_config([{"name": "up", "kind": "simple", "url": fake.url("/simple/")}])
    )
    return Plain(fake, wheel, proxy)


async def test_a_server_that_ignores_ranges_gets_the_wheel_downloaded_once(
    plain: Plain, http: aiohttp.ClientSession
) -> None:
    """An upstream answering a range with the whole file (200) is not read to the end for
    nothing: the proxy falls back to one verified download and extracts METADATA from it."""
    url, _ = await metadata_url(http, plain.proxy, "plain")
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == wheel_metadata(plain.wheel)
    ranged = [r for r in plain.fake.requests if "Range" in r.headers]
    whole = [
        r
        for r in plain.fake.requests
        if r.method == "GET" and r.path.endswith(".whl") and "Range" not in r.headers
    ]
    assert len(ranged) == 1
    assert len(whole) == 1


# -- end to end: a resolver through the proxy on a feed without PEP 658 ---------------------------


@pytest.mark.parametrize("installer", ["pip", "uv"])
async def test_resolver_rejects_a_candidate_without_downloading_it(
    installer: str,
    start_fake: StartFake,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    """On an Azure-style feed (no PEP 658), pip and uv resolve through the proxy, reject the
    newest nightly for its unsatisfiable dependency and install the older one: the rejected
    wheel is only ever read by byte ranges at the blob host, never downloaded whole."""
    blobs = await start_fake(FakeBlobHost())
    feed = await start_fake(FakeAzureFeed("anyone", PAT, blobs))
    old = feed.add_file("picky", build_wheel(tmp_path / "w", "picky", "3.0.dev1"))
    new = feed.add_file(
        "picky",
        build_wheel(
            tmp_path / "w", "picky", "3.0.dev2", requires_dist=["helper>=2"], payload_size=500_000
        ),
    )
    feed.add_file("helper", build_wheel(tmp_path / "w", "helper", "1.0"))
    proxy = await start_proxy(make_config([Azure(feed, blobs, new.path).entry()]))
    index_url = str(proxy.make_url("/simple/"))
    target = tmp_path / "target"
    if installer == "pip":
        await pip_install(index_url, target, tmp_path, "picky")
    else:
        await uv_install(index_url, target, tmp_path, "picky")

    assert installed_version(target, "picky") == "3.0.dev1"
    new_gets = [r for r in blobs.requests if r.method == "GET" and new.blob_id in r.path]
    assert new_gets, "the rejected candidate's metadata was never read"
    assert all("Range" in r.headers for r in new_gets)
    old_gets = [r for r in blobs.requests if r.method == "GET" and old.blob_id in r.path]
    assert any("Range" not in r.headers for r in old_gets)


async def test_metrics_count_range_reads_and_their_bytes(
    azure: Azure,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """``/metrics`` counts metadata read by ranges and the bytes those reads fetched: what
    the blob host sent for them, a fraction of the wheel."""
    proxy = await start_proxy(make_config([azure.entry()]))
    url, _ = await metadata_url(http, proxy)
    async with http.get(url) as resp:
        assert resp.status == 200
    async with http.get(proxy.make_url("/metrics")) as resp:
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("nightproxy_metadata_range_reads_total", (("outcome", "read"),))] == 1
    assert samples[("nightproxy_metadata_range_reads_total", (("outcome", "download"),))] == 0
    fetched = samples[("nightproxy_metadata_range_bytes_total", ())]
    assert 0 < fetched < azure.wheel.stat().st_size / 10


async def test_metrics_count_a_range_read_that_gave_way_to_the_download(
    plain: Plain, http: aiohttp.ClientSession
) -> None:
    """A feed that ignores ranges shows up in ``/metrics`` as a read that gave way to a
    download."""
    url, _ = await metadata_url(http, plain.proxy, "plain")
    async with http.get(url) as resp:
        assert resp.status == 200
    async with http.get(plain.proxy.make_url("/metrics")) as resp:
        text = await resp.text()
    outcomes = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nightproxy_metadata_range_reads_total"
    }
    assert outcomes == {"read": 0, "download": 1}
