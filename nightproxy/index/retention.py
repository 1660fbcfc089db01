"""The nightly view: pure retention rules over published files.

- Releases are never hidden by age.
- Dev releases built longer ago than ``dev_max_age`` are hidden, except the ``keep_latest``
  newest dev versions of the project, which are always shown so that a project that stopped
  building nightly never disappears.
- ``dev_only`` upstreams contribute dev and pre-releases only.
- An ``as_of`` view hides every file that did not exist yet at that instant: one built after
  it, or uploaded after it (a nightly stamped with a day's date is uploaded hours into it).

Settings are resolved per file's upstream (project, then upstream, then global).
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from packaging.utils import NormalizedName
from packaging.version import Version

from nightproxy.config import Config, RetentionConfig, effective_retention
from nightproxy.model import DistFile, PublishedFile
from nightproxy.simple_api.filenames import parse_dist_filename


@dataclass(frozen=True, slots=True)
class Policy:
    """Retention settings of one project, per upstream."""

    resolve: Callable[[str], RetentionConfig]

    @classmethod
    def for_project(cls, config: Config, project: NormalizedName) -> Policy:
        cache: dict[str, RetentionConfig] = {}
        hosted = {u.name for u in config.upstreams if u.kind == "hosted"}

        def resolve(upstream: str) -> RetentionConfig:
            if upstream not in cache:
                settings = effective_retention(config, upstream, project)
                if upstream in hosted:
                    # A hosted feed's retention deletes files (per platform): what it keeps
                    # is shown, not hidden again by age.
                    settings = dataclasses.replace(settings, dev_max_age=None)
                cache[upstream] = settings
            return cache[upstream]

        return cls(resolve)

    @classmethod
    def uniform(cls, settings: RetentionConfig) -> Policy:
        return cls(lambda _upstream: settings)


def _version(pub: PublishedFile) -> Version | None:
    dist = parse_dist_filename(pub.source.filename)
    return dist.version if dist else None


def available_since(pub: PublishedFile) -> datetime | None:
    """From when a file existed: the later of its build time and its feed's upload time.

    A build date read from the version is often earlier than the upload (``devYYYYMMDD`` is
    that day's midnight), and an ``as_of`` view must not show a file its own page says was
    uploaded later: ``upload-time`` is what clients filter on (``uv --exclude-newer``).
    Build time alone still ages files for ``dev_max_age``. None: nothing dates the file.
    """
    known = [t for t in (pub.build_time, pub.source.upload_time) if t is not None]
    return max(known, default=None)


def dev_only_files(files: Iterable[DistFile]) -> tuple[DistFile, ...]:
    """The dev and pre-release files of a feed configured ``dev_only``."""
    kept = []
    for file in files:
        dist = parse_dist_filename(file.filename)
        if dist is not None and dist.version.is_prerelease:
            kept.append(file)
    return tuple(kept)


#: Times in retention's columns: whole microseconds since the epoch (exact, unlike floats).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: No time known.
UNKNOWN = -(2**63)


def micros(when: datetime | None) -> int:
    """A time as retention's columns hold it."""
    return UNKNOWN if when is None else (when - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Facts:
    """What retention reads of each file of a page, a column per fact (a column of numbers
    costs neither an object per file nor the garbage collector's time)."""

    upstreams: Sequence[str]
    versions: Sequence[Version | None]
    #: ``micros`` of each build time.
    build_times: Sequence[int]
    #: ``micros`` of when each file existed from (``available_since``).
    sinces: Sequence[int]

    @classmethod
    def of(cls, files: Sequence[PublishedFile]) -> Facts:
        return cls(
            [pub.source.upstream for pub in files],
            [_version(pub) for pub in files],
            array("q", [micros(pub.build_time) for pub in files]),
            array("q", [micros(available_since(pub)) for pub in files]),
        )


def apply_retention(
    files: Iterable[PublishedFile],
    policy: Policy,
    *,
    now: datetime,
    as_of: datetime | None = None,
    dev_only: Collection[str] = (),
) -> tuple[PublishedFile, ...]:
    """The files a page shows, in their given order."""
    listed = tuple(files)
    shown = retention_mask(Facts.of(listed), policy, now=now, as_of=as_of, dev_only=dev_only)
    return tuple(pub for pub, keep in zip(listed, shown, strict=True) if keep)


def retention_mask(
    facts: Facts,
    policy: Policy,
    *,
    now: datetime,
    as_of: datetime | None = None,
    dev_only: Collection[str] = (),
) -> list[bool]:
    """Which of a page's files it shows: ``apply_retention`` over the files' facts only."""
    candidates: list[bool] = []
    dev_versions_seen: set[Version] = set()
    until = micros(as_of) if as_of is not None else None
    for upstream, version, since in zip(facts.upstreams, facts.versions, facts.sinces, strict=True):
        keep = version is not None
        if version is not None and upstream in dev_only and not version.is_prerelease:
            keep = False
        if keep and until is not None and since != UNKNOWN and since > until:
            keep = False
        candidates.append(keep)
        if keep and version is not None and version.is_devrelease:
            dev_versions_seen.add(version)
    reference = micros(as_of or now)
    # The newest dev versions per upstream policy's keep_latest, over the whole project.
    dev_versions = sorted(dev_versions_seen, reverse=True)
    newest: dict[int, frozenset[Version]] = {}
    shown = []
    for upstream, version, built, keep in zip(
        facts.upstreams, facts.versions, facts.build_times, candidates, strict=True
    ):
        if not keep or version is None or not version.is_devrelease:
            shown.append(keep)
            continue
        settings = policy.resolve(upstream)
        latest = newest.get(settings.keep_latest)
        if latest is None:
            latest = newest[settings.keep_latest] = frozenset(dev_versions[: settings.keep_latest])
        if version in latest or settings.dev_max_age is None or built == UNKNOWN:
            shown.append(True)
        else:
            limit = timedelta(seconds=settings.dev_max_age) // _MICROSECOND
            shown.append(reference - built <= limit)
    return shown
