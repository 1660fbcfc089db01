"""A 502's status line says why: pip and uv print only the status line of a failed request."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from nightproxy.server.errors import REASON_MAX, reason_phrase
from tests.conftest import MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import installer_env
from tests.wheels import build_wheel


async def _down_proxy(
    start_fake: StartFake, start_proxy: StartProxy, make_config: MakeConfig, wheelhouse: Path
) -> TestServer:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    await start_fake(fake)
    fake.down = True
    config = make_config([{"name": "sci-feed", "kind": "simple", "url": simple_url(fake)}])
    return await start_proxy(config)


async def test_502_status_line_names_the_project_and_the_upstream_reason(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    http: aiohttp.ClientSession,
) -> None:
    """With its only feed down, a page's 502 carries the project and the feed's reason in
    its reason phrase, and the whole detail in its body."""
    proxy = await _down_proxy(start_fake, start_proxy, make_config, wheelhouse)
    async with http.get(proxy.make_url("/simple/demo/")) as resp:
        body = await resp.text()
    assert resp.status == 502
    assert resp.reason is not None
    assert resp.reason.startswith("no upstream could serve demo (sci-feed: ")
    assert "sci-feed" in body


async def test_pip_prints_the_502_reason(
    start_fake: StartFake,
    start_proxy: StartProxy,
    make_config: MakeConfig,
    wheelhouse: Path,
    tmp_path: Path,
) -> None:
    """The real pip, whose download fails because the feed went down after the page was
    read, shows why in its output (pip prints only the status line of a failed download)."""
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    await start_fake(fake)
    config = make_config([{"name": "sci-feed", "kind": "simple", "url": simple_url(fake)}])
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as http, http.get(proxy.make_url("/simple/demo/")) as r:
        assert r.status == 200
    fake.down = True
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--isolated"),
        *("--disable-pip-version-check", "--retries", "0", "-d", str(tmp_path / "out")),
        *("--index-url", str(proxy.make_url("/simple/")), "demo"),
        env=installer_env(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0
    assert "502 Server Error: could not fetch demo-1.0-py3-none-any.whl" in output.decode()


@given(st.text(max_size=400))
def test_reason_phrase_is_one_short_printable_line(summary: str) -> None:
    """Whatever an upstream's error says, the reason phrase is printable ASCII on one line,
    at most ``REASON_MAX`` characters: a status line cannot be split or smuggled into."""
    phrase = reason_phrase(summary)
    assert len(phrase) <= REASON_MAX
    assert all(32 <= ord(ch) < 127 for ch in phrase)
