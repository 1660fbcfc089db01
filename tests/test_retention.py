"""The nightly view's pure rules: ``apply_retention`` and ``Policy.for_project``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name
from packaging.version import Version

from nightproxy.config import Config, RetentionConfig, config_from_mapping
from nightproxy.index.retention import Policy, apply_retention
from nightproxy.simple_api.records import DistFile, PublishedFile

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = 86400.0


def pub(version: str, built: datetime | None, upstream: str = "nightly") -> PublishedFile:
    filename = f"demo-{version}-py3-none-any.whl"
    return PublishedFile(
        source=DistFile(filename=filename, url=f"https://x.invalid/{filename}", upstream=upstream),
        url=f"../../files/demo/k/{filename}",
        hashes={},
        core_metadata=True,
        build_time=built,
        build_time_source="upstream" if built else None,
    )


def version_of(file: PublishedFile) -> Version:
    return Version(file.filename.split("-")[1])


def names(files: tuple[PublishedFile, ...]) -> list[str]:
    return [f.filename for f in files]


def policy(max_age_days: float | None, keep_latest: int) -> Policy:
    age = None if max_age_days is None else max_age_days * DAY
    return Policy.uniform(RetentionConfig(dev_max_age=age, keep_latest=keep_latest))


# -- strategies ---------------------------------------------------------------------------------

_ages = st.floats(min_value=0, max_value=120, allow_nan=False)


@st.composite
def feeds(draw: st.DrawFn) -> list[PublishedFile]:
    """A project page: dev and release versions, each with one file built some days ago."""
    count = draw(st.integers(min_value=0, max_value=25))
    numbers = draw(st.lists(st.integers(0, 60), min_size=count, max_size=count, unique=True))
    out = []
    for n in numbers:
        kind = draw(st.sampled_from(["dev", "release", "rc", "post"]))
        version = {
            "dev": f"1.{n}.0.dev{n}",
            "release": f"1.{n}.0",
            "rc": f"1.{n}.0rc1",
            "post": f"1.{n}.0.post1",
        }[kind]
        age = draw(st.one_of(st.none(), _ages))
        built = None if age is None else NOW - timedelta(days=age)
        out.append(pub(version, built, draw(st.sampled_from(["nightly", "release"]))))
    return out


# -- properties ---------------------------------------------------------------------------------


@given(feeds(), st.one_of(st.none(), st.integers(0, 60)), st.integers(0, 6))
def test_releases_are_never_hidden(
    files: list[PublishedFile], max_age: int | None, keep: int
) -> None:
    """Whatever their age, non-dev versions are always shown."""
    shown = apply_retention(files, policy(max_age, keep), now=NOW)
    releases = [f for f in files if not version_of(f).is_devrelease]
    assert [f for f in shown if not version_of(f).is_devrelease] == releases


@given(feeds(), st.integers(0, 60), st.integers(0, 6))
def test_the_newest_dev_versions_are_always_kept(
    files: list[PublishedFile], max_age: int, keep: int
) -> None:
    """The ``keep_latest`` highest dev versions survive any age limit."""
    shown = set(names(apply_retention(files, policy(max_age, keep), now=NOW)))
    devs = sorted({version_of(f) for f in files if version_of(f).is_devrelease}, reverse=True)
    for f in files:
        if version_of(f) in devs[:keep]:
            assert f.filename in shown


@given(feeds(), st.integers(0, 60), st.integers(0, 6))
def test_exactly_the_old_dev_builds_outside_the_keep_set_are_hidden(
    files: list[PublishedFile], max_age: int, keep: int
) -> None:
    """Hidden == dev, not among the newest ``keep``, and built longer ago than the cutoff."""
    shown = apply_retention(files, policy(max_age, keep), now=NOW)
    devs = sorted({version_of(f) for f in files if version_of(f).is_devrelease}, reverse=True)
    cutoff = NOW - timedelta(days=max_age)
    expected_hidden = {
        f.filename
        for f in files
        if version_of(f).is_devrelease
        and version_of(f) not in devs[:keep]
        and f.build_time is not None
        and f.build_time < cutoff
    }
    assert set(names(shown)) == {f.filename for f in files} - expected_hidden
    # The page keeps its order.
    assert names(shown) == [f.filename for f in files if f.filename not in expected_hidden]


@given(feeds(), st.integers(0, 6))
def test_without_an_age_limit_nothing_is_hidden(files: list[PublishedFile], keep: int) -> None:
    """``dev_max_age: off`` shows every file."""
    assert apply_retention(files, policy(None, keep), now=NOW) == tuple(files)


@given(feeds(), st.one_of(st.none(), st.integers(0, 60)), st.integers(0, 6))
def test_dev_only_drops_releases_of_that_upstream_only(
    files: list[PublishedFile], max_age: int | None, keep: int
) -> None:
    """A ``dev_only`` feed contributes only pre-releases; other feeds' releases are untouched."""
    plain = apply_retention(files, policy(max_age, keep), now=NOW)
    dev_only = apply_retention(files, policy(max_age, keep), now=NOW, dev_only={"nightly"})
    expected = [
        f for f in plain if not (f.source.upstream == "nightly" and not version_of(f).is_prerelease)
    ]
    assert list(dev_only) == expected
    assert all(version_of(f).is_prerelease for f in dev_only if f.source.upstream == "nightly")


@given(feeds(), st.floats(min_value=0, max_value=120, allow_nan=False), st.integers(0, 6))
def test_as_of_hides_everything_built_after_it(
    files: list[PublishedFile], days_ago: float, keep: int
) -> None:
    """In an ``as_of`` view no file (dev or release) is built after that instant."""
    as_of = NOW - timedelta(days=days_ago)
    shown = apply_retention(files, policy(None, keep), now=NOW, as_of=as_of)
    assert all(f.build_time is None or f.build_time <= as_of for f in shown)
    assert {f.filename for f in files if f.build_time is None or f.build_time <= as_of} == set(
        names(shown)
    )


