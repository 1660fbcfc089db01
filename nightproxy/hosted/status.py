"""What a person (and ``/metrics``) is told about a hosted feed: pure summaries of its files.

- the newest build of each project per platform (wheel tag set, or ``sdist``);
- a build matrix: per project and platform, which of the last days got an upload, which shows
  at a glance that one platform's builds stopped while the others went on;
- stale projects: no upload for more than half of their ``dev_max_age``;
- per-project totals for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from packaging.utils import NormalizedName
from packaging.version import Version

from nightproxy.hosted.prune import PruneRules, platform_of
from nightproxy.hosted.records import FileRecord
from nightproxy.simple_api.filenames import parse_dist_filename

#: Days the build matrix shows, today included.
MATRIX_DAYS = 14


@dataclass(frozen=True, slots=True)
class NewestBuild:
    project: NormalizedName
    platform: str
    version: str
    filename: str
    upload_time: datetime
    uploader: str


@dataclass(frozen=True, slots=True)
class MatrixRow:
    project: NormalizedName
    platform: str
    #: Uploads on each of the last ``MATRIX_DAYS`` days, oldest first.
    uploads: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProjectTotals:
    project: NormalizedName
    files: int
    bytes: int
    last_upload: datetime


@dataclass(frozen=True, slots=True)
class StaleProject:
    project: NormalizedName
    last_upload: datetime
    #: Half the project's ``dev_max_age``: the quiet time after which it is shown.
    threshold: timedelta


def _version(record: FileRecord) -> Version | None:
    dist = parse_dist_filename(record.filename)
    return dist.version if dist else None


def newest_builds(records: Iterable[FileRecord]) -> list[NewestBuild]:
    """Per project and platform, the highest version (the latest upload among equals)."""
    best: dict[tuple[NormalizedName, str], tuple[Version, datetime, FileRecord]] = {}
    for record in records:
        version = _version(record)
        if version is None:
            continue
        key = (record.project, platform_of(record.filename))
        held = best.get(key)
        if held is None or (version, record.upload_time) > held[:2]:
            best[key] = (version, record.upload_time, record)
    return [
        NewestBuild(project, platform, str(version), r.filename, r.upload_time, r.uploader)
        for (project, platform), (version, _t, r) in sorted(best.items(), key=lambda i: i[0])
    ]


def matrix_days(today: date, days: int = MATRIX_DAYS) -> list[date]:
    return [today - timedelta(days=days - 1 - n) for n in range(days)]


def build_matrix(
    records: Iterable[FileRecord], now: datetime, days: int = MATRIX_DAYS
) -> list[MatrixRow]:
    """Uploads per project, platform and day over the last ``days`` days (UTC)."""
    columns = {day: n for n, day in enumerate(matrix_days(now.date(), days))}
    counts: dict[tuple[NormalizedName, str], list[int]] = {}
    for record in records:
        row = counts.setdefault((record.project, platform_of(record.filename)), [0] * days)
        column = columns.get(record.upload_time.date())
        if column is not None:
            row[column] += 1
    return [
        MatrixRow(project, platform, tuple(row))
        for (project, platform), row in sorted(counts.items())
    ]


def totals(records: Iterable[FileRecord]) -> list[ProjectTotals]:
    found: dict[NormalizedName, tuple[int, int, datetime]] = {}
    for record in records:
        files, size, last = found.get(record.project, (0, 0, record.upload_time))
        found[record.project] = (files + 1, size + record.size, max(last, record.upload_time))
    return [ProjectTotals(p, *found[p]) for p in sorted(found)]


def stale_projects(
    records: Iterable[FileRecord], rules: Callable[[NormalizedName], PruneRules], now: datetime
) -> list[StaleProject]:
    """Projects with no upload for more than half of their ``dev_max_age`` (none when off)."""
    stale = []
    for total in totals(records):
        max_age = rules(total.project).dev_max_age
        if max_age is None:
            continue
        threshold = timedelta(seconds=max_age / 2)
        if now - total.last_upload > threshold:
            stale.append(StaleProject(total.project, total.last_upload, threshold))
    return stale
