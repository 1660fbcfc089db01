"""The hosted feed's retention planner: releases kept, per platform, never empties."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.hosted.prune import SDIST_GROUP, PruneRules, plan_prune, tag_group

NOW = datetime(2026, 3, 1, tzinfo=UTC)
DAY = 86400.0


@dataclass(frozen=True)
class File:
    project: NormalizedName
    filename: str
    aged_from: datetime


def wheel(project: str, version: str, tag: str, days_old: float) -> File:
    name = canonicalize_name(project)
    return File(
        name,
        f"{name.replace('-', '_')}-{version}-{tag}.whl",
        NOW - timedelta(days=days_old),
    )


def sdist(project: str, version: str, days_old: float) -> File:
    name = canonicalize_name(project)
    return File(name, f"{name.replace('-', '_')}-{version}.tar.gz", NOW - timedelta(days=days_old))


def rules(max_age_days: float | None = 30, keep: int = 2) -> PruneRules:
    return PruneRules(
        dev_max_age=None if max_age_days is None else max_age_days * DAY, keep_latest=keep
    )


LINUX = "cp312-cp312-manylinux_2_17_x86_64"
WINDOWS = "cp312-cp312-win_amd64"


def test_failing_platform_keeps_its_last_wheels() -> None:
    """Windows builds that stopped 60 days ago keep their newest wheels while Linux moves on."""
    files = [wheel("numpy", f"2.0.0.dev{i}", LINUX, days_old=90 - i) for i in range(90)]
    files += [wheel("numpy", f"2.0.0.dev{i}", WINDOWS, days_old=90 - i) for i in range(30)]
    deleted = {d.file.filename for d in plan_prune(files, lambda _p: rules(), now=NOW)}
    kept_windows = [f for f in files if WINDOWS in f.filename and f.filename not in deleted]
    assert sorted(f.filename for f in kept_windows) == sorted(
        f"numpy-2.0.0.dev{i}-{WINDOWS}.whl" for i in (28, 29)
    )


def test_stopped_project_keeps_newest_builds() -> None:
    """A project with no upload for a year keeps its keep_latest newest dev builds."""
    files = [wheel("scipy", f"1.0.dev{i}", LINUX, days_old=400 - i) for i in range(10)]
    deleted = {d.file.filename for d in plan_prune(files, lambda _p: rules(keep=3), now=NOW)}
    kept = {f.filename for f in files} - deleted
    assert kept == {f"scipy-1.0.dev{i}-{LINUX}.whl" for i in (7, 8, 9)}


def test_keep_latest_zero_still_keeps_one() -> None:
    """keep_latest: 0 cannot empty a group: the newest version stays."""
    files = [wheel("pkg", f"1.0.dev{i}", LINUX, days_old=100) for i in range(3)]
    deleted = {d.file.filename for d in plan_prune(files, lambda _p: rules(keep=0), now=NOW)}
    assert {f.filename for f in files} - deleted == {f"pkg-1.0.dev2-{LINUX}.whl"}


def test_exempt_project_is_untouched() -> None:
    """A project whose dev_max_age is off loses nothing, however old its builds."""
    files = [wheel("openblas-libs", f"0.3.dev{i}", LINUX, days_old=500) for i in range(10)]
    files += [wheel("numpy", f"2.0.dev{i}", LINUX, days_old=500) for i in range(10)]

    def per_project(project: NormalizedName) -> PruneRules:
        return rules(None) if project == "openblas-libs" else rules()

    deleted = plan_prune(files, per_project, now=NOW)
    assert {d.file.project for d in deleted} == {"numpy"}


def test_reupload_ages_from_latest_upload() -> None:
    """A constant-version build uploaded again yesterday is not old, whatever came before."""
    files = [wheel("pkg", "2.0.0.dev0", LINUX, days_old=1)]
    files += [wheel("pkg", f"1.0.dev{i}", LINUX, days_old=100) for i in range(3)]
    deleted = {d.file.filename for d in plan_prune(files, lambda _p: rules(keep=1), now=NOW)}
    assert f"pkg-2.0.0.dev0-{LINUX}.whl" not in deleted
    assert len(deleted) == 3


def test_sdists_form_one_group_and_reason_names_it() -> None:
    """Old dev sdists past the newest keep_latest go, and each deletion says rule, group, age."""
    files = [sdist("pkg", f"1.0.dev{i}", days_old=50 - i) for i in range(5)]
    deleted = plan_prune(files, lambda _p: rules(keep=2), now=NOW)
    assert [d.file.filename for d in deleted] == [f"pkg-1.0.dev{i}.tar.gz" for i in range(3)]
    assert all(d.group == SDIST_GROUP for d in deleted)
    assert deleted[0].reason.startswith("dev_max_age: 50d old, older than 30d")
    assert "group sdist" in deleted[0].reason


def test_tag_order_is_one_group() -> None:
    """Compressed tag sets spelled in another order are the same platform."""
    a = tag_group("pkg-1.0.dev0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    b = tag_group("pkg-1.0.dev1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    assert a == b is not None


def test_file_whose_name_names_another_project_is_kept() -> None:
    """A record whose filename names another project is never deleted (a mismatch is no reason)."""
    stray = File(canonicalize_name("numpy"), f"scipy-1.0.dev0-{LINUX}.whl", NOW - timedelta(999))
    files = [stray, *[wheel("numpy", f"1.0.dev{i}", LINUX, days_old=1) for i in range(3)]]
    assert plan_prune(files, lambda _p: rules(keep=1), now=NOW) == []


# -- properties ---------------------------------------------------------------------------------

_TAGS = [LINUX, WINDOWS, "py3-none-any", "cp311-cp311-macosx_11_0_arm64"]
_PROJECTS = ["numpy", "scipy", "scikit-learn"]


@st.composite
def feeds(draw: st.DrawFn) -> list[File]:
    out: dict[str, File] = {}
    for _ in range(draw(st.integers(0, 40))):
        project = draw(st.sampled_from(_PROJECTS))
        release = draw(st.integers(0, 3))
        kind = draw(st.sampled_from(["dev", "rc", "final", "post"]))
        suffix = {"dev": ".dev{}", "rc": "rc{}", "final": ".{}", "post": ".post{}"}[kind]
        version = f"{release}.0" + suffix.format(draw(st.integers(0, 5)))
        age = draw(st.floats(0, 120))
        if draw(st.booleans()):
            file = sdist(project, version, age)
        else:
            file = wheel(project, version, draw(st.sampled_from(_TAGS)), age)
        out[file.filename] = file
    return list(out.values())


_rules = st.builds(
    PruneRules,
    dev_max_age=st.one_of(st.none(), st.floats(0, 100 * DAY)),
    keep_latest=st.integers(0, 4),
)


@settings(max_examples=300, deadline=None)
@given(feeds(), _rules)
def test_never_empties_a_project_or_group(files: list[File], settings_: PruneRules) -> None:
    """Every project and every platform group keeps at least one file."""
    deleted = {id(d.file) for d in plan_prune(files, lambda _p: settings_, now=NOW)}
    kept = [f for f in files if id(f) not in deleted]
    assert {f.project for f in kept} == {f.project for f in files}
    groups = {(f.project, tag_group(f.filename)) for f in files}
    assert {(f.project, tag_group(f.filename)) for f in kept} == groups


@settings(max_examples=300, deadline=None)
@given(feeds(), _rules)
def test_releases_are_never_deleted(files: list[File], settings_: PruneRules) -> None:
    """Only dev and pre-release files are ever planned for deletion, each older than the limit."""
    for deletion in plan_prune(files, lambda _p: settings_, now=NOW):
        assert tag_group(deletion.file.filename) is not None
        assert settings_.dev_max_age is not None
        assert deletion.age.total_seconds() > settings_.dev_max_age


@settings(max_examples=300, deadline=None)
@given(feeds(), feeds(), _rules)
def test_groups_are_independent(
    files: list[File], others: list[File], settings_: PruneRules
) -> None:
    """What a platform group loses does not depend on the files of any other group."""
    platform = [f for f in files if tag_group(f.filename) == LINUX]
    elsewhere = [f for f in others if tag_group(f.filename) != LINUX]
    alone = {d.file.filename for d in plan_prune(platform, lambda _p: settings_, now=NOW)}
    mixed = plan_prune([*platform, *elsewhere], lambda _p: settings_, now=NOW)
    assert {d.file.filename for d in mixed if d.group == LINUX} == alone
