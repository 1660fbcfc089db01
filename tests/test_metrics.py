"""The request metrics kept as plain numbers expose exactly what the official client would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nightproxy.server.metrics import LATENCY_BUCKETS, RequestStats

ROUTES = st.sampled_from(["/simple/{project}/", "/files/{project}/{key}/{filename}", "/healthz"])
STATUSES = st.sampled_from([200, 304, 404, 502])
# Bucket bounds themselves are included: an observation equal to a bound belongs to it.
SECONDS = st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 60, allow_nan=False))
OBSERVATIONS = st.lists(st.tuples(ROUTES, STATUSES, SECONDS), max_size=60)


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): round(s.value, 6)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(OBSERVATIONS)
def test_request_stats_expose_what_the_official_client_would(
    observations: list[tuple[str, int, float]],
) -> None:
    """Counts by route and status, and the duration histogram (buckets, count, sum), match an
    official Counter and Histogram fed the same observations, sample for sample."""
    ours = CollectorRegistry()
    stats = RequestStats()
    ours.register(stats)
    theirs = CollectorRegistry()
    counter = Counter("nightproxy_requests", "HTTP requests", ["route", "status"], registry=theirs)
    histogram = Histogram(
        "nightproxy_request_duration_seconds",
        "duration",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    for route, status, seconds in observations:
        stats.observe(route, status, seconds)
        counter.labels(route, str(status)).inc()
        histogram.labels(route).observe(seconds)
    assert samples(ours) == samples(theirs)
