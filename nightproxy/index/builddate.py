"""When was a file built? Pure rules, best source first.

1. A timestamp in the version: ``devYYYYMMDD``, ``devYYYYMMDDHH``, ``devYYYYMMDDHHMMSS``,
   ``devYYYYMMDDNNN`` (a date and a build counter), or a local label ``+YYYYMMDD[HHMMSS]``,
   accepted only when it is a plausible date.
2. The upstream's own per-file time (upload-time, data-upload-time, LastModified, ...).
3. The time the proxy first saw that exact file.

Only (2) is ever published as an upload time; the others serve retention alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from packaging.version import Version

from nightproxy.model import BuildTimeSource, DistFile
from nightproxy.simple_api.filenames import parse_dist_filename

#: Dates before this are not nightly timestamps but ordinary numbers (dev123).
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
#: Allow some clock skew between the builder and us, but not a date in the far future.
_FUTURE_SLACK_DAYS = 2


def _from_digits(digits: str, now: datetime) -> datetime | None:
    when = _digits_time(digits)
    if when is None or when < _EARLIEST or (when - now).days > _FUTURE_SLACK_DAYS:
        return None
    return when


@lru_cache(maxsize=4096)
def _digits_time(digits: str) -> datetime | None:
    """The time digits spell, if they spell one (``strptime`` is slow; nightlies repeat)."""
    length = len(digits)
    try:
        if length in {8, 11}:  # YYYYMMDD, YYYYMMDD + NNN build counter
            when = datetime.strptime(digits[:8], "%Y%m%d").replace(tzinfo=UTC)
        elif length == 10:
            when = datetime.strptime(digits, "%Y%m%d%H").replace(tzinfo=UTC)
        elif length == 12:
            when = datetime.strptime(digits, "%Y%m%d%H%M").replace(tzinfo=UTC)
        elif length == 14:
            when = datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        else:
            return None
    except ValueError:
        return None
    return when


def version_timestamp(version: Version, now: datetime | None = None) -> datetime | None:
    """The build date a nightly version carries, if it carries a plausible one."""
    current = now or datetime.now(UTC)
    if version.dev is not None:
        when = _from_digits(str(version.dev), current)
        if when is not None:
            return when
    if version.local:
        for part in version.local.split("."):
            if part.isdigit():
                when = _from_digits(part, current)
                if when is not None:
                    return when
    return None


def build_time(
    file: DistFile, first_seen: datetime, now: datetime | None = None
) -> tuple[datetime, BuildTimeSource]:
    return known_build_time(file, now) or (first_seen, "first-seen")


def known_build_time(
    file: DistFile, now: datetime | None = None
) -> tuple[datetime, BuildTimeSource] | None:
    """The build time from the file's version or its feed; None: only first sight can date it."""
    dist = parse_dist_filename(file.filename)
    if dist is not None:
        when = version_timestamp(dist.version, now)
        if when is not None:
            return when, "version"
    if file.upload_time is not None:
        return file.upload_time, "upstream"
    return None
