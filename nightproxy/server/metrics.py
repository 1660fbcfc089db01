"""Prometheus metrics, with the official client and a registry per application.

Counters that the cache and index already keep (evictions, hash mismatches, stale pages, bytes)
are read at scrape time by a collector instead of being counted twice. With several worker
processes, ``/metrics`` and the status page add up every worker's figures
(``shared_metrics``).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nightproxy.cache.fills import FillManager
from nightproxy.cache.remote_metadata import RemoteMetadata
from nightproxy.cache.service import CacheService
from nightproxy.cache.store import CacheStore
from nightproxy.index.health import UpstreamHealth
from nightproxy.index.service import IndexService
from nightproxy.server.connections import ConnectionGate
from nightproxy.server.shared_metrics import (
    SharedDir,
    Snapshot,
    WholeServer,
    decode,
    encode,
    health_of,
    merge_families,
    merge_health,
    whole_server,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LiveCollector(Collector):
    def __init__(self, cache: CacheService, index: IndexService, remote: RemoteMetadata) -> None:
        self.cache = cache
        self.store: CacheStore = cache.store
        self.fills: FillManager = cache.fills
        self.index = index
        self.remote = remote

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "nightproxy_cache_bytes", "Bytes of cached files on disk", value=self.store.used_bytes
        )
        yield GaugeMetricFamily(
            "nightproxy_cache_budget_bytes", "Configured cache.max_size", value=self.store.max_size
        )
        yield GaugeMetricFamily(
            "nightproxy_cache_files", "Number of cached files", value=self.store.file_count
        )
        yield CounterMetricFamily(
            "nightproxy_cache_evictions", "Files evicted by size or age", value=self.store.evictions
        )
        yield CounterMetricFamily(
            "nightproxy_cache_fetched_bytes",
            "Bytes downloaded from upstreams into the cache",
            value=self.fills.upstream_bytes,
        )
        yield CounterMetricFamily(
            "nightproxy_hash_mismatches",
            "Downloads rejected because their sha256 did not match the index",
            value=self.fills.hash_mismatches,
        )
        yield CounterMetricFamily(
            "nightproxy_cache_corrupt_files",
            "Cached files whose bytes no longer matched their sha256 (evicted, fetched again)",
            value=self.cache.corrupt_blobs,
        )
        yield CounterMetricFamily(
            "nightproxy_stalled_downloads",
            "Downloads abandoned because the upstream sent too little for too long",
            value=self.fills.stalls,
        )
        yield GaugeMetricFamily(
            "nightproxy_downloads_in_flight",
            "Upstream downloads running now",
            value=self.fills.in_flight,
        )
        yield CounterMetricFamily(
            "nightproxy_stale_pages_served",
            "Upstream pages served from their last good copy because the upstream failed",
            value=self.index.stale_pages_served,
        )
        reads = CounterMetricFamily(
            "nightproxy_metadata_range_reads",
            "Wheel METADATA looked for by byte ranges, by outcome: read, or download instead",
            labels=["outcome"],
        )
        reads.add_metric(["read"], self.remote.reads)
        reads.add_metric(["download"], self.remote.fallbacks)
        yield reads
        yield CounterMetricFamily(
            "nightproxy_metadata_range_bytes",
            "Bytes fetched from upstreams by byte-range metadata reads",
            value=self.remote.range_bytes,
        )
        up = GaugeMetricFamily(
            "nightproxy_upstream_up",
            "1 if the upstream's last request succeeded",
            labels=["upstream"],
        )
        for name, health in self.index.health.items():
            up.add_metric([name], 1.0 if health.failures == 0 else 0.0)
        yield up


#: Upper bounds (seconds) of the request duration histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RequestStats(Collector):
    """Per-request counters as plain numbers, exported at scrape time.

    Every request is counted, and the official client's ``inc``/``observe`` take a lock and
    walk the buckets in Python on each call: several microseconds of a cached page request
    that costs a few dozen. The event loop is the only writer, so no lock is needed here.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        #: route -> [count per bucket (the last one is +Inf)..., sum of seconds]
        self.latency: dict[str, list[float]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "nightproxy_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for (route, status), count in sorted(self.counts.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "nightproxy_request_duration_seconds",
            "Time to answer a request (headers and body)",
            labels=["route"],
        )
        bounds = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for route, row in sorted(self.latency.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, observed in zip(bounds, row[:-1], strict=True):
                cumulative += observed
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, sum_value=row[-1])
        yield latency


