"""A hosted feed end to end: the real ``nightproxy serve``, twine, uv publish, pip and uv.

The server runs as a subprocess over a config with a hosted feed beside a ``directory``
upstream; what is published there is installed through the merged index.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import resource
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import JSON_TYPE
from tests.hosted_support import (
    ADMIN_TOKEN,
    NUMPY_TOKEN,
    basic,
    form_fields,
    multipart_head,
    sha256_line,
    twine_upload,
    uv_publish,
    wait_until,
)
from tests.support import (
    free_port,
    installed_version,
    nightproxy_serve,
    pip_install,
    uv_install,
)
from tests.wheels import build_sdist, build_wheel, wheel_metadata

LINUX = "cp311-cp311-manylinux_2_17_x86_64"

Serve = Callable[..., AbstractAsyncContextManager[tuple[str, asyncio.subprocess.Process]]]


def write_config(tmp_path: Path, **feed: Any) -> Path:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    hosted = {
        "name": "community",
        "kind": "hosted",
        "path": str(tmp_path / "feed"),
        "retention": {"dev_max_age": "30d", "keep_latest": 2, "trash": "7d"},
        "publishers": {"numpy": {"tokens": [sha256_line(NUMPY_TOKEN)]}},
        "admins": [sha256_line(ADMIN_TOKEN)],
        **feed,
    }
    config = {
        "cache": {"dir": str(tmp_path / "cache")},
        "upstreams": [hosted, {"name": "local", "kind": "directory", "path": str(wheelhouse)}],
    }
    path = tmp_path / "nightproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """Start ``nightproxy serve`` over a hosted feed; (base URL, process)."""

    @asynccontextmanager
    async def start(
        port: int | None = None,
        rlimits: dict[int, tuple[int, int]] | None = None,
        **feed: Any,
    ) -> AsyncIterator[tuple[str, Any]]:
        config = write_config(tmp_path, **feed)
        port = port or free_port()
        async with nightproxy_serve(["--config", str(config)], port, rlimits=rlimits) as proc:
            yield f"http://127.0.0.1:{port}", proc

    return start


async def page(http: aiohttp.ClientSession, base: str, project: str) -> dict[str, Any]:
    async with http.get(f"{base}/simple/{project}/", headers={"Accept": JSON_TYPE}) as response:
        if response.status == 404:
            return {"files": []}
        assert response.status == 200
        return dict(json.loads(await response.read()))


async def test_publish_then_install_through_the_merged_index(
    serve: Serve, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """twine and uv publish to the feed; the merged page lists the files with their sha256,
    upload time and metadata; pip and uv install them with a dependency from another
    upstream; uv publish --check-url skips what is there."""
    dist = tmp_path / "dist"
    build_wheel(tmp_path / "wheelhouse", "lib-two", "1.0")
    wheel = build_wheel(
        dist, "numpy", "2.0.dev0+20260301", tag="py3-none-any", requires_dist=["lib-two>=1.0"]
    )
    sdist = build_sdist(dist, "numpy", "2.0.dev0+20260301")
    async with serve() as (base, _proc):
        upload_url = f"{base}/feeds/community/"
        status, out = await twine_upload(upload_url, [wheel], NUMPY_TOKEN, tmp_path)
        assert status == 0, out
        status, out = await uv_publish(upload_url, [sdist], NUMPY_TOKEN, tmp_path)
        assert status == 0, out
        listed = {f["filename"]: f for f in (await page(http, base, "numpy"))["files"]}
        assert set(listed) == {wheel.name, sdist.name}
        entry = listed[wheel.name]
        assert entry["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert entry["upload-time"].endswith("Z")
        metadata = wheel_metadata(wheel)
        assert entry["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
        file_url = f"{base}/simple/numpy/{entry['url']}"
        async with http.get(file_url) as response:
            assert await response.read() == wheel.read_bytes()
        async with http.get(file_url + ".metadata") as response:
            assert await response.read() == metadata

        index = f"{base}/simple/"
        await pip_install(index, tmp_path / "pip", tmp_path, "numpy")
        assert installed_version(tmp_path / "pip", "numpy") == "2.0.dev0+20260301"
        assert (tmp_path / "pip" / "lib_two").is_dir()
        await uv_install(index, tmp_path / "uv", tmp_path, "numpy")
        assert installed_version(tmp_path / "uv", "numpy") == "2.0.dev0+20260301"

        # A re-run of the publish job: everything is there with the same hash.
        status, out = await uv_publish(
            upload_url, [wheel, sdist], NUMPY_TOKEN, tmp_path, check_url=index
        )
        assert status == 0, out
        assert "already exists" in out.lower() or "skipping" in out.lower(), out
        assert (await page(http, base, "numpy"))["files"] == list(listed.values())


async def test_overwrite_while_a_client_downloads(
    serve: Serve, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With overwrite, a download of the old bytes in progress completes with the old bytes;
    the page then lists the new sha256, and the old link never gives the new bytes."""
    old = build_wheel(tmp_path / "a", "numpy", "2.0.dev0", tag=LINUX, payload_size=8_000_000)
    new = build_wheel(tmp_path / "b", "numpy", "2.0.dev0", tag=LINUX, payload_size=8_000_001)
    async with serve(overwrite=True) as (base, _proc):
        upload_url = f"{base}/feeds/community/"
        assert (await twine_upload(upload_url, [old], NUMPY_TOKEN, tmp_path))[0] == 0
        [entry] = (await page(http, base, "numpy"))["files"]
        old_url = f"{base}/simple/numpy/{entry['url']}"
        digest = hashlib.sha256()
        async with http.get(old_url) as download:
            digest.update(await download.content.readexactly(65536))
            status, out = await twine_upload(upload_url, [new], NUMPY_TOKEN, tmp_path)
            assert status == 0, out
            async for chunk in download.content.iter_chunked(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(old.read_bytes()).hexdigest()
        [entry] = (await page(http, base, "numpy"))["files"]
        assert entry["hashes"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()
        async with http.get(old_url) as response:
            assert response.status == 404


async def test_killed_mid_upload_then_restarted(
    serve: Serve, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGKILL while a body streams in: after a restart nothing is listed, no partial file is
    left, and the same upload then succeeds."""
    wheel = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX, payload_size=4_000_000)
    port = free_port()
    staging = tmp_path / "feed" / ".nightproxy" / "staging"
    async with serve(port=port) as (base, proc):
        boundary = "killkillkill"
        head = multipart_head(form_fields(wheel), wheel.name, boundary)
        data = wheel.read_bytes()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                "POST /feeds/community/ HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {basic(NUMPY_TOKEN)['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + len(data) + 100}\r\n\r\n"
            ).encode()
            + head
        )
        sent = 0

        async def staged_some() -> bool:
            nonlocal sent
            if any(p.stat().st_size for p in staging.iterdir()):
                return True
            writer.write(data[sent : sent + 65536])
            sent += 65536
            await writer.drain()
            return False

        await wait_until(staged_some)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        del reader
    assert any(staging.iterdir())  # the partial body the killed server left
    async with serve(port=port) as (base, _proc):
        assert (await page(http, base, "numpy"))["files"] == []
        assert not any(staging.iterdir())
        status, out = await twine_upload(f"{base}/feeds/community/", [wheel], NUMPY_TOKEN, tmp_path)
        assert status == 0, out
        [entry] = (await page(http, base, "numpy"))["files"]
        assert entry["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()


async def test_an_upload_the_storage_cannot_hold_is_507_and_keeps_nothing(
    serve: Serve, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The feed's disk cannot take the file (here the server runs under a 1 MiB file-size
    limit): twine is told 507 Insufficient Storage, nothing of it is listed or left staged,
    and the next upload that fits is accepted."""
    big = build_wheel(tmp_path / "dist", "numpy", "2.0.dev0", tag=LINUX, payload_size=3_000_000)
    small = build_wheel(tmp_path / "dist", "numpy", "2.1.dev0", tag=LINUX)
    staging = tmp_path / "feed" / ".nightproxy" / "staging"
    limit = {resource.RLIMIT_FSIZE: (1024 * 1024, 1024 * 1024)}
    async with serve(rlimits=limit) as (base, _proc):
        status, out = await twine_upload(f"{base}/feeds/community/", [big], NUMPY_TOKEN, tmp_path)
        assert status != 0
        assert "507" in out, out
        status, out = await twine_upload(f"{base}/feeds/community/", [small], NUMPY_TOKEN, tmp_path)
        assert status == 0, out
        listed = [f["filename"] for f in (await page(http, base, "numpy"))["files"]]
    assert listed == [small.name]
    assert not list(staging.iterdir())
