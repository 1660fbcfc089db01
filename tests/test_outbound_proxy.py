"""Outbound HTTP proxies: CI behind an egress proxy reaches its feeds through nightproxy.

The proxy here is a real forward proxy on a loopback socket (plain HTTP, absolute-form request
targets, as clients send them to a proxy); it forwards each request and records what it saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest

from tests.conftest import JSON_TYPE, MakeConfig, StartFake, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.forward_proxy import ForwardProxy
from tests.hosted_support import NUMPY_TOKEN, basic, form_fields, sha256_line
from tests.seaweed import SeaweedServer
from tests.wheels import build_wheel


@pytest.fixture
async def feed(start_fake: StartFake, wheelhouse: Path) -> FakeSimpleIndex:
    fake = FakeSimpleIndex()
    fake.add_file("demo", build_wheel(wheelhouse, "demo", "1.0"))
    return await start_fake(fake)


@pytest.fixture
def page_via(
    start_proxy: StartProxy, make_config: MakeConfig, feed: FakeSimpleIndex, http: Any
) -> Any:
    """The feed's ``demo`` page through a new nightproxy whose upstream has ``extra`` keys."""

    async def fetch(**extra: Any) -> dict[str, Any]:
        entry = {"name": "up", "kind": "simple", "url": simple_url(feed), **extra}
        server = await start_proxy(make_config([entry]))
        return await _page(http, server)

    return fetch


async def _page(http: aiohttp.ClientSession, proxy: Any) -> dict[str, Any]:
    async with http.get(proxy.make_url("/simple/demo/"), headers={"Accept": JSON_TYPE}) as r:
        assert r.status == 200, await r.text()
        page: dict[str, Any] = await r.json(content_type=None)
        return page


async def test_environment_proxy_carries_upstream_requests(
    monkeypatch: pytest.MonkeyPatch, start_fake: StartFake, feed: FakeSimpleIndex, page_via: Any
) -> None:
    """With HTTP_PROXY set (as on a CI runner behind an egress proxy), feeds are reached
    through that proxy."""
    forward = await start_fake(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", forward.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    page = await page_via()
    assert [f["filename"] for f in page["files"]] == ["demo-1.0-py3-none-any.whl"]
    assert any(seen.startswith(simple_url(feed)) for seen in forward.seen)


async def test_no_proxy_bypasses_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch, start_fake: StartFake, page_via: Any
) -> None:
    """A feed host listed in NO_PROXY is reached directly, not through HTTP_PROXY."""
    forward = await start_fake(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", forward.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    page = await page_via()
    assert page["files"]
    assert forward.seen == []


async def test_upstream_proxy_key_with_credentials_is_used(
    monkeypatch: pytest.MonkeyPatch, start_fake: StartFake, page_via: Any
) -> None:
    """An upstream's own ``proxy:`` URL (with user:password) is used for it, the password
    sent as Proxy-Authorization, even when the environment names no proxy."""
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    forward = await start_fake(ForwardProxy(credentials=("ci", "s3cret")))
    proxy_url = forward.base_url.replace("http://", "http://ci:s3cret@")
    page = await page_via(proxy=proxy_url)
    assert page["files"]
    assert forward.seen, "the upstream was not reached through its proxy"


async def test_upstream_proxy_password_is_masked_in_the_effective_config(
    make_config: MakeConfig,
) -> None:
    """``check`` shows an upstream's proxy URL without its password."""
    from nightproxy.config import masked

    config = make_config(
        [
            {
                "name": "up",
                "kind": "simple",
                "url": "http://feed.invalid/simple/",
                "proxy": "http://ci:s3cret@p:3128",
            }
        ]
    )
    shown = repr(masked(config))
    assert "s3cret" not in shown
    assert "p:3128" in shown


@pytest.fixture
def bucket_feed(
    start_proxy: StartProxy,
    make_config: MakeConfig,
    seaweed: SeaweedServer,
    s3_prefix: str,
    http: aiohttp.ClientSession,
    wheelhouse: Path,
) -> Any:
    """Publish a wheel to a bucket-stored hosted feed of a new nightproxy whose upstream has
    ``extra`` keys, and download it back through the index; the bytes served."""

    async def publish_and_fetch(**extra: Any) -> bytes:
        entry = {
            "name": "community",
            "kind": "hosted",
            "url": seaweed.url(s3_prefix),
            "endpoint": seaweed.endpoint,
            "region": seaweed.region,
            "access_key_id": seaweed.access_key_id,
            "secret_access_key": seaweed.secret_access_key,
            "publishers": {"numpy": {"tokens": [sha256_line(NUMPY_TOKEN)]}},
            **extra,
        }
        server = await start_proxy(make_config([entry]))
        wheel = build_wheel(wheelhouse, "numpy", "2.0.dev0")
        form = aiohttp.FormData(form_fields(wheel))
        form.add_field("content", wheel.read_bytes(), filename=wheel.name)
        url = server.make_url("/feeds/community/")
        async with http.post(url, data=form, headers=basic(NUMPY_TOKEN)) as r:
            assert r.status == 200, await r.text()
        page_url = server.make_url("/simple/numpy/")
        async with http.get(page_url, headers={"Accept": JSON_TYPE}) as r:
            assert r.status == 200, await r.text()
            page = await r.json(content_type=None)
        [file] = page["files"]
        async with http.get(urljoin(str(page_url), file["url"])) as r:
            assert r.status == 200, await r.text()
            data = await r.read()
        assert data == wheel.read_bytes()
        return data

    return publish_and_fetch


async def test_bucket_feed_uses_its_proxy_key(
    monkeypatch: pytest.MonkeyPatch,
    start_fake: StartFake,
    seaweed: SeaweedServer,
    bucket_feed: Any,
) -> None:
    """A hosted feed stored in a bucket reaches the bucket through its upstream's ``proxy:``
    (credentials sent as Proxy-Authorization), like the ``s3`` kind, for uploads and
    downloads, even when the environment names no proxy."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    forward = await start_fake(ForwardProxy(credentials=("ci", "s3cret")))
    await bucket_feed(proxy=forward.base_url.replace("http://", "http://ci:s3cret@"))
    objects = {
        seen.split("?")[0].rsplit("/", 1)[-1]
        for seen in forward.seen
        if seen.startswith(seaweed.endpoint)
    }
    assert "numpy-2.0.dev0-py3-none-any.whl" in objects, forward.seen


async def test_bucket_feed_follows_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch,
    start_fake: StartFake,
    seaweed: SeaweedServer,
    bucket_feed: Any,
) -> None:
    """With HTTP_PROXY set and no ``proxy:`` key, a bucket-stored hosted feed goes through the
    environment's proxy, as every other kind does."""
    forward = await start_fake(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", forward.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    await bucket_feed()
    assert any(seen.startswith(seaweed.endpoint) for seen in forward.seen), forward.seen


async def test_bucket_feed_no_proxy_bypasses_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch, start_fake: StartFake, bucket_feed: Any
) -> None:
    """A bucket endpoint listed in NO_PROXY is reached directly, not through HTTP_PROXY."""
    forward = await start_fake(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", forward.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    await bucket_feed()
    assert forward.seen == []
