"""What retention deletes from a hosted feed: a pure planner, with the reason for each file.

The rules, written against what emptied other nightly channels:

- Releases (final and post versions) are never deleted.
- Dev builds and pre-releases are counted per project and per platform: every wheel tag set
  is its own group and a project's sdists form one group, so a platform whose builds fail
  keeps its last good wheels while the others move on.
- In each group the newest ``keep_latest`` versions stay however old they are (at least one,
  whatever the setting), so neither a group nor a project is ever emptied by age.
- Any other file goes once its newest upload is older than ``dev_max_age``; a file re-uploaded
  under the same name ages from its latest upload, one restored from the trash from then.
- A project whose ``dev_max_age`` is off is exempt.
- A file whose name does not parse is never deleted: a parse error is no reason to delete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import Version

from nightproxy.simple_api.filenames import parse_dist_filename

#: The group of a project's sdists.
SDIST_GROUP = "sdist"
#: The one rule that deletes files today; kept in each deletion for logs, pages and metrics.
RULE_DEV_MAX_AGE = "dev_max_age"


class PrunableFile(Protocol):
    """What the planner reads of a stored file."""

    @property
    def project(self) -> NormalizedName: ...

    @property
    def filename(self) -> str: ...

    @property
    def aged_from(self) -> datetime:
        """Its latest upload, or its restore from the trash."""


F = TypeVar("F", bound=PrunableFile)


@dataclass(frozen=True, slots=True)
class PruneRules:
    """Retention of one project: seconds a dev build lives (None: off) and how many stay."""

    dev_max_age: float | None
    keep_latest: int


@dataclass(frozen=True, slots=True)
class Deletion(Generic[F]):
    """One file retention deletes, and why."""

    file: F
    rule: str
    group: str
    age: timedelta
    #: How many of the group's newest versions were kept whatever their age.
    kept_latest: int
    max_age: timedelta

    @property
    def reason(self) -> str:
        return (
            f"{self.rule}: {_days(self.age)} old, older than {_days(self.max_age)}, "
            f"and not among the {self.kept_latest} newest versions of group {self.group}"
        )


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f}d" if days < 10 else f"{days:.0f}d"


def platform_of(filename: str) -> str:
    """A file's platform: its wheel tag set, or ``sdist``.

    The tag set is written as the filename's tag triple with each part's members sorted (the
    same set spelled in another order is the same platform).
    """
    if not filename.endswith(".whl"):
        return SDIST_GROUP
    try:
        tags = parse_wheel_filename(filename)[3]
    except (InvalidWheelFilename, ValueError):
        return "?"
    interpreters = ".".join(sorted({tag.interpreter for tag in tags}))
    abis = ".".join(sorted({tag.abi for tag in tags}))
    platforms = ".".join(sorted({tag.platform for tag in tags}))
    return f"{interpreters}-{abis}-{platforms}"


def tag_group(filename: str) -> str | None:
    """The retention group of a dev or pre-release file; None for a release or a bad name."""
    dist = parse_dist_filename(filename)
    if dist is None or not dist.version.is_prerelease:
        return None
    group = platform_of(filename)
    return None if group == "?" else group


def plan_prune(
    files: Iterable[F], rules: Callable[[NormalizedName], PruneRules], *, now: datetime
) -> list[Deletion[F]]:
    """The files retention deletes now, each with its reason, in a stable order."""
    groups: dict[tuple[NormalizedName, str], list[tuple[Version, F]]] = {}
    for file in files:
        group = tag_group(file.filename)
        dist = parse_dist_filename(file.filename)
        if group is None or dist is None or dist.project != file.project:
            continue
        groups.setdefault((file.project, group), []).append((dist.version, file))
    deletions: list[Deletion[F]] = []
    resolved: dict[NormalizedName, PruneRules] = {}
    for (project, group), members in sorted(groups.items(), key=lambda item: item[0]):
        if project not in resolved:
            resolved[project] = rules(project)
        settings = resolved[project]
        if settings.dev_max_age is None:
            continue
        keep = max(settings.keep_latest, 1)
        max_age = timedelta(seconds=settings.dev_max_age)
        newest = sorted({version for version, _file in members}, reverse=True)[:keep]
        kept_versions = set(newest)
        for version, file in sorted(members, key=lambda item: (item[0], item[1].filename)):
            if version in kept_versions:
                continue
            age = now - file.aged_from
            if age > max_age:
                deletions.append(
                    Deletion(
                        file=file,
                        rule=RULE_DEV_MAX_AGE,
                        group=group,
                        age=age,
                        kept_latest=keep,
                        max_age=max_age,
                    )
                )
    return deletions
