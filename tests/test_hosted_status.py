"""The summaries a hosted feed's status page and metrics show."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.records import FileRecord
from nightproxy.hosted.status import build_matrix, newest_builds, stale_projects, totals

NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
LINUX = "cp312-cp312-manylinux_2_17_x86_64"
WINDOWS = "cp312-cp312-win_amd64"
_ids = itertools.count(1)


def record(project: str, filename: str, days_ago: float, size: int = 10) -> FileRecord:
    when = NOW - timedelta(days=days_ago)
    return FileRecord(
        id=next(_ids),
        project=canonicalize_name(project),
        filename=filename,
        sha256="0" * 64,
        blake2_256="0" * 64,
        size=size,
        upload_time=when,
        aged_from=when,
        uploader="numpy token 1",
        metadata_sha256=None,
        requires_python=None,
    )


def nightly(days_ago: int, tag: str) -> FileRecord:
    return record("numpy", f"numpy-2.0.dev{20 - days_ago}-{tag}.whl", days_ago)


def test_matrix_shows_a_platform_that_stopped() -> None:
    """Linux built every day; Windows stopped three days ago: the matrix shows exactly that."""
    records = [nightly(d, LINUX) for d in range(20)] + [nightly(d, WINDOWS) for d in range(3, 20)]
    rows = {row.platform: row.uploads for row in build_matrix(records, NOW)}
    assert rows[LINUX] == (1,) * 14
    assert rows[WINDOWS] == (1,) * 11 + (0, 0, 0)


def test_newest_build_per_platform() -> None:
    """Each platform's newest version is shown, with when and by whom it was uploaded."""
    records = [nightly(d, LINUX) for d in range(5)] + [nightly(d, WINDOWS) for d in range(3, 5)]
    newest = {b.platform: (b.version, b.upload_time) for b in newest_builds(records)}
    assert newest == {
        LINUX: ("2.0.dev20", NOW),
        WINDOWS: ("2.0.dev17", NOW - timedelta(days=3)),
    }


def test_stale_projects_and_totals() -> None:
    """A project quiet for more than half its dev_max_age is stale; an exempt one never is."""
    records = [
        record("numpy", f"numpy-2.0.dev0-{LINUX}.whl", 1, size=5),
        record("numpy", f"numpy-2.0.dev1-{LINUX}.whl", 0.5, size=7),
        record("scipy", f"scipy-1.0.dev0-{LINUX}.whl", 20),
        record("openblas", f"openblas-1.0.dev0-{LINUX}.whl", 200),
    ]

    def rules(project: NormalizedName) -> PruneRules:
        return PruneRules(None if project == "openblas" else 30 * 86400, 3)

    assert [s.project for s in stale_projects(records, rules, NOW)] == ["scipy"]
    numpy = next(t for t in totals(records) if t.project == "numpy")
    assert (numpy.files, numpy.bytes, numpy.last_upload) == (2, 12, NOW - timedelta(days=0.5))
