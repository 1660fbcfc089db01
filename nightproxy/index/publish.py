"""Merged upstream files as the proxy publishes them: its own URLs, the hashes and sizes it
verified, build dates for retention, and the nightly view's retention rules applied.

``Publisher.build`` is CPU and disk work for a thread. It reads each file's packed record a
few times rather than holding an object per file: a project of 200,000 files is published
in a bounded amount of memory, and no step holds the GIL for long (sorts go in runs).
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from packaging.utils import NormalizedName
from packaging.version import Version

from nightproxy.cache.keys import file_key, file_path
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.index.builddate import known_build_time
from nightproxy.index.retention import UNKNOWN, Facts, Policy, micros, retention_mask
from nightproxy.index.state import IndexState
from nightproxy.model import BuildTimeSource, DistFile, PublishedFile
from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.packed import SEP, PackedFiles, Records, RecordsBuilder, decode_dist
from nightproxy.simple_api.published import PackedPublished, encode_extras
from nightproxy.upstreams.base import Upstream

#: An upstream's files for a page, in priority order: its page, then what it retains.
Sources = list[tuple[str, list[Sequence[DistFile]]]]
#: Files whose first-seen times are read (and written) at a time.
BATCH = 10_000
#: Items per sorted run.
RUN = 32_768


class Publisher:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        store: CacheStore,
        state: IndexState,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.store = store
        self.state = state

    def build(
        self, project: NormalizedName, sources: Sources, as_of: datetime | None, now: float
    ) -> tuple[PackedPublished, int]:
        """Blocking: the published files of one project's page, and how many are retained."""
        dev_only = {n for n, up in self.upstreams.items() if up.config.dev_only}
        merged = _Merged(sources, dev_only)
        upstreams: list[str] = []
        built = array("q")
        uploads = array("q")
        unknown = array("L")
        for index in range(len(merged)):
            file = decode_dist(merged.record(index))
            upstreams.append(file.upstream)
            uploads.append(micros(file.upload_time))
            when = known_build_time(file)
            built.append(micros(when[0]) if when is not None else UNKNOWN)
            if when is None:
                unknown.append(index)
        # Only files whose version and feed say nothing of when they were built are dated by
        # when the proxy first saw them: their times are read (and written) in batches.
        for start in range(0, len(unknown), BATCH):
            batch = unknown[start : start + BATCH]
            keys = [file_key(decode_dist(merged.record(i))) for i in batch]
            seen = self.state.first_seen(keys, now)
            for i, key in zip(batch, keys, strict=True):
                built[i] = micros(datetime.fromtimestamp(seen.get(key, now), UTC))
        # From when a file existed: its build time, or its upload if that came later.
        since = array("q", map(max, built, uploads))
        shown = retention_mask(
            Facts(upstreams, merged.versions, built, since),
            Policy.for_project(self.config, project),
            now=datetime.fromtimestamp(now, UTC),
            as_of=as_of,
            dev_only=dev_only,
        )
        del upstreams, uploads, since
        extras = RecordsBuilder()
        where = array("Q")
        retained = 0
        for index, show in enumerate(shown):
            if not show:
                continue
            file = decode_dist(merged.record(index))
            key = file_key(file)
            when = known_build_time(file) or (_from_micros(built[index]), "first-seen")
            pub = self._publish(project, file, key, when, self._cached_size(file, key))
            extras.add(encode_extras(pub, key))
            where.append(merged.where[index])
            retained += file.retained
        url_of = partial(file_path, project)
        return PackedPublished(merged.lists, where, extras.build(), url_of), retained

    def _cached_size(self, file: DistFile, key: str) -> int | None:
        # PEP 700 (API 1.1) requires a size the feed may not list; the verified copy has one.
        if file.size is not None:
            return None
        # A key that is the file's sha256 names its blob; any other is an alias of one.
        sha = key if key == file.sha256 else self.store.resolve(key)
        return self.store.size_of(sha) if sha is not None else None

    def published(
        self, project: NormalizedName, file: DistFile, key: str, first_seen: float
    ) -> PublishedFile:
        """One file as published, dated ``first_seen`` if nothing else dates it."""
        when = known_build_time(file) or (datetime.fromtimestamp(first_seen, UTC), "first-seen")
        return self._publish(project, file, key, when)

    def _publish(
        self,
        project: NormalizedName,
        file: DistFile,
        key: str,
        built: tuple[datetime, BuildTimeSource] | None,
        cached_size: int | None = None,
    ) -> PublishedFile:
        hashes = file.hashes
        if "sha256" not in hashes:
            verified = self.store.alias(key)
            if verified is not None:
                # Publish only what we hashed ourselves from the bytes we hold.
                hashes = {**hashes, "sha256": verified}
        # ``.metadata`` is served for wheels only, so nothing else may advertise it: pip
        # aborts on the 404 of an advertised sdist's metadata instead of reading the sdist.
        meta: bool | Mapping[str, str] = False
        if file.filename.endswith(".whl"):
            known = self.store.alias(f"m:{key}")
            meta = {"sha256": known} if known else (file.core_metadata or True)
        return PublishedFile(
            source=file,
            url=file_path(project, key, file.filename),
            hashes=hashes,
            core_metadata=meta,
            build_time=built[0] if built is not None else None,
            build_time_source=built[1] if built is not None else None,
            cached_size=cached_size,
        )


