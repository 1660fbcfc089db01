"""The application factory: wiring only, no state at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from nightproxy import __version__
from nightproxy.cache.fills import FillManager
from nightproxy.cache.remote_metadata import RemoteMetadata
from nightproxy.cache.service import CacheService, Verified
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.index.service import IndexService
from nightproxy.index.shared_state import SharedIndexState
from nightproxy.index.state import IndexState
from nightproxy.logs import BATCH_SECONDS, flush_logs
from nightproxy.server import feeds, fleet, handlers, keys, oidc
from nightproxy.server.access import ConnectionLog, access_logger_for
from nightproxy.server.metrics import Metrics
from nightproxy.server.shared_metrics import INTERVAL, SharedDir
from nightproxy.server.tls import load_tls
from nightproxy.server.upload import setup_upload_routes
from nightproxy.simple_api.filenames import METADATA_SUFFIX, parse_dist_filename

log = logging.getLogger(__name__)

#: How often recency is flushed to disk and the age sweep runs.
MAINTENANCE_INTERVAL = 30.0
#: How often this process takes in what other processes cached or evicted.
SYNC_INTERVAL = 1.0
#: On shutdown, after clients' responses are done (``serve``'s shutdown timeout), how long
#: downloads nobody waits for any more may run on to finish filling the cache.
DRAIN_TIMEOUT = 25.0


def create_app(config: Config, *, shared: SharedDir | None = None) -> web.Application:
    """The proxy's application; ``shared``: where it shares its figures with the other worker
    processes of the server, if there are any."""
    # No middlewares: with any, aiohttp adds a wrapper of its own to every request, and the one
    # error they would map (every upstream failing) is answered by the handlers that meet it.
    metrics = Metrics(shared)
    app = web.Application(
        client_max_size=1024**2,
        handler_args={
            "access_log_class": access_logger_for(metrics),
            "access_log": logging.getLogger("nightproxy.access"),
            "logger": ConnectionLog(logging.getLogger("aiohttp.server")),
        },
    )
    app[keys.CONFIG] = config
    app[keys.METRICS] = metrics
    # The index's state first: it takes over its tables from the cache's database of
    # nightproxy 0.x before the cache brings that database forward.
    app.cleanup_ctx.append(_index_state_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(fleet.shared_ctx)
    app.cleanup_ctx.append(feeds.feeds_ctx)
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_maintenance_ctx)
    tls = load_tls(config)
    if tls is not None:
        app[keys.TLS] = tls
        app.cleanup_ctx.append(_tls_ctx)
    handlers.setup_routes(app)
    oidc.setup_trusted_publishing(app)
    fleet.setup_fleet_routes(app)
    setup_upload_routes(app)
    return app


async def _index_state_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    # With a shared tier, the state is written through to the store once the tier exists.
    state = (IndexState if config.cache.shared is None else SharedIndexState)(config.cache.dir)
    await asyncio.to_thread(state.open)
    app[keys.INDEX_STATE] = state
    yield
    await asyncio.to_thread(state.close)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    store = CacheStore(config.cache.dir, config.cache.max_size, config.cache.max_age)
    await asyncio.to_thread(store.open)
    await asyncio.to_thread(store.expired)
    log.info(
        "cache %s: %d files, %d bytes of %d",
        config.cache.dir,
        store.file_count,
        store.used_bytes,
        store.max_size,
    )
    app[keys.STORE] = store
    yield
    await asyncio.to_thread(store.close)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=100, limit_per_host=32, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"nightproxy/{__version__}"},
        auto_decompress=True,
        # The environment's HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as every other HTTP client in a
        # CI job behind an egress proxy honours them; an upstream's ``proxy:`` overrides them.
        trust_env=True,
    )
    app[keys.SESSION] = session
    yield
    await session.close()
    # Let SSL transports finish closing before the loop goes away (aiohttp's advice).
    await asyncio.sleep(0.1)


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    session = app[keys.SESSION]
    upstreams = feeds.make_upstreams(app, session)
    app[keys.UPSTREAMS] = upstreams
    app[keys.INDEX] = IndexService(config, upstreams, app[keys.STORE], app[keys.INDEX_STATE])
    app[keys.INDEX].start()
    feeds.follow_feeds(app)
    app[keys.FILLS] = FillManager(
        app[keys.STORE],
        min_rate=config.cache.fill_min_rate,
        stall_timeout=config.cache.fill_stall_timeout,
    )
    app[keys.CACHE] = CacheService(app[keys.STORE], app[keys.FILLS])
    app[keys.REMOTE_METADATA] = RemoteMetadata()
    app[keys.CACHE].subscribe(_on_verified(app))
    app[keys.FILLS].on_settled.append(lambda fill: fleet.shared_filled(app, fill))
    app[keys.METRICS].bind(app[keys.CACHE], app[keys.INDEX], app[keys.REMOTE_METADATA])
    yield
    await app[keys.REMOTE_METADATA].close()
    await app[keys.FILLS].drain(timeout=DRAIN_TIMEOUT)
    await app[keys.INDEX].close()
    for upstream in upstreams.values():
        await upstream.close()


async def _tls_ctx(app: web.Application) -> AsyncIterator[None]:
    watcher = asyncio.create_task(app[keys.TLS].watch(), name="TLS certificate watcher")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


def _on_verified(app: web.Application) -> Callable[[Verified], None]:
    """What a newly verified file changes outside the cache: its metadata is read from the
    stored wheel from now on, and the project's page may publish the hash and size."""
    index = app[keys.INDEX]
    remote = app[keys.REMOTE_METADATA]

    def verified(event: Verified) -> None:
        remote.forget(event.key)
        dist = parse_dist_filename(event.filename.removesuffix(METADATA_SUFFIX))
        if dist is not None:
            index.invalidate(dist.project)

    return verified


async def _maintenance(app: web.Application) -> None:
    cache = app[keys.CACHE]
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL)
        try:
            victims = await cache.maintain()
            if victims:
                log.info("age sweep evicted %d files", len(victims))
        except Exception:
            log.exception("cache maintenance failed")


async def _sync(app: web.Application) -> None:
    cache = app[keys.CACHE]
    while True:
        await asyncio.sleep(SYNC_INTERVAL)
        try:
            await cache.sync()
        except Exception:
            log.exception("reading the cache's changes failed")


def _scrub(app: web.Application) -> list[asyncio.Task[None]]:
    rate = app[keys.CONFIG].cache.scrub_rate
    if not rate:
        return []
    return [asyncio.create_task(app[keys.CACHE].scrub(rate).run(), name="cache scrub")]


async def _flush_logs_periodically() -> None:
    while True:
        await asyncio.sleep(BATCH_SECONDS)
        flush_logs()


async def _share_metrics(metrics: Metrics, shared: SharedDir) -> None:
    while True:
        try:
            await asyncio.to_thread(shared.write, metrics.snapshot())
        except OSError as exc:
            log.warning("cannot share this worker's metrics in %s: %s", shared.directory, exc)
        await asyncio.sleep(INTERVAL)


async def _maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(_maintenance(app), name="cache maintenance"),
        asyncio.create_task(_sync(app), name="cache sync"),
        *_scrub(app),
        asyncio.create_task(_flush_logs_periodically(), name="log flusher"),
    ]
    metrics = app[keys.METRICS]
    if metrics.shared is not None:
        tasks.append(asyncio.create_task(_share_metrics(metrics, metrics.shared), name="metrics"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if metrics.shared is not None:
        # The last requests of a worker that stops count too.
        with contextlib.suppress(OSError):
            await asyncio.to_thread(metrics.shared.write, metrics.snapshot())
    flush_logs()
