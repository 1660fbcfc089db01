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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

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


def apply_retention(
    files: Iterable[PublishedFile],
    policy: Policy,
    *,
    now: datetime,
    as_of: datetime | None = None,
    dev_only: Collection[str] = (),
) -> tuple[PublishedFile, ...]:
    """The files a page shows, in their given order."""
    candidates: list[tuple[PublishedFile, Version]] = []
    for pub in files:
        version = _version(pub)
        if version is None:
            continue
        if pub.source.upstream in dev_only and not version.is_prerelease:
            continue
        if as_of is not None:
            since = available_since(pub)
            if since is not None and since > as_of:
                continue
        candidates.append((pub, version))
    reference = as_of or now
    # The newest dev versions per upstream policy's keep_latest, over the whole project.
    dev_versions = sorted({v for _p, v in candidates if v.is_devrelease}, reverse=True)
    shown = []
    for pub, version in candidates:
        if not version.is_devrelease:
            shown.append(pub)
            continue
        settings = policy.resolve(pub.source.upstream)
        if version in dev_versions[: settings.keep_latest]:
            shown.append(pub)
            continue
        if settings.dev_max_age is None or pub.build_time is None:
            shown.append(pub)
            continue
        if reference - pub.build_time <= timedelta(seconds=settings.dev_max_age):
            shown.append(pub)
    return tuple(shown)
