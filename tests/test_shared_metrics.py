"""How the figures of several worker processes add up (``server/shared_metrics.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nightproxy.index.health import UpstreamHealth
from nightproxy.server.shared_metrics import (
    RETIRED,
    SharedDir,
    merge_families,
    merge_health,
    prepare,
    retire,
)


def family(name: str, kind: str, value: float, **labels: str) -> dict[str, Any]:
    sample = f"{name}_total" if kind == "counter" else name
    return {"name": name, "type": kind, "help": "h", "samples": [[sample, labels, value]]}


def value(families: list[dict[str, Any]], name: str) -> float | None:
    for fam in families:
        if fam["name"] == name:
            return float(fam["samples"][0][2])
    return None


counts = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=6)


@given(counts)
def test_a_counter_of_the_whole_server_is_the_sum_of_the_workers(values: list[int]) -> None:
    """A counter adds up over every worker, live or retired."""
    parts = [([family("x", "counter", v)], i % 2 == 0) for i, v in enumerate(values)]
    assert value(merge_families(parts), "x") == sum(values)


@given(counts)
def test_merging_does_not_depend_on_the_order_of_the_workers(values: list[int]) -> None:
    """Whichever worker answers (its own figures first), the total is the same."""
    parts = [([family("x", "counter", v, route="/")], True) for v in values]
    assert merge_families(parts) == merge_families(list(reversed(parts)))


@given(counts)
def test_in_flight_downloads_are_summed_and_shared_state_is_not(values: list[int]) -> None:
    """A gauge of each process's own work is summed; one of the state the workers share (the
    cache's size, the same seen from each) is not."""
    parts = [
        (
            [
                family("nightproxy_downloads_in_flight", "gauge", v),
                family("nightproxy_cache_bytes", "gauge", v),
            ],
            True,
        )
        for v in values
    ]
    merged = merge_families(parts)
    assert value(merged, "nightproxy_downloads_in_flight") == sum(values)
    assert value(merged, "nightproxy_cache_bytes") == max(values)


def test_a_retired_workers_gauges_do_not_count() -> None:
    """Downloads a dead worker had in flight are over; its counters still count."""
    live = [family("nightproxy_downloads_in_flight", "gauge", 1), family("x", "counter", 2)]
    dead = [family("nightproxy_downloads_in_flight", "gauge", 5), family("x", "counter", 3)]
    merged = merge_families([(live, True), (dead, False)])
    assert value(merged, "nightproxy_downloads_in_flight") == 1
    assert value(merged, "x") == 5


def test_an_upstream_is_reported_as_the_worker_that_heard_from_it_last_saw_it() -> None:
    """One worker's old failure does not hide another's later success, nor the reverse."""
    old_failure = UpstreamHealth(failures=1, last_error="timeout", last_error_at=10.0)
    later_success = UpstreamHealth(last_success=20.0)
    merged = merge_health([_one(old_failure), _one(later_success)])
    assert merged["main"].state == "ok"
    merged = merge_health([_one(UpstreamHealth(last_success=5.0)), _one(old_failure)])
    assert merged["main"].state == "down"


def _one(health: UpstreamHealth) -> dict[str, dict[str, Any]]:
    return {"main": asdict(health)}


def test_a_dead_workers_counts_are_kept_when_it_is_retired(tmp_path: Path) -> None:
    """The parent folds a dead worker's snapshot into ``retired.json``: its counts stay in
    what every other worker reports, twice retired they add up."""
    prepare(tmp_path)
    for pid, count in ((101, 3), (102, 4)):
        SharedDir(tmp_path, pid).write({"families": [family("x", "counter", count)]})
        retire(tmp_path, pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RETIRED]
    survivor = SharedDir(tmp_path, 103)
    ((snapshot, live),) = survivor.others()
    assert not live
    assert value(snapshot["families"], "x") == 7


def test_a_worker_does_not_read_its_own_snapshot_as_another(tmp_path: Path) -> None:
    """Its own figures come live, not also from its file (they would count twice)."""
    prepare(tmp_path)
    own = SharedDir(tmp_path, 201)
    own.write({"families": [family("x", "counter", 1)]})
    SharedDir(tmp_path, 202).write({"families": [family("x", "counter", 2)]})
    assert [json.dumps(s) for s, _live in own.others()] == [
        json.dumps({"families": [family("x", "counter", 2)]})
    ]
