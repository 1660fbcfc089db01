"""Running for real: a full disk, readiness after an upstream blip, SIGHUP, shutdown leftovers.

Real proxies on loopback in front of real fake upstreams, and one real ``nightproxy serve``
process for the signal. Where a disk must fail (no test can fill a disk safely), the store's
write is replaced on the live object; the HTTP boundary under test stays real.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nightproxy.index import health as breaker
from nightproxy.index import readiness
from nightproxy.server import keys
from tests.conftest import PIP_ACCEPT, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import WAIT, free_port, nightproxy_serve
from tests.wheels import build_wheel


def entry(fake: FakeSimpleIndex, **extra: Any) -> dict[str, Any]:
    return {"name": "main", "kind": "simple", "url": simple_url(fake), **extra}


@pytest.fixture
async def upstream(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    return await start_fake(fake)


async def readyz(http: aiohttp.ClientSession, proxy: Any) -> tuple[int, Any]:
    async with http.get(proxy.make_url("/readyz")) as resp:
        return resp.status, json.loads(await resp.read())


async def test_a_page_is_served_when_its_state_cannot_be_saved(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """With the disk full, a fresh page is still answered from the upstream, and readiness
    reports the cache as not writable."""
    proxy = await start_proxy(make_config([entry(upstream)]))
    state = proxy.app[keys.INDEX].state

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    state.save_page = full  # type: ignore[method-assign]
    async with http.get(proxy.make_url("/simple/demo/"), headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    assert [f["filename"] for f in doc["files"]] == ["demo-1.0-py3-none-any.whl"]
    _status, body = await readyz(http, proxy)
    assert body["cache"]["writable"] is False


async def test_one_failed_page_does_not_make_the_proxy_unready(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    """A single upstream blip (below the circuit breaker's threshold) leaves it ready."""
    proxy = await start_proxy(make_config([entry(upstream)]))
    upstream.down = True
    async with http.get(proxy.make_url("/simple/demo/")) as resp:
        assert resp.status == 502
    assert (await readyz(http, proxy))[0] == 200


async def test_readiness_comes_back_once_the_upstream_answers_the_probe(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream failing repeatedly makes an empty proxy unready, and it stays unready while
    the upstream is down, also once the breaker's back-off has passed; when the upstream
    answers again the background probe finds it and the proxy is ready, with no client
    request in between (an unready pod gets none)."""
    monkeypatch.setattr(readiness, "PROBE_INTERVAL", 0.05)
    proxy = await start_proxy(make_config([entry(upstream)], index={"ttl": "0s"}))
    upstream.down = True
    for _ in range(breaker.BREAKER_THRESHOLD):
        async with http.get(proxy.make_url("/simple/demo/")) as resp:
            assert resp.status == 502
    assert (await readyz(http, proxy))[0] == 503
    index = proxy.app[keys.INDEX]
    index.clock = lambda: time.time() + breaker.BREAKER_MAX_DELAY + 1
    probes = upstream.count("HEAD", "/simple/")
    async with asyncio.timeout(WAIT):
        while upstream.count("HEAD", "/simple/") < probes + 2:
            await asyncio.sleep(0.02)
    assert (await readyz(http, proxy))[0] == 503, "ready while every upstream is down"
    pages = upstream.count("GET", "/simple/demo/")
    upstream.down = False
    async with asyncio.timeout(WAIT):
        while (await readyz(http, proxy))[0] != 200:
            await asyncio.sleep(0.02)
    assert upstream.count("GET", "/simple/demo/") == pages


async def test_a_page_fetch_left_without_waiters_logs_no_unretrieved_error(
    upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request cancelled while its page is fetched (a client gone, a shutdown) leaves the
    shared fetch to fail alone: that failure is not reported as an exception nobody saw."""
    upstream.delay = 1.0
    proxy = await start_proxy(make_config([entry(upstream, timeout="0.3s")]))
    index = proxy.app[keys.INDEX]
    waiter = asyncio.ensure_future(index.view("demo"))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    waiter.cancel()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        async with asyncio.timeout(WAIT):
            while index.views.inflight:
                await asyncio.sleep(0.05)
        del waiter
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_sighup_is_logged_and_ignored(upstream: FakeSimpleIndex, tmp_path: Path) -> None:
    """``kill -HUP`` neither stops nor restarts the server: it keeps answering and says
    that a new config needs a restart."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
        f"upstreams:\n  - {{name: main, kind: simple, url: '{simple_url(upstream)}'}}\n"
    )
    port = free_port()
    async with nightproxy_serve(
        ["--config", str(config)], port, stderr=asyncio.subprocess.PIPE
    ) as proc:
        proc.send_signal(signal.SIGHUP)
        assert proc.stderr is not None
        async with asyncio.timeout(WAIT):
            while b"SIGHUP ignored" not in (line := await proc.stderr.readline()):
                assert line, "nightproxy serve exited on SIGHUP"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
        assert proc.returncode is None
