"""Each upstream's page of each project, as last fetched.

A page is fresh for its upstream's ttl, then revalidated with the upstream's validators
(in the background with ``stale_while_revalidate``), and stood in for by its last good copy
when the upstream fails (for up to ``index.stale_if_error``, also across restarts).
Concurrent requests for one page share one upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cachetools import LRUCache
from packaging.utils import NormalizedName
from packaging.version import Version

from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.index.health import Breakers, as_upstream_error
from nightproxy.index.missing import MissingFiles
from nightproxy.index.state import Gone, IndexState
from nightproxy.model import ProjectPage
from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.packed import PackedFiles
from nightproxy.upstreams.base import NotFound, NotModified, Upstream
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

#: Bound on the "no such project" answers kept: names a client makes up must not grow the
#: service without bound.
ABSENT_LIMIT = 10_000

_Key = tuple[str, NormalizedName]


@dataclass(slots=True)
class PageEntry:
    """An upstream's page of one project as we last saw it; ``page`` None means 'not there'."""

    page: ProjectPage | None
    fetched_at: float
    generation: int
    #: The newest version on the page and its upload time, for the status page.
    newest: tuple[str, datetime | None] | None = None


def absorbed(page: ProjectPage) -> tuple[ProjectPage, tuple[str, datetime | None] | None]:
    """Blocking: a fetched page as it is kept (packed), and its newest version."""
    files = PackedFiles.of(page.files)
    best: tuple[Version, int] | None = None
    for index, filename in enumerate(files.filenames()):
        dist = parse_dist_filename(filename)
        if dist is not None and (best is None or dist.version > best[0]):
            best = (dist.version, index)
    kept = dataclasses.replace(page, files=files)
    if best is None:
        return kept, ("?", None) if len(files) else None
    return kept, (str(best[0]), files[best[1]].upload_time)


