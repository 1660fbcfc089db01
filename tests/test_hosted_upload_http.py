"""The upload API over real sockets: twine and uv publish, auth answers, validation answers,
duplicates, overwrites, races, cut-off bodies and DELETE."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from packaging.utils import canonicalize_name

from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.feed import FeedSettings, HostedFeed
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.server import keys
from nightproxy.server.upload import setup_upload_routes
from tests.hosted_support import (
    ADMIN_TOKEN,
    NUMPY_TOKEN,
    SCIPY_TOKEN,
    basic,
    form_fields,
    multipart_head,
    multipart_tail,
    sha256_line,
    twine_upload,
    uv_publish,
    wait_until,
)
from tests.wheels import build_sdist, build_wheel

LINUX = "cp312-cp312-manylinux_2_17_x86_64"

StartFeed = Callable[..., Awaitable[tuple[HostedFeed, str]]]


@pytest.fixture
async def start_feed(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[StartFeed]:
    """A server with the upload routes of one hosted feed; (feed, upload URL)."""
    feeds: list[HostedFeed] = []

    async def start(
        *, overwrite: bool = False, max_file_size: int = 2**31
    ) -> tuple[HostedFeed, str]:
        settings = FeedSettings(
            name="community",
            rules=lambda _p: PruneRules(dev_max_age=None, keep_latest=3),
            overwrite=overwrite,
            max_file_size=max_file_size,
            recheck=0,
        )
        auth = FeedAuth(
            {
                canonicalize_name("numpy"): [sha256_line(NUMPY_TOKEN)],
                canonicalize_name("scipy"): [sha256_line(SCIPY_TOKEN)],
            },
            admins=[sha256_line(ADMIN_TOKEN)],
        )
        feed = HostedFeed(settings, LocalStorage(tmp_path / "feed"), auth)
        await feed.open()
        feeds.append(feed)
        app = web.Application()
        app[keys.FEEDS] = {"community": feed}
        setup_upload_routes(app)
        server = await aiohttp_server(app)
        return feed, str(server.make_url("/feeds/community/"))

    yield start
    for feed in feeds:
        await feed.close()


async def listed(feed: HostedFeed) -> dict[str, str]:
    return {r.filename: r.sha256 for r in (await feed.snapshot(fresh=True)).files()}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    path: Path,
    token: str | None = NUMPY_TOKEN,
    **fields: str,
) -> tuple[int, str, str]:
    form = aiohttp.FormData()
    for key, value in form_fields(path, **fields).items():
        form.add_field(key, value)
    headers = basic(token) if token is not None else {}
    with path.open("rb") as content:
        form.add_field("content", content, filename=path.name)
        async with http.post(url, data=form, headers=headers) as response:
            return response.status, response.reason or "", await response.text()


async def test_twine_and_uv_publish(start_feed: StartFeed, tmp_path: Path) -> None:
    """twine and uv publish, unmodified, upload wheels and sdists with a project token."""
    feed, url = await start_feed()
    dist = tmp_path / "dist"
    wheel = build_wheel(dist, "numpy", "2.0.dev0+20260301", tag=LINUX)
    sdist = build_sdist(dist, "numpy", "2.0.dev0+20260301")
    status, out = await twine_upload(url, [wheel], NUMPY_TOKEN, tmp_path)
    assert status == 0, out
    status, out = await uv_publish(url, [sdist], NUMPY_TOKEN, tmp_path)
    assert status == 0, out
    assert await listed(feed) == {
        wheel.name: hashlib.sha256(wheel.read_bytes()).hexdigest(),
        sdist.name: hashlib.sha256(sdist.read_bytes()).hexdigest(),
    }


async def test_twine_reports_wrong_and_missing_tokens(
    start_feed: StartFeed, tmp_path: Path
) -> None:
    """twine fails with a wrong token or another project's token, and the feed stays empty."""
    feed, url = await start_feed()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    status, out = await twine_upload(url, [wheel], "wrong", tmp_path)
    assert status != 0
    assert "403" in out
    status, out = await twine_upload(url, [wheel], SCIPY_TOKEN, tmp_path)
    assert status != 0
    assert "may publish scipy, not numpy" in out
    assert await listed(feed) == {}


async def test_auth_answers(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """No credentials: 401 with WWW-Authenticate; a wrong token: 403; another project's: 403
    naming the project it may publish. No answer repeats the token."""
    _feed, url = await start_feed()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    async with http.post(url, data=b"") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    status, reason, body = await post(http, url, wheel, token="wrong-secret")
    assert (status, reason) == (403, "Invalid or non-existent authentication information")
    assert "wrong-secret" not in body
    status, reason, body = await post(http, url, wheel, token=SCIPY_TOKEN)
    assert status == 403
    assert reason == "This token may publish scipy, not numpy"
    assert SCIPY_TOKEN not in body


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"version": "2.0.dev1"}, "has version 2.0.dev0, but the form says 2.0.dev1"),
        ({"name": "scipy"}, "is of project numpy, but the form says scipy"),
        ({"sha256_digest": "0" * 64}, "The sha256_digest does not match the file that arrived"),
        ({":action": "remove_pkg"}, "Unsupported :action 'remove_pkg'"),
    ],
)
async def test_validation_answers(
    start_feed: StartFeed,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    fields: dict[str, str],
    reason: str,
) -> None:
    """Each validation failure is a 400 whose reason phrase and body say what is wrong."""
    feed, url = await start_feed()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    status, got_reason, body = await post(http, url, wheel, token=ADMIN_TOKEN, **fields)
    assert status == 400
    assert reason in got_reason
    assert reason in body
    assert await listed(feed) == {}