class _Merged:
    """A page's files in order, as where each is in the upstreams' lists: the first listing of
    each filename, in priority order, then sorted by version and filename, so that a page's
    bytes depend only on its content. No record is copied.

    A dev_only feed's releases are dropped before merging, so that a release it also carries
    cannot shadow the same file from a later, real release feed. Files that are no
    distribution are dropped: retention would never show them.
    """

    def __init__(self, sources: Sources, dev_only: set[str]) -> None:
        self.lists: list[Records] = []
        several = sum(len(lists) for _name, lists in sources) > 1
        seen: set[str] = set()
        ranks: dict[Version, int] = {}
        versions: list[Version] = []
        where = array("Q")
        for name, lists in sources:
            dev = name in dev_only
            for files in lists:
                number = len(self.lists) << 32
                records = PackedFiles.of(files).records
                self.lists.append(records)
                for index, filename in enumerate(_filenames(records)):
                    dist = parse_dist_filename(filename)
                    if dist is None or (dev and not dist.version.is_prerelease):
                        continue
                    if several:
                        if filename in seen:
                            continue
                        seen.add(filename)
                    versions.append(dist.version)
                    where.append(number | index)
                    ranks[dist.version] = 0
        seen.clear()
        # Versions are compared as ranks, and filenames in runs short enough that no one sort
        # holds the GIL for long.
        for rank, version in enumerate(sorted(ranks)):
            ranks[version] = rank

        def order(i: int) -> tuple[int, str]:
            at = where[i]
            return ranks[versions[i]], _filename(self.lists[at >> 32].record(at & 0xFFFFFFFF))

        runs = []
        for start in range(0, len(where), RUN):
            run = list(range(start, min(start + RUN, len(where))))
            run.sort(key=order)
            runs.append(run)
        ordered = list(heapq.merge(*runs, key=order))
        self.versions = [versions[i] for i in ordered]
        #: Per file: its list's number (high 32 bits) and its index in that list.
        self.where = array("Q", (where[i] for i in ordered))

    def __len__(self) -> int:
        return len(self.where)

    def record(self, index: int) -> str:
        at = self.where[index]
        return self.lists[at >> 32].record(at & 0xFFFFFFFF)


def _filename(record: str) -> str:
    return record[: record.index(SEP)]


def _filenames(records: Records) -> Iterator[str]:
    for record in records:
        yield _filename(record)


def _from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