class UpstreamPages:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        *,
        breakers: Breakers,
        state: IndexState,
        store: CacheStore,
        missing: MissingFiles,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.breakers = breakers
        self.state = state
        self.store = store
        self.missing = missing
        self.clock = clock
        self._pages: dict[_Key, PageEntry] = {}
        self._absent: LRUCache[_Key, PageEntry] = LRUCache(ABSENT_LIMIT)
        self._inflight: dict[_Key, asyncio.Future[PageEntry]] = {}
        self._generation = 0
        self._background: set[asyncio.Task[object]] = set()
        self.stale_pages_served = 0
        #: Called after every upstream page request with (upstream, seconds, succeeded).
        self.on_upstream_request: Callable[[str, float, bool], None] | None = None
        #: Called when a background refresh found a project's page changed.
        self.on_refreshed: Callable[[NormalizedName], None] | None = None

    def entry(self, key: _Key) -> PageEntry | None:
        entry = self._pages.get(key)
        return entry if entry is not None else self._absent.get(key)

    def _put(self, key: _Key, entry: PageEntry) -> None:
        if entry.page is None:
            self._pages.pop(key, None)
            self._absent[key] = entry
        else:
            self._absent.pop(key, None)
            self._pages[key] = entry

    def expire(self, upstream: str, project: NormalizedName) -> None:
        """Fetch (revalidate) this page when next asked, whatever its ttl."""
        entry = self.entry((upstream, project))
        if entry is not None:
            entry.fetched_at = float("-inf")

    def held(self) -> Iterator[tuple[str, NormalizedName, ProjectPage]]:
        """(upstream, project, page) of every page held, in no particular order."""
        for (upstream, project), entry in list(self._pages.items()):
            if entry.page is not None:
                yield upstream, project, entry.page

    def newest(self) -> Iterator[tuple[str, NormalizedName, tuple[str, datetime | None]]]:
        """(upstream, project, (newest version, its upload time)) of every page held."""
        for (upstream, project), entry in list(self._pages.items()):
            if entry.newest is not None:
                yield upstream, project, entry.newest

    def ttl(self, upstream: str) -> float:
        ttl = self.upstreams[upstream].config.ttl
        return self.config.index.ttl if ttl is None else ttl

    def _observe(self, upstream: str, seconds: float, *, ok: bool) -> None:
        if self.on_upstream_request is not None:
            self.on_upstream_request(upstream, seconds, ok)

    async def _save(self, write: Callable[..., None], *args: object) -> None:
        """Persist page state in a thread; a failure (a full disk) costs the copy, not the page.

        What is saved only serves stale-if-error and keep_missing after a restart: the page in
        hand is still the one to answer with.
        """
        try:
            await asyncio.to_thread(write, *args)
        except (OSError, sqlite3.Error) as exc:
            self.store.note_write_error()
            log.warning("could not save page state to the cache (%s): serving it anyway", exc)

    async def _fetch(self, upstream: str, project: NormalizedName) -> PageEntry:
        """Fetch (or revalidate) one upstream's page; raises UpstreamError on failure."""
        self.breakers.check(upstream)
        previous = self.entry((upstream, project))
        baseline = previous.page if previous is not None else None
        if previous is None:
            # After a restart, compare with the page persisted before it, so that files the
            # upstream deleted while we were down are still retained for keep_missing, and
            # pick up what was being retained before.
            saved, gone = await asyncio.to_thread(self._load_state, upstream, project)
            baseline = saved[1] if saved is not None else None
            self.missing.restore(upstream, project, gone)
        etag = last_modified = None
        if previous is not None and previous.page is not None:
            etag, last_modified = previous.page.etag, previous.page.last_modified
        started = time.perf_counter()
        try:
            result = await self.upstreams[upstream].fetch_project(
                project, etag=etag, last_modified=last_modified
            )
        except Exception as exc:
            failure = as_upstream_error(upstream, exc)
            self.breakers.record_failure(upstream, failure, project)
            self._observe(upstream, time.perf_counter() - started, ok=False)
            if failure is exc:
                raise
            raise failure from exc
        self._observe(upstream, time.perf_counter() - started, ok=True)
        self.breakers.record_success(upstream)
        self.breakers.record_found(
            upstream, found=not isinstance(result, NotFound), project=project
        )
        now = self.clock()
        if isinstance(result, NotModified) and previous is not None:
            entry = PageEntry(previous.page, now, previous.generation, previous.newest)
            if previous.page is not None:
                # Confirmed current: that counts as a good fetch for stale-if-error, also
                # after a restart.
                await self._save(self.state.touch_page, upstream, project, now)
        elif isinstance(result, NotFound | NotModified):
            self._generation += 1
            entry = PageEntry(None, now, self._generation)
        else:
            self._generation += 1
            # Packing a page of 200,000 files is seconds of CPU: never on the event loop.
            page, newest = await asyncio.to_thread(absorbed, result)
            entry = PageEntry(page, now, self._generation, newest)
            await self._save(self.state.save_page, upstream, now, page)
        if entry.page is not baseline:
            changed: Gone | None = await asyncio.to_thread(
                self.missing.note_removed, upstream, project, baseline, entry.page
            )
            if changed is not None:
                await self._save(self.state.save_gone, upstream, project, changed)
        self._put((upstream, project), entry)
        return entry

    def _load_state(
        self, upstream: str, project: NormalizedName
    ) -> tuple[tuple[float, ProjectPage] | None, Gone]:
        """Blocking: the persisted page and keep_missing state of one upstream's project."""
        return self.state.load_page(upstream, project), self.state.load_gone(upstream, project)

    async def fetch_once(self, upstream: str, project: NormalizedName) -> PageEntry:
        """Single-flight around ``_fetch``: concurrent callers share one upstream request."""
        key = (upstream, project)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch(upstream, project))
            future.add_done_callback(retrieve)
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _stale_entry(self, upstream: str, project: NormalizedName) -> PageEntry | None:
        """The last good page within stale_if_error, from memory or from disk."""
        horizon = self.clock() - self.config.index.stale_if_error
        entry = self.entry((upstream, project))
        if entry is not None:
            return entry if entry.fetched_at >= horizon else None
        saved = await asyncio.to_thread(self.state.load_page, upstream, project)
        if saved is None or saved[0] < horizon:
            return None
        self._generation += 1
        entry = PageEntry(saved[1], saved[0], self._generation)
        self._put((upstream, project), entry)
        return entry

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_task_error)

    async def page(
        self, upstream: str, project: NormalizedName
    ) -> tuple[PageEntry | None, UpstreamError | None, bool]:
        """(entry, failure, stale?) for one upstream's page of a project."""
        entry = self.entry((upstream, project))
        now = self.clock()
        if entry is not None and now - entry.fetched_at < self.ttl(upstream):
            return entry, None, False
        if (
            entry is not None
            and self.config.index.stale_while_revalidate
            and now - entry.fetched_at < self.config.index.stale_if_error
        ):
            self._spawn(self._revalidate(upstream, project, entry.generation))
            # If the upstream is failing, this expired page is a stand-in, and says so.
            failing = self.breakers.failing(upstream)
            if failing:
                self.breakers.served_stale(upstream)
                self.stale_pages_served += 1
            return entry, None, failing
        try:
            return await self.fetch_once(upstream, project), None, False
        except UpstreamError as exc:
            stale = await self._stale_entry(upstream, project)
            if stale is not None and stale.page is not None:
                log.warning(
                    "upstream %r failed for %s (%s): serving its last good page",
                    upstream,
                    project,
                    exc.reason,
                )
                self.breakers.served_stale(upstream)
                self.stale_pages_served += 1
                return stale, exc, True
            log.warning("upstream %r left out of %s: %s", upstream, project, exc.reason)
            return None, exc, False

    async def _revalidate(self, upstream: str, project: NormalizedName, generation: int) -> None:
        """Stale-while-revalidate's background fetch; a changed page ends the served views.

        The views built from the expired page were given a whole ttl; without this, files the
        refresh found would wait out that ttl as well.
        """
        entry = await self.fetch_once(upstream, project)
        if entry.generation != generation and self.on_refreshed is not None:
            self.on_refreshed(project)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's failure as seen: its waiters may all be gone (cancelled at
    shutdown), and asyncio would log it as an error nobody retrieved."""
    if not future.cancelled():
        future.exception()


def _log_task_error(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.warning("background refresh failed: %s", exc)
