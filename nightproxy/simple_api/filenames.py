"""What a distribution filename says, through ``packaging`` only.

Filenames come from upstreams and from clients: both are untrusted. A name that does not
parse as a wheel or sdist, or that could escape a directory, is not a distribution.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

METADATA_SUFFIX = ".metadata"


class DistName(NamedTuple):
    project: NormalizedName
    version: Version


def is_safe_filename(filename: str) -> bool:
    """A single path segment that cannot address anything but itself."""
    return (
        bool(filename)
        and filename not in {".", ".."}
        and "/" not in filename
        and "\\" not in filename
        and "\x00" not in filename
        and not filename.startswith(".")
        and filename.isprintable()
    )


#: Twice what a file system holds in one name (wheel tag sets get long, but not this long):
#: a longer one is no distribution, and the memo below must not hold megabytes per entry.
MAX_FILENAME = 512


def parse_dist_filename(filename: str) -> DistName | None:
    """The project and version a wheel or sdist filename names, or None for anything else."""
    if len(filename) > MAX_FILENAME:
        return None
    return _parse_dist_filename(filename)


@lru_cache(maxsize=65536)
def _parse_dist_filename(filename: str) -> DistName | None:
    if not is_safe_filename(filename):
        return None
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
            return DistName(name, version)
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return DistName(name, version)
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    except ValueError:
        # ``packaging`` turns each release segment into an int; Python refuses more than 4,300
        # digits, and a hostile page may send them.
        return None
    return None
