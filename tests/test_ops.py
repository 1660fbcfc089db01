"""Operations endpoints: ``/healthz``, ``/readyz`` per upstream state, ``/metrics``, JSON logs.

The proxy and the fake upstream listen on real loopback sockets; the JSON log test runs the real
``nightproxy serve`` as a subprocess so that what it writes to stderr is exactly what an operator
would collect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from nightproxy.index.health import BREAKER_THRESHOLD
from tests.conftest import PIP_ACCEPT, MakeConfig, StartProxy, simple_url
from tests.fakes import FakeSimpleIndex
from tests.support import free_port, nightproxy_serve
from tests.wheels import wheel_filename

WAIT = 20.0  # upper bound for any single wait; never an assertion about speed
DEMO = wheel_filename("demo", "1.0")
ROUTE_FILE = "/files/{project}/{key}/{filename}"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers --------------------------------------------------------------------------------------


def upstream_config(fake: FakeSimpleIndex, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "main", "kind": "simple", "url": simple_url(fake), **extra}]


async def get_json(http: aiohttp.ClientSession, url: URL) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as resp:
        return resp.status, json.loads(await resp.read())


async def page(http: aiohttp.ClientSession, proxy: TestServer, project: str) -> int:
    async with http.get(proxy.make_url(f"/simple/{project}/"), headers={"Accept": PIP_ACCEPT}) as r:
        await r.read()
        return r.status


async def download(http: aiohttp.ClientSession, proxy: TestServer, filename: str) -> bytes:
    """The bytes of ``filename`` of project demo, through the proxy's own page links."""
    page_url = proxy.make_url("/simple/demo/")
    async with http.get(page_url, headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200, await resp.text()
        doc = json.loads(await resp.read())
    entry = next(f for f in doc["files"] if f["filename"] == filename)
    async with http.get(page_url.join(URL(entry["url"]))) as resp:
        assert resp.status == 200
        return await resp.read()


async def scrape(http: aiohttp.ClientSession, base: URL) -> Samples:
    """Every sample of ``/metrics``, parsed by the Prometheus client's own parser."""
    async with http.get(base.join(URL("/metrics"))) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_for_metric(
    http: aiohttp.ClientSession, base: URL, check: Callable[[Samples], bool]
) -> Samples:
    """Scrape until ``check`` holds (the access log records a request just after its last byte)."""
    async with asyncio.timeout(WAIT):
        while True:
            samples = await scrape(http, base)
            if check(samples):
                return samples
            await asyncio.sleep(0.02)


# -- /healthz and /readyz -------------------------------------------------------------------------


async def test_healthz_answers_ok(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """Liveness is a plain 200 JSON answer that needs no upstream."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    status, body = await get_json(http, proxy.make_url("/healthz"))
    assert status == 200
    assert body == {"status": "ok"}
    assert simple_upstream.requests == []


async def test_readyz_ok_with_a_healthy_upstream(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    """After a successful page fetch the upstream is ``ok`` with a last success and no error."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    assert await page(http, proxy, "demo") == 200
    status, body = await get_json(http, proxy.make_url("/readyz"))
    assert status == 200
    assert body["status"] == "ready"
    main = body["upstreams"]["main"]
    assert main["state"] == "ok"
    assert main["last_success"] is not None
    assert main["last_error"] is None
    assert body["cache"]["dir"] == str(tmp_path / "cache")
    assert body["cache"]["writable"] is True
    assert body["cache"]["files"] == 0


async def test_readyz_503_when_the_only_upstream_is_down_and_the_cache_is_empty(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """An upstream failing until its circuit breaker opens, with nothing cached: not ready,
    state ``down`` with its error."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream), index={"ttl": "0s"}))
    simple_upstream.down = True
    for _ in range(BREAKER_THRESHOLD):
        assert await page(http, proxy, "demo") == 502
    status, body = await get_json(http, proxy.make_url("/readyz"))
    assert status == 503
    assert body["status"] == "unavailable"
    main = body["upstreams"]["main"]
    assert main["state"] == "down"
    assert main["last_error"]
    assert "503" in main["last_error"]
    assert main["last_error_at"] is not None
    assert body["cache"]["files"] == 0


async def test_readyz_stale_when_a_last_good_page_was_served(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """Upstream fails after one success (ttl 0): its old page is served and it reads ``stale``."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream), index={"ttl": "0s"}))
    assert await page(http, proxy, "demo") == 200
    simple_upstream.down = True
    async with http.get(proxy.make_url("/simple/demo/"), headers={"Accept": PIP_ACCEPT}) as resp:
        assert resp.status == 200
        assert resp.headers.get("X-Nightproxy-Stale") == "main"
    status, body = await get_json(http, proxy.make_url("/readyz"))
    assert status == 200
    assert body["status"] == "ready"
    main = body["upstreams"]["main"]
    assert main["state"] == "stale"
    assert main["last_success"] is not None
    assert main["last_error"]


async def test_readyz_ready_from_the_cache_while_the_upstream_is_down(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """With files cached the proxy can still serve: 200 even though the upstream is ``down``."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    await download(http, proxy, DEMO)
    simple_upstream.down = True
    assert await page(http, proxy, "other") == 502
    status, body = await get_json(http, proxy.make_url("/readyz"))
    assert body["upstreams"]["main"]["state"] == "down"
    assert body["cache"]["files"] == 1
    assert status == 200


# -- /metrics -------------------------------------------------------------------------------------


async def test_every_metric_is_prefixed_nightproxy(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """All families and samples the exposition holds are named ``nightproxy_*``."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    await download(http, proxy, DEMO)
    async with http.get(proxy.make_url("/metrics")) as resp:
        text = await resp.text()
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    # The list of what must be measured, by family name.
    for expected in (
        "nightproxy_requests",
        "nightproxy_request_duration_seconds",
        "nightproxy_cache_requests",
        "nightproxy_served_bytes",
        "nightproxy_cache_fetched_bytes",
        "nightproxy_cache_evictions",
        "nightproxy_cache_bytes",
        "nightproxy_cache_files",
        "nightproxy_upstream_request_duration_seconds",
        "nightproxy_upstream_errors",
        "nightproxy_stale_pages_served",
        "nightproxy_hash_mismatches",
        "nightproxy_downloads_in_flight",
    ):
        assert expected in names, f"{expected} missing from /metrics"
    offenders = [
        s.name for f in families for s in f.samples if not s.name.startswith("nightproxy_")
    ]
    assert offenders == []


async def test_cache_counters_move_one_miss_then_one_hit(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """Downloading the same file twice counts one miss, then one hit, and one cached file."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    base = proxy.make_url("/")
    before = await scrape(http, base)
    assert value(before, "nightproxy_cache_requests_total", result="miss") == 0
    assert value(before, "nightproxy_cache_requests_total", result="hit") == 0
    await download(http, proxy, DEMO)
    after_miss = await wait_for_metric(
        http, base, lambda s: value(s, "nightproxy_cache_requests_total", result="miss") == 1
    )
    assert value(after_miss, "nightproxy_cache_requests_total", result="hit") == 0
    await download(http, proxy, DEMO)
    after_hit = await wait_for_metric(
        http, base, lambda s: value(s, "nightproxy_cache_requests_total", result="hit") == 1
    )
    assert value(after_hit, "nightproxy_cache_requests_total", result="miss") == 1
    assert value(after_hit, "nightproxy_cache_files") == 1


async def test_served_bytes_are_counted_by_source(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
    wheelhouse: Path,
) -> None:
    """A miss adds the file's size to source=upstream and to fetched bytes; a hit to cache."""
    size = (wheelhouse / DEMO).stat().st_size
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    base = proxy.make_url("/")
    body = await download(http, proxy, DEMO)
    assert len(body) == size
    first = await wait_for_metric(
        http, base, lambda s: value(s, "nightproxy_served_bytes_total", source="upstream") > 0
    )
    assert value(first, "nightproxy_served_bytes_total", source="upstream") == size
    assert value(first, "nightproxy_served_bytes_total", source="cache") == 0
    assert value(first, "nightproxy_cache_fetched_bytes_total") == size
    assert value(first, "nightproxy_cache_bytes") == size
    await download(http, proxy, DEMO)
    second = await wait_for_metric(
        http, base, lambda s: value(s, "nightproxy_served_bytes_total", source="cache") > 0
    )
    assert value(second, "nightproxy_served_bytes_total", source="cache") == size
    assert value(second, "nightproxy_served_bytes_total", source="upstream") == size
    assert value(second, "nightproxy_cache_fetched_bytes_total") == size


async def test_head_of_a_file_is_neither_a_hit_nor_a_miss(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """A HEAD of an uncached file downloads nothing, so it moves no cache or byte counter."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    page_url = proxy.make_url("/simple/demo/")
    async with http.get(page_url, headers={"Accept": PIP_ACCEPT}) as resp:
        doc = json.loads(await resp.read())
    entry = next(f for f in doc["files"] if f["filename"] == DEMO)
    async with http.head(page_url.join(URL(entry["url"]))) as resp:
        assert resp.status == 200
    base = proxy.make_url("/")
    samples = await wait_for_metric(
        http, base, lambda s: value(s, "nightproxy_requests_total", route=ROUTE_FILE, status="200")
    )
    assert simple_upstream.count(path_contains="/files/") == 0
    assert value(samples, "nightproxy_cache_requests_total", result="miss") == 0
    assert value(samples, "nightproxy_served_bytes_total", source="upstream") == 0


async def test_upstream_error_counter_moves_when_an_upstream_fails(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """A failed upstream page request is counted under its upstream's label; a good one not."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    base = proxy.make_url("/")
    assert await page(http, proxy, "demo") == 200
    ok = await scrape(http, base)
    assert value(ok, "nightproxy_upstream_errors_total", upstream="main") == 0
    assert value(ok, "nightproxy_upstream_request_duration_seconds_count", upstream="main") >= 1
    assert value(ok, "nightproxy_upstream_up", upstream="main") == 1
    simple_upstream.down = True
    assert await page(http, proxy, "other") == 502
    failed = await scrape(http, base)
    assert value(failed, "nightproxy_upstream_errors_total", upstream="main") >= 1
    assert value(failed, "nightproxy_upstream_up", upstream="main") == 0


async def test_requests_are_counted_by_route_and_status(
    http: aiohttp.ClientSession,
    simple_upstream: FakeSimpleIndex,
    make_config: MakeConfig,
    start_proxy: StartProxy,
) -> None:
    """Requests are labelled by route template (not by raw path) and status."""
    proxy = await start_proxy(make_config(upstream_config(simple_upstream)))
    base = proxy.make_url("/")
    assert await page(http, proxy, "demo") == 200
    assert await page(http, proxy, "no-such-project") == 404
    samples = await wait_for_metric(
        http,
        base,
        lambda s: (
            value(s, "nightproxy_requests_total", route="/simple/{project}/", status="404") == 1
        ),
    )
    assert (
        value(samples, "nightproxy_requests_total", route="/simple/{project}/", status="200") == 1
    )
    assert (
        value(samples, "nightproxy_request_duration_seconds_count", route="/simple/{project}/") == 2
    )
    assert not any("no-such-project" in dict(labels).get("route", "") for _n, labels in samples)


# -- JSON logs from the real command ----------------------------------------------------------

PASSWORD = "s3cretpw"
HEADER_TOKEN = "hdr-t0ken-5ecret"


async def test_json_logs_are_one_object_per_line_and_never_show_a_secret(
    http: aiohttp.ClientSession, simple_upstream: FakeSimpleIndex, tmp_path: Path
) -> None:
    """``serve --log-format json``: every stderr line parses, requests carry method/path/status,
    and neither the URL's password nor a header token appears in logs or ops pages."""
    base_url = simple_url(simple_upstream).replace("http://", f"http://user:{PASSWORD}@")
    dead_port = free_port()
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        "index:\n  ttl: 0s\n"
        "upstreams:\n"
        f"  - name: main\n    kind: simple\n    url: {base_url}\n"
        f"    headers:\n      X-Api-Key: {HEADER_TOKEN}\n"
        # Nothing listens here: connection errors name the URL, which must come out masked.
        f"  - name: dead\n    kind: simple\n"
        f"    url: http://user:{PASSWORD}@127.0.0.1:{dead_port}/simple/\n"
    )
    port = free_port()
    base = URL(f"http://127.0.0.1:{port}/")
    paths = ["/simple/demo/", "/simple/", "/readyz", "/", "/metrics", "/simple/nope/"]
    bodies: list[bytes] = []
    async with nightproxy_serve(
        ["--config", str(config), "--log-format", "json"],
        port,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        sigterm=False,
    ) as proc:
        for path in paths:
            async with http.get(base.join(URL(path)), headers={"Accept": PIP_ACCEPT}) as resp:
                bodies.append(await resp.read())
        # An upstream failure: its error goes to the log, /readyz and the status page.
        simple_upstream.down = True
        for path in ("/simple/demo/", "/readyz", "/"):
            async with http.get(base.join(URL(path)), headers={"Accept": PIP_ACCEPT}) as resp:
                bodies.append(await resp.read())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            stdout, stderr = await proc.communicate()
        assert proc.returncode == 0
    # The fake saw the credentials, so they really were in use.
    auth = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert any(r.headers.get("Authorization") == f"Basic {auth}" for r in simple_upstream.requests)
    assert any(r.headers.get("X-Api-Key") == HEADER_TOKEN for r in simple_upstream.requests)

    lines = stderr.decode().splitlines()
    assert lines, "no log output"
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "message"} <= record.keys()
        records.append(record)
    access = [r for r in records if r.get("logger") == "nightproxy.access"]
    for record in access:
        assert isinstance(record["method"], str)
        assert record["path"].startswith("/")
        assert isinstance(record["status"], int)
        assert {"bytes", "duration_ms", "cache"} <= record.keys()
    logged = {(r["path"], r["status"]) for r in access}
    assert ("/simple/demo/", 200) in logged
    assert any(path == "/simple/nope/" for path, _status in logged)
    assert len(access) >= len(paths) + 3
    assert any(r["level"] == "WARNING" for r in records), "the upstream failure was not logged"

    ready = json.loads(bodies[-2])
    assert ready["upstreams"]["main"]["last_error"], "the failure is not in /readyz"
    # The dead upstream's connection errors were logged (with its URL, masked).
    assert f"127.0.0.1:{dead_port}".encode() in stderr
    everything = stdout + stderr + b"".join(bodies)
    for secret in (PASSWORD, HEADER_TOKEN, auth):
        assert secret.encode() not in everything, f"{secret!r} leaked"