async def test_too_large_is_refused_while_streaming(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A file over max_file_size is a 400 naming the limit, and nothing is kept."""
    feed, url = await start_feed(max_file_size=1000)
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX, payload_size=5000)
    status, reason, _body = await post(http, url, wheel)
    assert (status, reason) == (400, "File too large: the limit is 1000 bytes")
    assert await listed(feed) == {}
    assert list(feed.storage.staging_dir.iterdir()) == []


async def test_invalid_wheel_is_refused(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Bytes under a wheel's name that are no zip are a 400 saying so."""
    feed, url = await start_feed()
    fake = tmp_path / f"numpy-2.0.dev0-{LINUX}.whl"
    fake.write_bytes(b"this is not a zip")
    status, reason, _body = await post(http, url, fake)
    assert status == 400
    assert reason.startswith(f"{fake.name} is not a valid wheel")
    assert await listed(feed) == {}


async def test_duplicates_and_overwrites(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Same bytes: 200, unchanged. Other bytes: 400 File already exists."""
    feed, url = await start_feed()
    first = build_wheel(tmp_path / "a", "numpy", "2.0.dev0", tag=LINUX)
    second = build_wheel(tmp_path / "b", "numpy", "2.0.dev0", tag=LINUX, payload_size=10)
    assert (await post(http, url, first))[0] == 200
    status, _reason, body = await post(http, url, first)
    assert (status, body) == (
        200,
        f"{first.name}: already there with the same bytes: nothing changed\n",
    )
    status, reason, body = await post(http, url, second)
    assert (status, reason) == (400, "File already exists")
    assert "does not allow overwrites" in body
    assert await listed(feed) == {first.name: hashlib.sha256(first.read_bytes()).hexdigest()}


async def test_overwrite_replaces(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With overwrite: true, other bytes replace the file and the new sha256 is listed."""
    feed, url = await start_feed(overwrite=True)
    first = build_wheel(tmp_path / "a", "numpy", "2.0.dev0", tag=LINUX)
    second = build_wheel(tmp_path / "b", "numpy", "2.0.dev0", tag=LINUX, payload_size=10)
    await post(http, url, first)
    status, _reason, body = await post(http, url, second)
    assert status == 200
    assert "replaced" in body
    assert await listed(feed) == {second.name: hashlib.sha256(second.read_bytes()).hexdigest()}


async def test_racing_uploads_of_one_filename(
    start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Two uploads of one filename with other bytes at once: one wins, the other gets 400."""
    feed, url = await start_feed()
    first = build_wheel(tmp_path / "a", "numpy", "2.0.dev0", tag=LINUX, payload_size=2_000_000)
    second = build_wheel(tmp_path / "b", "numpy", "2.0.dev0", tag=LINUX, payload_size=2_000_001)
    results = await asyncio.gather(post(http, url, first), post(http, url, second))
    assert sorted(status for status, _r, _b in results) == [200, 400]
    winner = first if results[0][0] == 200 else second
    assert await listed(feed) == {winner.name: hashlib.sha256(winner.read_bytes()).hexdigest()}


async def test_cut_off_upload_leaves_nothing(start_feed: StartFeed, tmp_path: Path) -> None:
    """A client that disconnects halfway through the file leaves nothing listed or staged."""
    feed, url = await start_feed()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX, payload_size=1_000_000)
    boundary = "cutcutcut"
    head = multipart_head(form_fields(wheel), wheel.name, boundary)
    data = wheel.read_bytes()
    length = len(head) + len(data) + len(multipart_tail(boundary))
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST /feeds/community/ HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {basic(NUMPY_TOKEN)['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        + head
    )
    await writer.drain()

    async def staged_some() -> bool:
        return any(p.stat().st_size > 0 for p in feed.storage.staging_dir.iterdir())

    # Piece by piece: aiohttp holds back what it read until more arrives (to find the
    # boundary), so the first bytes reach the disk only once later ones come.
    sent = 0
    while not await staged_some():
        assert sent < len(data) * 3 // 4, "nothing reached the staging file"
        writer.write(data[sent : sent + 65536])
        sent += 65536
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()

    async def staging_empty() -> bool:
        return not any(feed.storage.staging_dir.iterdir())

    await wait_until(staging_empty)
    assert await listed(feed) == {}
    del reader


async def test_delete(start_feed: StartFeed, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """DELETE needs a token of the project (or an admin), answers 404 for what is not there."""
    feed, url = await start_feed()
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX)
    await post(http, url, wheel)
    target = url + f"numpy/{wheel.name}"
    async with http.delete(target) as response:
        assert response.status == 401
    async with http.delete(target, headers=basic(SCIPY_TOKEN)) as response:
        assert response.status == 403
    async with http.delete(target, headers=basic(NUMPY_TOKEN)) as response:
        assert response.status == 200
    assert await listed(feed) == {}
    async with http.delete(target, headers=basic(ADMIN_TOKEN)) as response:
        assert response.status == 404
        assert "is not listed" in await response.text()
