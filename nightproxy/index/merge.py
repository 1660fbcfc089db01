"""Pure merging of several upstreams' pages of one project."""

from __future__ import annotations

from collections.abc import Iterable

from packaging.version import Version

from nightproxy.model import DistFile
from nightproxy.simple_api.filenames import parse_dist_filename

_NO_VERSION = Version("0")


def _order(file: DistFile) -> tuple[Version, str]:
    dist = parse_dist_filename(file.filename)
    return (dist.version if dist else _NO_VERSION, file.filename)


def merge_files(pages: Iterable[Iterable[DistFile]]) -> tuple[DistFile, ...]:
    """Union by filename; ``pages`` is in priority order and the first to list a name wins.

    The result is sorted by version, then filename, so a page's bytes depend only on its
    content and not on which upstream answered first.
    """
    merged: dict[str, DistFile] = {}
    for files in pages:
        for file in files:
            merged.setdefault(file.filename, file)
    return tuple(sorted(merged.values(), key=_order))
