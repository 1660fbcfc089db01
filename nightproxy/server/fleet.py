"""The server's side of the shared tier: its lifecycle, the peer endpoint, status and metrics.

``/_fleet/fills/<key>`` serves another replica the bytes of a fill this one is running (as they
arrive, the last one only once verified) or of the finished copy on its disk. Only replicas of
the fleet may ask: they prove it with the token derived from the store's secret key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from nightproxy.cache.fill import Fill, FillError
from nightproxy.cache.keys import is_file_key
from nightproxy.cache.service import CacheService, CacheUnavailableError
from nightproxy.cache.shared.fleetfill import Opener
from nightproxy.cache.shared.peer import PEER_HEADER, token_matches
from nightproxy.cache.shared.settings import settings_from_config
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.index.shared_state import SharedIndexState
from nightproxy.server import keys
from nightproxy.server.errors import download_failed
from nightproxy.server.streaming import OCTET, BlobResponse, stream_fill

log = logging.getLogger(__name__)


async def shared_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    shared = config.cache.shared
    if shared is None:
        app[keys.SHARED] = None
        yield
        return
    settings = settings_from_config(shared, config.server.port)
    tier = SharedTier(app[keys.SESSION], settings)
    app[keys.SHARED] = tier
    app[keys.METRICS].registry.register(_FleetCollector(tier))
    state = app[keys.INDEX_STATE]
    if isinstance(state, SharedIndexState):
        state.attach(tier)
    tier.start()
    log.info(
        "shared tier s3://%s/%s as replica %s (peers reach it at %s)",
        settings.store.bucket,
        settings.store.prefix,
        settings.replica_id,
        settings.peer_url,
    )
    yield
    await tier.close()


def setup_fleet_routes(app: web.Application) -> None:
    app.router.add_get("/_fleet/fills/{key}", peer_fill)


async def peer_fill(request: web.Request) -> web.StreamResponse:
    tier = request.app[keys.SHARED]
    key = request.match_info["key"]
    presented = request.headers.get(PEER_HEADER)
    if tier is None or not token_matches(tier.settings.peer_secret, presented):
        raise web.HTTPForbidden(text="not a replica of this fleet\n")
    if not is_file_key(key):
        raise web.HTTPNotFound(text="no such file\n")
    cache = request.app[keys.CACHE]
    sha = cache.store.resolve(key)
    # With several worker processes, the one answering may not be the one filling.
    fill = cache.fills.get(key) if sha is not None else await cache.running_fill(key)
    if fill is not None:
        fill.join()
        try:
            await fill.wait_started()
            if fill.hit is None:
                return await stream_fill(request, fill, None)
            sha = fill.hit
        except FillError as exc:
            raise download_failed(exc) from None
        finally:
            fill.leave()
    try:
        blob = None if sha is None else await cache.open_blob(sha)
    except CacheUnavailableError as exc:
        raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
    if blob is not None:
        return BlobResponse(blob, OCTET)
    raise web.HTTPNotFound(text="no fill or copy of that file here\n")


def shared_opener(
    app: web.Application, key: str, expected_sha256: str | None, upstream: Opener
) -> Opener:
    """What a fill of ``key`` reads: the upstream alone, or through the shared tier."""
    tier = app[keys.SHARED]
    if tier is None:
        return upstream
    return lambda: tier.open_file(key, expected_sha256, upstream)


def shared_filled(app: web.Application, fill: Fill) -> None:
    """Tell the shared tier how a local fill ended (it may share the copy, release a lease)."""
    tier = app[keys.SHARED]
    if tier is None:
        return
    sha = fill.sha256 if fill.cached else None
    tier.filled(fill.key, sha, _pinned_copy(app[keys.CACHE], sha) if sha is not None else None)


@asynccontextmanager
async def _pinned_copy(cache: CacheService, sha256: str) -> AsyncIterator[Path | None]:
    try:
        blob = await cache.open_blob(sha256)
    except CacheUnavailableError:
        blob = None
    try:
        yield None if blob is None else blob.path
    finally:
        if blob is not None:
            blob.release()


def shared_status(app: web.Application) -> dict[str, object] | None:
    tier = app[keys.SHARED]
    return tier.describe() if tier is not None else None


def shared_status_rows(app: web.Application) -> str:
    """Rows of the status page's cache table about the shared tier (none without one)."""
    tier = app[keys.SHARED]
    if tier is None:
        return ""
    health = tier.health
    state = "ok" if health.ok else "degraded"
    error = f" ({escape(health.last_error)})" if not health.ok and health.last_error else ""
    store = tier.settings.store
    return (
        f"<tr><th>Replica</th><td>{escape(tier.replica_id)}</td></tr>"
        f"<tr><th>Shared store</th><td>s3://{escape(store.bucket)}/{escape(store.prefix)} "
        f"<span class='state-{'ok' if health.ok else 'down'}' id='shared-state'>{state}</span>"
        f"{error}</td></tr>"
    )


class _FleetCollector(Collector):
    def __init__(self, tier: SharedTier) -> None:
        self.tier = tier

    def collect(self) -> Iterator[Metric]:
        tier = self.tier
        info = InfoMetricFamily("nightproxy_replica", "This replica of the fleet")
        info.add_metric([], {"replica": tier.replica_id})
        yield info
        yield GaugeMetricFamily(
            "nightproxy_shared_store_up",
            "1 while the shared store answers, 0 while it is degraded",
            value=1.0 if tier.health.ok else 0.0,
        )
        failures = CounterMetricFamily(
            "nightproxy_shared_store_failures",
            "Failed shared-store requests, by kind (down, throttled, failed, denied)",
            labels=["kind"],
        )
        for kind, count in sorted(tier.health.failures.items()):
            failures.add_metric([kind], count)
        yield failures
        events = CounterMetricFamily(
            "nightproxy_shared_events",
            "Shared-tier events: store_hits, peer_streams, upstream_fills, direct_fills, "
            "uploads, upload_failures, resumed, pruned",
            labels=["event"],
        )
        for event, count in sorted(tier.stats.items()):
            events.add_metric([event], count)
        yield events