class _Connections(Collector):
    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "nightproxy_connections", "Client connections open now", value=self.gate.open
        )
        yield CounterMetricFamily(
            "nightproxy_connections_refused",
            "Client connections answered 503 because server.max_connections were open",
            value=self.gate.refused,
        )


class _Fixed(Collector):
    """Families already gathered (the whole server's)."""

    def __init__(self, families: list[dict[str, Any]]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return decode(self.families)


class Metrics:
    def __init__(self, shared: SharedDir | None = None) -> None:
        #: Where the workers of a server with several share their figures; None: one process.
        self.shared = shared
        self._index: IndexService | None = None
        self._fills: FillManager | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.cache = Counter(
            "nightproxy_cache_requests",
            "File requests by cache result (hit or miss)",
            ["result"],
            registry=self.registry,
        )
        self.served_bytes = Counter(
            "nightproxy_served_bytes",
            "File bytes sent to clients, by where they came from (cache or upstream)",
            ["source"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "nightproxy_upstream_request_duration_seconds",
            "Upstream page request latency",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "nightproxy_upstream_errors",
            "Failed upstream page requests",
            ["upstream"],
            registry=self.registry,
        )
        self.hits = 0
        self.misses = 0

    def bind(self, cache: CacheService, index: IndexService, remote: RemoteMetadata) -> None:
        self.registry.register(_LiveCollector(cache, index, remote))
        index.on_upstream_request = self.observe_upstream
        self._index = index
        self._fills = cache.fills

    def watch_connections(self, gate: ConnectionGate) -> None:
        self.registry.register(_Connections(gate))

    def observe_upstream(self, upstream: str, seconds: float, ok: bool) -> None:
        self.upstream_latency.labels(upstream).observe(seconds)
        if not ok:
            self.upstream_errors.labels(upstream).inc()

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.observe(route, status, seconds)

    def observe_file(self, result: str, size: int) -> None:
        self.cache.labels(result).inc()
        self.served_bytes.labels("cache" if result == "hit" else "upstream").inc(size)
        if result == "hit":
            self.hits += 1
        else:
            self.misses += 1

    @property
    def hit_ratio(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None

    def render(self) -> bytes:
        """This process's metrics."""
        return generate_latest(self.registry)

    def _health(self) -> dict[str, UpstreamHealth]:
        return self._index.health if self._index is not None else {}

    def snapshot(self) -> Snapshot:
        """This process's figures, as other workers read them."""
        return {
            "pid": os.getpid(),
            "families": encode(self.registry.collect()),
            "health": health_of(self._health()),
        }

    async def _gathered(self) -> tuple[list[dict[str, Any]], dict[str, UpstreamHealth]]:
        assert self.shared is not None
        # Collected here on the event loop, which is the only writer of the live figures;
        # only the other workers' files are read in a thread.
        own = self.snapshot()
        others = await asyncio.to_thread(self.shared.others)
        families = merge_families(
            [(own["families"], True), *((s.get("families", []), live) for s, live in others)]
        )
        health = merge_health([own["health"], *(s.get("health", {}) for s, live in others if live)])
        return families, health

    async def render_whole(self) -> bytes:
        """The whole server's metrics: every worker's, or this process's when it is alone."""
        if self.shared is None:
            return self.render()
        families, _health = await self._gathered()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)

    async def server_health(self) -> dict[str, UpstreamHealth]:
        """Every upstream's health for the whole server: as the worker that heard from it
        last saw it, so that every worker answers readiness alike."""
        if self.shared is None:
            return self._health()
        own = health_of(self._health())
        others = await asyncio.to_thread(self.shared.others)
        return merge_health([own, *(s.get("health", {}) for s, live in others if live)])

    async def whole_server(self) -> WholeServer:
        """The status page's figures for the whole server."""
        if self.shared is None:
            in_flight = self._fills.in_flight if self._fills is not None else 0
            return WholeServer(self.hits, self.misses, in_flight, self._health())
        families, health = await self._gathered()
        return whole_server(families, health)