# -- examples -----------------------------------------------------------------------------------


def test_a_project_that_stopped_building_keeps_its_newest_nightlies() -> None:
    """All builds are 60 days old: the 3 newest versions remain, the rest go."""
    old = NOW - timedelta(days=60)
    files = [pub(f"1.0.dev2026092{i}", old) for i in range(6)]
    shown = apply_retention(files, policy(7, 3), now=NOW)
    assert names(shown) == [f.filename for f in files[3:]]


def test_as_of_ages_are_measured_from_the_as_of_instant() -> None:
    """Looking back 30 days, a build 35 days old is 5 days old at that time, so it shows."""
    files = [pub("1.0.dev1", NOW - timedelta(days=35)), pub("1.0.dev2", NOW - timedelta(days=50))]
    shown = apply_retention(files, policy(7, 0), now=NOW, as_of=NOW - timedelta(days=30))
    assert names(shown) == [files[0].filename]


def test_keep_latest_counts_only_versions_visible_as_of() -> None:
    """The newest versions kept in an as_of view are the newest that existed then."""
    files = [
        pub("1.0.dev1", NOW - timedelta(days=40)),
        pub("1.0.dev2", NOW - timedelta(days=39)),
        pub("1.0.dev3", NOW - timedelta(days=1)),
    ]
    shown = apply_retention(files, policy(7, 1), now=NOW, as_of=NOW - timedelta(days=20))
    assert names(shown) == [files[1].filename]


# -- per-upstream and per-project settings ------------------------------------------------------


def make_config(tmp_path: Path, **sections: Any) -> Config:
    data = {
        "cache": {"dir": str(tmp_path / "cache")},
        "upstreams": [
            {"name": "fast", "kind": "simple", "url": "https://fast.invalid/simple/"},
            {
                "name": "slow",
                "kind": "simple",
                "url": "https://slow.invalid/simple/",
                "retention": {"dev_max_age": "30d", "keep_latest": 1},
            },
        ],
        **sections,
    }
    return config_from_mapping(data, tmp_path / "nightproxy.yaml", environ={})


def test_policy_resolves_global_upstream_and_project_settings(tmp_path: Path) -> None:
    """Project beats upstream beats global, field by field."""
    config = make_config(
        tmp_path,
        retention={"dev_max_age": "7d", "keep_latest": 2, "keep_missing": "1d"},
        projects={"numpy": {"upstreams": ["slow", "fast"], "dev_max_age": "3d"}, "scipy": ["fast"]},
    )
    scipy = Policy.for_project(config, canonicalize_name("scipy"))
    numpy = Policy.for_project(config, canonicalize_name("NumPy"))
    assert scipy.resolve("fast") == RetentionConfig(7 * DAY, 2, DAY)
    assert scipy.resolve("slow") == RetentionConfig(30 * DAY, 1, DAY)
    assert numpy.resolve("fast") == RetentionConfig(3 * DAY, 2, DAY)
    assert numpy.resolve("slow") == RetentionConfig(3 * DAY, 1, DAY)
    # An upstream no longer configured falls back to the wider scopes.
    assert scipy.resolve("gone") == RetentionConfig(7 * DAY, 2, DAY)


def test_upstream_override_applies_to_that_upstreams_files(tmp_path: Path) -> None:
    """A 20-day-old build survives on the 30d upstream and is hidden on the 7d one."""
    config = make_config(tmp_path, retention={"dev_max_age": "7d", "keep_latest": 0})
    files = [
        pub("1.0.dev1", NOW - timedelta(days=20), "fast"),
        pub("1.0.dev2", NOW - timedelta(days=20), "slow"),
        pub("1.0.dev3", NOW - timedelta(days=40), "slow"),
    ]
    shown = apply_retention(files, Policy.for_project(config, canonicalize_name("x")), now=NOW)
    # slow keeps its 1 newest version (dev3) whatever its age, and dev2 by age.
    assert names(shown) == [files[1].filename, files[2].filename]


def test_project_override_wins_over_upstream_override(tmp_path: Path) -> None:
    """numpy: dev_max_age 3d (project) beats slow's 30d; keep_latest 0 beats slow's 1."""
    config = make_config(
        tmp_path,
        retention={"dev_max_age": "7d"},
        projects={"numpy": {"dev_max_age": "3d", "keep_latest": 0}},
    )
    files = [
        pub("1.0.dev1", NOW - timedelta(days=2), "slow"),
        pub("1.0.dev2", NOW - timedelta(days=5), "slow"),
    ]
    numpy = Policy.for_project(config, canonicalize_name("numpy"))
    assert names(apply_retention(files, numpy, now=NOW)) == [files[0].filename]
    other = Policy.for_project(config, canonicalize_name("other"))
    assert names(apply_retention(files, other, now=NOW)) == names(tuple(files))


def test_project_can_switch_age_hiding_off(tmp_path: Path) -> None:
    """``dev_max_age: off`` on a project disables hiding that an upstream enables."""
    config = make_config(tmp_path, projects={"numpy": {"dev_max_age": "off", "keep_latest": 0}})
    files = [pub(f"1.0.dev{i}", NOW - timedelta(days=300), "slow") for i in range(4)]
    numpy = Policy.for_project(config, canonicalize_name("numpy"))
    assert names(apply_retention(files, numpy, now=NOW)) == names(tuple(files))
