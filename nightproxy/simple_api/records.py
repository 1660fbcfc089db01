"""Records shared by every layer: what an upstream says about a distribution file and a project.

These are plain frozen data. Parsing (``parse``) produces them from upstream
bytes, merging and retention (``nightproxy.index``) transform them, rendering turns them into
PEP 503/691 pages. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from packaging.utils import NormalizedName

#: Where a file's build time came from, best first (see the index's build-date rules).
BuildTimeSource = Literal["version", "upstream", "first-seen"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DistFile:
    """One distribution file as an upstream lists it.

    ``url`` is the absolute upstream URL. It is never published to clients: pages link to the
    proxy's own content-addressed URL instead.
    """

    filename: str
    url: str
    upstream: str
    #: Hash name -> lowercase hex digest, as the upstream advertised them (not yet verified).
    hashes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    requires_python: str | None = None
    #: False, True, or the yank reason.
    yanked: bool | str = False
    size: int | None = None
    #: The upstream's own per-file time (PEP 700 upload-time, data-upload-time, LastModified, ...).
    upload_time: datetime | None = None
    #: PEP 658/714 metadata availability: False, True, or a mapping of hash name -> digest.
    core_metadata: bool | Mapping[str, str] = False
    #: The feed's own change marker where it gives no hash (ETag, Last-Modified, upload time).
    change_marker: str | None = None
    #: Set by retention: served from the cache although the upstream no longer lists it.
    retained: bool = False

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    def replace(self, **changes: object) -> DistFile:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project's files as one upstream (or the merge of several) lists them."""

    name: NormalizedName
    #: In the order the page lists them (packed, ``packed.PackedFiles``, once parsed).
    files: Sequence[DistFile]
    #: Upstream validators, used to revalidate with If-None-Match / If-Modified-Since.
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectList:
    """The project names one upstream can list (``/simple/``)."""

    names: frozenset[NormalizedName]


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """A file as the proxy publishes it: the upstream's facts, the proxy's own URL."""

    source: DistFile
    #: Relative URL of the proxy's content-addressed copy (no query string, ever).
    url: str
    #: Hashes the proxy may publish: the upstream's, or the sha256 it verified itself.
    hashes: Mapping[str, str]
    core_metadata: bool | Mapping[str, str]
    #: Build time used for retention and where it came from (never published as upload-time).
    build_time: datetime | None = None
    build_time_source: BuildTimeSource | None = None
    #: Size of the verified copy the proxy holds, for feeds that list no size (PEP 700 makes
    #: ``size`` mandatory from API 1.1, which the pages announce).
    cached_size: int | None = None

    @property
    def filename(self) -> str:
        return self.source.filename

    @property
    def size(self) -> int | None:
        """The size to publish: the feed's, else that of the verified copy the proxy holds."""
        return self.source.size if self.source.size is not None else self.cached_size
