"""``kind: directory``: a local folder of wheels and sdists, flat or one folder per project.

The folder is re-scanned when its (or a project folder's) modification time changes. A file
copied over one of the same name (a nightly build with a constant version) changes no folder's
mtime, so a project's files are also re-stated on every page fetch. Each file's sha256 is
computed once per (size, mtime) and remembered, and its mtime is published as its upload time.
Scans, stats and hashing run in a thread, never on the event loop. A download gives exactly the
bytes the page announced, or fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from types import MappingProxyType

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.upstreams.base import (
    CHUNK_SIZE,
    Download,
    FetchResult,
    NotFound,
    RangeBody,
    RangeFetch,
    Upstream,
)
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Found:
    path: Path
    size: int
    mtime_ns: int


class _FileDownload(Download):
    """Exactly ``size`` bytes of the file: a file rewritten to another length since the page
    announced it (a new build copied over it) is an error, never a body of another length."""

    def __init__(self, upstream: str, path: Path, size: int) -> None:
        self._upstream = upstream
        self._path = path
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        size = self.size
        assert size is not None
        try:
            handle = await asyncio.to_thread(open, self._path, "rb")
        except OSError as exc:
            raise UpstreamError(self._upstream, f"cannot open {self._path.name}") from exc
        try:
            left = size
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK_SIZE, left))
                if not chunk:
                    raise UpstreamError(
                        self._upstream,
                        f"{self._path.name} ended after {size - left} of {size} bytes",
                    )
                left -= len(chunk)
                yield chunk
            if await asyncio.to_thread(handle.read, 1):
                raise UpstreamError(
                    self._upstream, f"{self._path.name} is longer than its {size} bytes"
                )
        except OSError as exc:
            raise UpstreamError(self._upstream, f"cannot read {self._path.name}") from exc
        finally:
            await asyncio.to_thread(handle.close)


class _LocalRanges:
    """Positioned reads of one file of the folder; a file rewritten between two reads (a new
    build copied over the old one) ends the reads rather than mixing the two."""

    def __init__(self, upstream: DirectoryUpstream, file: DistFile) -> None:
        self._upstream = upstream
        self._file = file
        self._path: Path | None = None
        self._seen: tuple[int, int, int, int] | None = None
        self._listed: tuple[int, int] = (-1, -1)

    async def __call__(self, start: int | None, length: int) -> RangeBody | None:
        if self._path is None:
            projects = await self._upstream._refresh()
            dist = parse_dist_filename(self._file.filename)
            found = projects.get(dist.project, {}).get(self._file.filename) if dist else None
            # The file hashed for the page, not one renamed in since with the same size.
            hashed = self._upstream.hashed(found)
            if found is None or hashed is None or hashed != self._file.sha256:
                return None
            self._path = found.path
            self._listed = (found.size, found.mtime_ns)
        return await asyncio.to_thread(self._read, self._path, start, length)

    def _read(self, path: Path, start: int | None, length: int) -> RangeBody | None:
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                seen = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                # The file as it was hashed for the page, and the same file on every read.
                if (stat.st_size, stat.st_mtime_ns) != self._listed or (
                    self._seen is not None and seen != self._seen
                ):
                    return None
                self._seen = seen
                first = max(stat.st_size - length, 0) if start is None else start
                data = os.pread(handle.fileno(), length, first)
        except OSError:
            return None
        return RangeBody(start=first, data=data, total=stat.st_size)


def _restat(files: dict[str, _Found]) -> dict[str, _Found]:
    """The files as they are now; one that is gone is left out."""
    fresh: dict[str, _Found] = {}
    for name, item in files.items():
        try:
            st = item.path.stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (item.size, item.mtime_ns):
            fresh[name] = item
        else:
            fresh[name] = _Found(item.path, st.st_size, st.st_mtime_ns)
    return fresh


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class DirectoryUpstream(Upstream):
    def __init__(
        self, config: UpstreamConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(config)
        assert config.path is not None
        self.root = config.path
        self._signature: tuple[tuple[str, int], ...] | None = None
        self._projects: dict[NormalizedName, dict[str, _Found]] = {}
        self._hashes: dict[tuple[Path, int, int], str] = {}
        self._lock = asyncio.Lock()

    def _dir_signature(self) -> tuple[tuple[str, int], ...]:
        """mtimes of the root and its sub-folders: adding or removing a file changes one."""
        if not self.root.is_dir():
            return ()
        marks = [(str(self.root), self.root.stat().st_mtime_ns)]
        with os.scandir(self.root) as entries:
            marks.extend(
                (entry.path, entry.stat().st_mtime_ns)
                for entry in entries
                if entry.is_dir(follow_symlinks=False)
            )
        return tuple(sorted(marks))

    def _scan(self) -> dict[NormalizedName, dict[str, _Found]]:
        projects: dict[NormalizedName, dict[str, _Found]] = {}
        if not self.root.is_dir():
            return projects
        root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(self.root):
            depth = Path(dirpath).relative_to(self.root).parts
            if len(depth) >= 1:
                dirnames.clear()  # flat, or one level of per-project folders
            for name in filenames:
                dist = parse_dist_filename(name)
                if dist is None:
                    continue
                try:
                    # Links are followed only as far as the folder goes: whoever may drop a
                    # file here must not be able to serve any file the proxy can read.
                    path = (Path(dirpath) / name).resolve(strict=True)
                    st = path.stat()
                except (OSError, RuntimeError):
                    continue
                if not path.is_relative_to(root):
                    log.warning("%s: skipping %s, a link to outside %s", self.name, name, root)
                    continue
                if not S_ISREG(st.st_mode):
                    continue
                projects.setdefault(dist.project, {}).setdefault(
                    name, _Found(path, st.st_size, st.st_mtime_ns)
                )
        return projects

    async def _refresh(self) -> dict[NormalizedName, dict[str, _Found]]:
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> dict[NormalizedName, dict[str, _Found]]:
        signature = await asyncio.to_thread(self._dir_signature)
        if signature != self._signature:
            self._projects = await asyncio.to_thread(self._scan)
            self._signature = signature
        return self._projects

    async def _project_files(self, project: NormalizedName) -> list[_Found]:
        """The project's files, each re-stated: overwriting a file changes no folder's mtime."""
        async with self._lock:
            projects = await self._refresh_locked()
            files = projects.get(project)
            if not files:
                return []
            fresh = await asyncio.to_thread(_restat, files)
            if fresh != files:
                for name, item in files.items():
                    if fresh.get(name) != item:
                        # That build is gone: its digest would only ever grow the cache.
                        self._hashes.pop((item.path, item.size, item.mtime_ns), None)
                projects[project] = fresh
            return list(fresh.values())

    def hashed(self, found: _Found | None) -> str | None:
        """The sha256 computed for this exact file (path, size, mtime), if any was."""
        if found is None:
            return None
        return self._hashes.get((found.path, found.size, found.mtime_ns))

    def _hash_all(self, found: list[_Found]) -> list[str]:
        out = []
        for item in found:
            key = (item.path, item.size, item.mtime_ns)
            digest = self._hashes.get(key)
            if digest is None:
                digest = _sha256(item.path)
                self._hashes[key] = digest
            out.append(digest)
        return out

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        try:
            found = await self._project_files(project)
        except OSError as exc:
            raise UpstreamError(self.name, f"cannot read {self.root}: {exc.strerror}") from exc
        if not found:
            return NotFound()
        try:
            digests = await asyncio.to_thread(self._hash_all, found)
        except OSError as exc:
            raise UpstreamError(self.name, f"cannot read {self.root}: {exc.strerror}") from exc
        dist_files = tuple(
            DistFile(
                filename=item.path.name,
                url=item.path.as_uri(),
                upstream=self.name,
                hashes=MappingProxyType({"sha256": digest}),
                size=item.size,
                upload_time=datetime.fromtimestamp(item.mtime_ns / 1e9, UTC),
            )
            for item, digest in zip(found, digests, strict=True)
        )
        return ProjectPage(name=project, files=dist_files)

    async def fetch_project_list(self) -> Collection[NormalizedName] | None:
        return frozenset(await self._refresh())

    def open_file(self, file: DistFile) -> AbstractAsyncContextManager[Download]:
        return self._open(file)

    def range_reader(self, file: DistFile) -> RangeFetch | None:
        return _LocalRanges(self, file)

    @asynccontextmanager
    async def _open(self, file: DistFile) -> AsyncIterator[Download]:
        projects = await self._refresh()
        dist = parse_dist_filename(file.filename)
        found = projects.get(dist.project, {}).get(file.filename) if dist else None
        if found is None:
            raise UpstreamError(self.name, f"{file.filename} is no longer in {self.root}")
        # The size the page announced, which its sha256 is of; the scan's may be older.
        yield _FileDownload(
            self.name, found.path, file.size if file.size is not None else found.size
        )
