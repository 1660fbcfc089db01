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
    if len(filename) > MAX_FILENAME or not is_safe_filename(filename):
        return None
    if filename.endswith(".whl"):
        # A wheel's name and version do not depend on its tags, and parsing the tags is most of
        # the cost: the platform wheels of one build (a page of nightlies holds thousands) share
        # one parse of everything before them. ``packaging`` still parses that part, in a
        # filename with the tags of a pure wheel, so that the rules are exactly its own.
        stem = filename[:-4]
        if stem.count("-") not in {4, 5}:
            return None
        head, python, abi, platform = stem.rsplit("-", 3)
        if not _tags_valid(f"{python}-{abi}-{platform}"):
            return None
        return _parse_wheel_head(head)
    if filename.endswith((".tar.gz", ".zip")):
        return _parse_sdist(filename)
    return None


@lru_cache(maxsize=65536)
def _parse_wheel_head(head: str) -> DistName | None:
    """Name and version of the wheels whose filenames start with ``head`` and a dash."""
    try:
        name, version, _build, _tags = parse_wheel_filename(f"{head}-py3-none-any.whl")
    except InvalidWheelFilename:
        return None
    except ValueError:
        # ``packaging`` turns each release segment into an int; Python refuses more than 4,300
        # digits, and a hostile page may send them.
        return None
    return DistName(name, version)


@lru_cache(maxsize=4096)
def _tags_valid(tags: str) -> bool:
    """Whether ``packaging`` takes ``tags`` (python-abi-platform) as a wheel's: checked on its
    own, since a page repeats a few tag sets over thousands of builds."""
    try:
        parse_wheel_filename(f"x-0-{tags}.whl")
    except (InvalidWheelFilename, ValueError):
        return False
    return True


@lru_cache(maxsize=65536)
def _parse_sdist(filename: str) -> DistName | None:
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return None
    except ValueError:
        return None
    return DistName(name, version)
