"""Metrics and status for the whole server when several worker processes serve one port.

Each worker keeps its counters in memory, as a single process does (a request costs no file
write or lock), and every ``INTERVAL`` writes a snapshot of its registry and of its upstreams'
health to ``<cache.dir>/metrics/worker-<pid>.json``. Whichever worker answers ``/metrics`` or
the status page adds its own live figures to the other workers' latest snapshots, so every
worker gives the same answer, up to ``INTERVAL`` behind for the others' latest requests.

A worker that exits leaves its snapshot behind; the parent folds it into ``retired.json``, whose
counters and histograms still count (a counter of the whole server never goes down because a
worker was restarted) and whose gauges do not.

How a gauge of several workers adds up depends on what it measures: one process's own activity
(downloads in flight) is summed; state they share (the cache's size) is the same figure seen
from each, and the largest is taken. ``SUMMED_GAUGES`` names the first kind; any other gauge is
of the second, except ``MIN_GAUGES`` (an upstream counts as up only if every worker saw it up).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from nightproxy.index.health import UpstreamHealth

#: Seconds between two snapshots of a worker.
INTERVAL = 1.0
#: Gauges of one process's own activity: the whole server's figure is the workers' sum.
SUMMED_GAUGES = frozenset({"nightproxy_downloads_in_flight", "nightproxy_connections"})
#: Gauges where the whole server's figure is the smallest worker's.
MIN_GAUGES = frozenset({"nightproxy_upstream_up"})
#: Sample types that are summed across workers (gauges follow the rules above).
_COUNTING = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
RETIRED = "retired.json"

Snapshot = dict[str, Any]
_Key = tuple[str, tuple[tuple[str, str], ...]]


def prepare(directory: Path) -> None:
    """Empty the snapshot directory: a new server starts counting from zero."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def encode(families: Iterable[Metric]) -> list[dict[str, Any]]:
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in families
    ]


def health_of(health: dict[str, UpstreamHealth]) -> dict[str, dict[str, Any]]:
    return {name: asdict(h) for name, h in health.items()}


class SharedDir:
    """One worker's view of the snapshot directory."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self._last = ""

    @property
    def own(self) -> Path:
        return self.directory / f"worker-{self.pid}.json"

    def write(self, snapshot: Snapshot) -> None:
        """Disk I/O. Replace this worker's snapshot, if anything changed."""
        text = json.dumps(snapshot, separators=(",", ":"))
        if text == self._last:
            return
        tmp = self.own.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.own)
        self._last = text

    def others(self) -> list[tuple[Snapshot, bool]]:
        """Disk I/O. Every other worker's latest snapshot, and whether that worker is alive
        (retired snapshots are not)."""
        found: list[tuple[Snapshot, bool]] = []
        for path in sorted(self.directory.glob("*.json")):
            if path == self.own:
                continue
            with contextlib.suppress(OSError, ValueError):
                found.append((json.loads(path.read_text()), path.name != RETIRED))
        return found


def retire(directory: Path, pid: int) -> None:
    """Fold the snapshot of a worker that exited into ``retired.json`` (the parent does this,
    once it has reaped the worker, so nothing writes either file meanwhile)."""
    path = directory / f"worker-{pid}.json"
    try:
        snapshot = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    retired = directory / RETIRED
    try:
        before: list[dict[str, Any]] = json.loads(retired.read_text())["families"]
    except (OSError, ValueError, KeyError):
        before = []
    merged = merge_families([(before, False), (snapshot.get("families", []), False)])
    tmp = retired.with_suffix(".tmp")
    tmp.write_text(json.dumps({"families": merged}, separators=(",", ":")))
    tmp.replace(retired)
    path.unlink(missing_ok=True)


def merge_families(parts: Iterable[tuple[list[dict[str, Any]], bool]]) -> list[dict[str, Any]]:
    """The families of several workers as one, in encoded form; ``(families, alive)`` each."""
    merged: dict[str, tuple[str, str, dict[_Key, float]]] = {}
    for families, alive in parts:
        for family in families:
            kind = family["type"]
            name = family["name"]
            if kind not in _COUNTING and not alive:
                continue
            _, _, samples = merged.setdefault(name, (kind, family["help"], {}))
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                known = samples.get(key)
                samples[key] = value if known is None else _combine(kind, name, key, known, value)
    return [
        {
            "name": name,
            "type": kind,
            "help": text,
            "samples": [[sample, dict(labels), value] for (sample, labels), value in rows.items()],
        }
        for name, (kind, text, rows) in merged.items()
    ]


def _combine(kind: str, name: str, key: _Key, known: float, value: float) -> float:
    if key[0].endswith("_created"):
        return min(known, value)
    if kind in _COUNTING or name in SUMMED_GAUGES:
        return known + value
    if name in MIN_GAUGES:
        return min(known, value)
    return max(known, value)


def decode(families: list[dict[str, Any]]) -> Iterator[Metric]:
    for family in families:
        metric = Metric(family["name"], family["help"], family["type"])
        for sample_name, labels, value in family["samples"]:
            metric.add_sample(sample_name, labels, value)
        yield metric


def merge_health(parts: Iterable[dict[str, dict[str, Any]]]) -> dict[str, UpstreamHealth]:
    """Per upstream, the health as seen by the worker that heard from it last."""
    newest: dict[str, UpstreamHealth] = {}
    for part in parts:
        for name, fields in part.items():
            health = UpstreamHealth(**fields)
            known = newest.get(name)
            if known is None or _last_heard(health) > _last_heard(known):
                newest[name] = health
    return newest


def _last_heard(health: UpstreamHealth) -> float:
    return max(health.last_success or 0.0, health.last_error_at or 0.0)


@dataclass(frozen=True, slots=True)
class WholeServer:
    """What the status page shows, for every worker together."""

    hits: float
    misses: float
    in_flight: float
    health: dict[str, UpstreamHealth]

    @property
    def hit_ratio(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


def whole_server(families: list[dict[str, Any]], health: dict[str, UpstreamHealth]) -> WholeServer:
    """The status page's figures from merged families."""
    hits = misses = in_flight = 0.0
    for family in families:
        for sample_name, labels, value in family["samples"]:
            if sample_name == "nightproxy_cache_requests_total":
                if labels.get("result") == "hit":
                    hits += value
                else:
                    misses += value
            elif sample_name == "nightproxy_downloads_in_flight":
                in_flight += value
    return WholeServer(hits, misses, in_flight, health)
