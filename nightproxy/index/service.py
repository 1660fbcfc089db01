"""The index service: upstream page cache, merging, and rendered-page cache.

This is the I/O edge around the pure parse/merge/render functions. Per upstream and project it
keeps the last page it fetched: fresh for the upstream's ttl, then revalidated with the
upstream's validators, and stood in for its last good copy when the upstream fails (for up to
``index.stale_if_error``, also across restarts). Merged pages are rendered once per change of
their inputs, per format and encoding, and served as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cachetools import LRUCache
from packaging.utils import NormalizedName

from nightproxy.cache.keys import file_key, file_path
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config, effective_retention
from nightproxy.index.builddate import build_time
from nightproxy.index.codec import gone_from_json, gone_to_json, page_from_json, page_to_json
from nightproxy.index.merge import merge_files
from nightproxy.index.retention import Policy, apply_retention, dev_only_files
from nightproxy.model import DistFile, ProjectPage, PublishedFile
from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.negotiate import Format
from nightproxy.simple_api.render import (
    render_index_html,
    render_index_json,
    render_project_html,
    render_project_json,
)
from nightproxy.upstreams.base import NotFound, NotModified, Upstream
from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

#: Circuit breaker: after this many consecutive failures an upstream is skipped for a while.
BREAKER_THRESHOLD = 3
BREAKER_BASE_DELAY = 5.0
BREAKER_MAX_DELAY = 300.0
#: Bounds on what client-chosen names and times can make the service hold: merged views
#: (the least recently used is rebuilt from its pages when asked again), views of one
#: ``as_of`` time (a CI job may pin a new one per run), and "no such project" answers.
VIEW_LIMIT = 10_000
AS_OF_VIEW_LIMIT = 64
ABSENT_LIMIT = 10_000


class AllUpstreamsFailedError(Exception):
    """No upstream of a project could answer, and none had a usable stale page."""

    def __init__(self, project: str, reasons: Mapping[str, str]) -> None:
        detail = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        super().__init__(f"no upstream could serve {project}: {detail}")
        self.reasons = dict(reasons)


class CircuitOpenError(UpstreamError):
    pass


@dataclass(slots=True)
class UpstreamHealth:
    """What readiness and the status page report per upstream."""

    failures: int = 0
    open_until: float = 0.0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    served_stale: bool = False

    @property
    def state(self) -> str:
        if self.failures == 0:
            return "ok"
        return "stale" if self.served_stale else "down"


@dataclass(slots=True)
class PageEntry:
    """An upstream's page of one project as we last saw it; ``page`` None means 'not there'."""

    page: ProjectPage | None
    fetched_at: float
    generation: int


@dataclass(slots=True)
class Rendered:
    body: bytes
    etag: str
    #: The response headers that do not change per request, derived once by the server.
    headers: Mapping[str, str] | None = None
    #: The reply's status line and headers as the server's fast path last sent them:
    #: (the second, the max-age, the bytes), reused within that second.
    wire: tuple[int, str, bytes] | None = None


@dataclass(slots=True)
class ProjectView:
    """A merged, retention-filtered project page, rendered lazily once per representation."""

    name: NormalizedName
    files: tuple[PublishedFile, ...]
    missing: tuple[str, ...]
    stale: tuple[str, ...]
    retained: int
    built_at: float
    fresh_until: float
    inputs: tuple[int, ...]
    by_key: dict[str, PublishedFile] = field(default_factory=dict)
    _rendered: dict[tuple[Format, bool], Rendered] = field(default_factory=dict)

    def rendered(self, fmt: Format, gzipped: bool) -> Rendered | None:
        return self._rendered.get((fmt, gzipped))

    def render(self, fmt: Format, gzipped: bool) -> Rendered:
        """CPU work: call from a thread. Idempotent, so a race only renders twice."""
        plain = self._rendered.get((fmt, False))
        if plain is None:
            body = (
                render_project_json(self.name, self.files)
                if fmt == "json"
                else render_project_html(self.name, self.files)
            )
            plain = Rendered(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            self._rendered[(fmt, False)] = plain
        if not gzipped:
            return plain
        # A representation's strong ETag must differ per content-coding.
        packed = Rendered(
            gzip.compress(plain.body, compresslevel=6, mtime=0), plain.etag[:-1] + '-gz"'
        )
        self._rendered[(fmt, True)] = packed
        return packed


@dataclass(slots=True)
class IndexView:
    names: tuple[NormalizedName, ...]
    built_at: float
    fresh_until: float
    missing: tuple[str, ...]
    stale: tuple[str, ...] = ()
    _rendered: dict[tuple[Format, bool], Rendered] = field(default_factory=dict)

    def rendered(self, fmt: Format, gzipped: bool) -> Rendered | None:
        return self._rendered.get((fmt, gzipped))

    def render(self, fmt: Format, gzipped: bool) -> Rendered:
        got = self._rendered.get((fmt, gzipped))
        if got is not None:
            return got
        body = render_index_json(self.names) if fmt == "json" else render_index_html(self.names)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + ('-gz"' if gzipped else '"')
        if gzipped:
            body = gzip.compress(body, compresslevel=6, mtime=0)
        got = Rendered(body, etag)
        self._rendered[(fmt, gzipped)] = got
        return got


#: A merged view's key: the project, and the ``as_of`` time as a timestamp (None: now).
_ViewKey = tuple[NormalizedName, float | None]


class IndexService:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        store: CacheStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.upstreams = dict(upstreams)
        self.store = store
        self.clock = clock
        self.health: dict[str, UpstreamHealth] = {name: UpstreamHealth() for name in upstreams}
        self._pages: dict[tuple[str, NormalizedName], PageEntry] = {}
        #: Upstream answers "not there" (page None), apart so that names a client makes up
        #: cannot grow the service without bound.
        self._absent: LRUCache[tuple[str, NormalizedName], PageEntry] = LRUCache(ABSENT_LIMIT)
        self._inflight: dict[tuple[str, NormalizedName], asyncio.Future[PageEntry]] = {}
        self._views: LRUCache[_ViewKey, ProjectView] = LRUCache(VIEW_LIMIT)
        self._as_of_views: LRUCache[_ViewKey, ProjectView] = LRUCache(AS_OF_VIEW_LIMIT)
        self._view_inflight: dict[
            tuple[NormalizedName, float | None], asyncio.Future[ProjectView]
        ] = {}
        self._index: IndexView | None = None
        self._lists: dict[str, tuple[frozenset[NormalizedName], float]] = {}
        self._gone: dict[tuple[str, NormalizedName], dict[str, tuple[DistFile, float]]] = {}
        self._generation = 0
        self._background: set[asyncio.Task[object]] = set()
        self.stale_pages_served = 0
        #: Called after every upstream page request with (upstream, seconds, succeeded).
        self.on_upstream_request: Callable[[str, float, bool], None] | None = None

    # -- per-upstream pages -----------------------------------------------------------------

    def _entry(self, key: tuple[str, NormalizedName]) -> PageEntry | None:
        entry = self._pages.get(key)
        return entry if entry is not None else self._absent.get(key)

    def _put_entry(self, key: tuple[str, NormalizedName], entry: PageEntry) -> None:
        if entry.page is None:
            self._pages.pop(key, None)
            self._absent[key] = entry
        else:
            self._absent.pop(key, None)
            self._pages[key] = entry

    def _ttl(self, upstream: str) -> float:
        ttl = self.upstreams[upstream].config.ttl
        return self.config.index.ttl if ttl is None else ttl

    def _observe(self, upstream: str, seconds: float, *, ok: bool) -> None:
        if self.on_upstream_request is not None:
            self.on_upstream_request(upstream, seconds, ok)

    def _breaker_open(self, upstream: str) -> bool:
        return self.health[upstream].open_until > self.clock()

    def _record_success(self, upstream: str) -> None:
        health = self.health[upstream]
        health.failures = 0
        health.open_until = 0.0
        health.served_stale = False
        health.last_success = self.clock()

    def _record_failure(self, upstream: str, reason: str) -> None:
        health = self.health[upstream]
        health.failures += 1
        health.last_error = reason
        health.last_error_at = self.clock()
        if health.failures >= BREAKER_THRESHOLD:
            delay = min(
                BREAKER_BASE_DELAY * 2 ** (health.failures - BREAKER_THRESHOLD), BREAKER_MAX_DELAY
            )
            health.open_until = self.clock() + delay
            log.warning(
                "upstream %r failed %d times: skipping it for %.0fs",
                upstream,
                health.failures,
                delay,
            )

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
        if self._breaker_open(upstream):
            raise CircuitOpenError(upstream, "skipped: failing repeatedly (circuit open)")
        previous = self._entry((upstream, project))
        baseline = previous.page if previous is not None else None
        if previous is None:
            # After a restart, compare with the page persisted before it, so that files the
            # upstream deleted while we were down are still retained for keep_missing, and
            # pick up what was being retained before.
            baseline, gone = await asyncio.to_thread(
                _load_persisted_state, self.store, upstream, project
            )
            if gone and (upstream, project) not in self._gone:
                self._gone[(upstream, project)] = gone
        etag = last_modified = None
        if previous is not None and previous.page is not None:
            etag, last_modified = previous.page.etag, previous.page.last_modified
        started = time.perf_counter()
        try:
            result = await self.upstreams[upstream].fetch_project(
                project, etag=etag, last_modified=last_modified
            )
        except Exception as exc:
            failure = _as_upstream_error(upstream, exc)
            self._record_failure(upstream, failure.reason)
            self._observe(upstream, time.perf_counter() - started, ok=False)
            if failure is exc:
                raise
            raise failure from exc
        self._observe(upstream, time.perf_counter() - started, ok=True)
        self._record_success(upstream)
        now = self.clock()
        if isinstance(result, NotModified) and previous is not None:
            entry = PageEntry(previous.page, now, previous.generation)
            if previous.page is not None:
                # Confirmed current: that counts as a good fetch for stale-if-error, also
                # after a restart.
                await self._save(self.store.touch_page, upstream, project, now)
        elif isinstance(result, NotFound | NotModified):
            self._generation += 1
            entry = PageEntry(None, now, self._generation)
        else:
            self._generation += 1
            entry = PageEntry(result, now, self._generation)
            await self._save(_persist_page, self.store, upstream, now, result)
        if entry.page is not baseline and self._note_removed(
            upstream, project, baseline, entry.page
        ):
            body = gone_to_json(self._gone[(upstream, project)])
            await self._save(self.store.save_retained, upstream, project, body)
        self._put_entry((upstream, project), entry)
        return entry

    def _note_removed(
        self,
        upstream: str,
        project: NormalizedName,
        old: ProjectPage | None,
        new: ProjectPage | None,
    ) -> bool:
        """Remember files an upstream stopped listing, for ``keep_missing``; True if changed."""
        gone = self._gone.setdefault((upstream, project), {})
        listed = {f.filename for f in new.files} if new is not None else set()
        back = [name for name in gone if name in listed]
        for filename in back:
            del gone[filename]  # back again, or re-uploaded under the same name
        added = 0
        if old is not None:
            now = self.clock()
            for file in old.files:
                if file.filename not in listed and file.filename not in gone:
                    gone[file.filename] = (file, now)
                    added += 1
        return bool(back or added)

    def _retained(self, upstream: str, project: NormalizedName) -> list[DistFile]:
        """Files the upstream deleted that we still hold, within ``keep_missing``."""
        gone = self._gone.get((upstream, project))
        if not gone:
            return []
        keep = effective_retention(self.config, upstream, project).keep_missing
        now = self.clock()
        kept = []
        for filename, (file, since) in list(gone.items()):
            if now - since > keep:
                del gone[filename]
            elif self.store.resolve(file_key(file)) is not None:
                kept.append(file.replace(retained=True))
        return kept

    async def _fetch_once(self, upstream: str, project: NormalizedName) -> PageEntry:
        """Single-flight around ``_fetch``: concurrent callers share one upstream request."""
        key = (upstream, project)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch(upstream, project))
            future.add_done_callback(_retrieve)
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _stale_entry(self, upstream: str, project: NormalizedName) -> PageEntry | None:
        """The last good page within stale_if_error, from memory or from disk."""
        horizon = self.clock() - self.config.index.stale_if_error
        entry = self._entry((upstream, project))
        if entry is not None:
            return entry if entry.fetched_at >= horizon else None
        saved = await asyncio.to_thread(_load_persisted, self.store, upstream, project)
        if saved is None or saved[0] < horizon:
            return None
        self._generation += 1
        entry = PageEntry(saved[1], saved[0], self._generation)
        self._put_entry((upstream, project), entry)
        return entry

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_task_error)

    async def _page(
        self, upstream: str, project: NormalizedName
    ) -> tuple[PageEntry | None, str | None, bool]:
        """(entry, failure reason, stale?) for one upstream's page of a project."""
        entry = self._entry((upstream, project))
        now = self.clock()
        if entry is not None and now - entry.fetched_at < self._ttl(upstream):
            return entry, None, False
        if (
            entry is not None
            and self.config.index.stale_while_revalidate
            and now - entry.fetched_at < self.config.index.stale_if_error
        ):
            self._spawn(self._revalidate(upstream, project, entry.generation))
            # If the upstream is failing, this expired page is a stand-in, and says so.
            failing = self.health[upstream].failures > 0
            if failing:
                self.health[upstream].served_stale = True
                self.stale_pages_served += 1
            return entry, None, failing
        try:
            return await self._fetch_once(upstream, project), None, False
        except UpstreamError as exc:
            stale = await self._stale_entry(upstream, project)
            if stale is not None and stale.page is not None:
                log.warning(
                    "upstream %r failed for %s (%s): serving its last good page",
                    upstream,
                    project,
                    exc.reason,
                )
                self.health[upstream].served_stale = True
                self.stale_pages_served += 1
                return stale, exc.reason, True
            log.warning("upstream %r left out of %s: %s", upstream, project, exc.reason)
            return None, exc.reason, False

    async def _revalidate(self, upstream: str, project: NormalizedName, generation: int) -> None:
        """Stale-while-revalidate's background fetch; a changed page ends the served views.

        The views built from the expired page were given a whole ttl; without this, files the
        refresh found would wait out that ttl as well.
        """
        entry = await self._fetch_once(upstream, project)
        if entry.generation != generation:
            for view in self._views_of(project):
                view.fresh_until = 0.0

    # -- merged project views -----------------------------------------------------------------

    def _view_map(self, as_of: datetime | None) -> LRUCache[_ViewKey, ProjectView]:
        return self._views if as_of is None else self._as_of_views

    def _views_of(self, project: NormalizedName) -> list[ProjectView]:
        """Every built view of a project: today's and those of any ``as_of`` time."""
        views = [v for (name, _t), v in list(self._as_of_views.items()) if name == project]
        current = self._views.get((project, None))
        return views if current is None else [current, *views]

    def upstreams_for(self, project: NormalizedName) -> tuple[str, ...]:
        return self.config.upstream_names_for(project)

    def fresh_view(
        self, project: NormalizedName, as_of: datetime | None = None
    ) -> ProjectView | None:
        """The built page while it is fresh, without waiting: the hot path of a cached page.

        A view whose every upstream said "no such project" is returned too; ``view`` maps it
        to None.
        """
        view = self._view_map(as_of).get((project, as_of.timestamp() if as_of else None))
        if view is not None and self.clock() < view.fresh_until:
            return view
        return None

    async def view(
        self, project: NormalizedName, as_of: datetime | None = None
    ) -> ProjectView | None:
        """The merged page of a project; None when no upstream has it.

        Raises AllUpstreamsFailedError when every upstream failed without a stale stand-in.
        """
        view = self.fresh_view(project, as_of)
        if view is not None:
            return view if view.files or view.inputs else None
        key = (project, as_of.timestamp() if as_of else None)
        view = self._view_map(as_of).get(key)
        future = self._view_inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._build_view(project, as_of, view))
            future.add_done_callback(_retrieve)
            self._view_inflight[key] = future
            future.add_done_callback(lambda _f: self._view_inflight.pop(key, None))
        built = await asyncio.shield(future)
        return built if built.files or built.inputs else None

    async def _build_view(
        self, project: NormalizedName, as_of: datetime | None, previous: ProjectView | None
    ) -> ProjectView:
        names = self.upstreams_for(project)
        results = await asyncio.gather(*(self._page(name, project) for name in names))
        missing: list[str] = []
        stale: list[str] = []
        reasons: dict[str, str] = {}
        pages: list[tuple[str, ProjectPage]] = []
        inputs: list[int] = []
        for name, (entry, reason, was_stale) in zip(names, results, strict=True):
            if entry is None:
                missing.append(name)
                reasons[name] = reason or "failed"
                continue
            if was_stale:
                stale.append(name)
            retained = self._retained(name, project)
            if entry.page is not None or retained:
                listed = (entry.page.files if entry.page is not None else ()) + tuple(retained)
                pages.append((name, ProjectPage(name=project, files=listed)))
                inputs.append(entry.generation)
        if not pages and missing:
            raise AllUpstreamsFailedError(project, reasons)
        now = self.clock()
        fresh_for = min((self._ttl(n) for n in names), default=self.config.index.ttl)
        if stale or missing:
            # A degraded page is retried soon rather than pinned for a whole ttl.
            fresh_for = min(fresh_for, 5.0)
        key_inputs = tuple(inputs)
        if (
            previous is not None
            and previous.inputs == key_inputs
            and tuple(missing) == previous.missing
            and tuple(stale) == previous.stale
            and now - previous.built_at < self.config.index.ttl
        ):
            previous.fresh_until = now + fresh_for
            return previous
        files = await self._publish(project, pages, as_of, now)
        view = ProjectView(
            name=project,
            files=files,
            missing=tuple(missing),
            stale=tuple(stale),
            retained=sum(1 for f in files if f.source.retained),
            built_at=now,
            fresh_until=now + fresh_for,
            inputs=key_inputs,
        )
        view.by_key = {_key_of(pub): pub for pub in files}
        self._view_map(as_of)[(project, as_of.timestamp() if as_of else None)] = view
        return view

    async def _publish(
        self,
        project: NormalizedName,
        pages: list[tuple[str, ProjectPage]],
        as_of: datetime | None,
        now: float,
    ) -> tuple[PublishedFile, ...]:
        # A dev_only feed's releases are dropped before merging, so that a release it also
        # carries cannot shadow the same file from a later, real release feed.
        merged = merge_files(
            dev_only_files(page.files) if self.upstreams[name].config.dev_only else page.files
            for name, page in pages
        )
        keys = [file_key(f) for f in merged]
        # PEP 700 (API 1.1) requires a size the feed may not list; the verified copy has one.
        sizes = {
            key: size
            for file, key in zip(merged, keys, strict=True)
            if file.size is None
            and (sha := self.store.resolve(key)) is not None
            and (size := self.store.size_of(sha)) is not None
        }
        first_seen = await asyncio.to_thread(self.store.first_seen, keys, now)
        policy = Policy.for_project(self.config, project)
        published = []
        for file, key in zip(merged, keys, strict=True):
            published.append(
                self._published(project, file, key, first_seen.get(key, now), sizes.get(key))
            )
        return apply_retention(
            published,
            policy,
            now=datetime.fromtimestamp(now, UTC),
            as_of=as_of,
            dev_only={n for n, up in self.upstreams.items() if up.config.dev_only},
        )

    def _published(
        self,
        project: NormalizedName,
        file: DistFile,
        key: str,
        first_seen: float,
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
        when, source = build_time(file, datetime.fromtimestamp(first_seen, UTC))
        return PublishedFile(
            source=file,
            url=file_path(project, key, file.filename),
            hashes=hashes,
            core_metadata=meta,
            build_time=when,
            build_time_source=source,
            cached_size=cached_size,
        )

    async def find_file(self, project: NormalizedName, key: str) -> PublishedFile | None:
        """The published file behind a key: from a built view, else from a fresh one."""
        for built in self._views_of(project):
            if key in built.by_key:
                return built.by_key[key]
        view = await self.view(project)
        if view is not None and key in view.by_key:
            return view.by_key[key]
        # An older page may link a file that retention now hides: it still names real bytes.
        for (_upstream, name), entry in list(self._pages.items()):
            if name != project or entry.page is None:
                continue
            for file in entry.page.files:
                if file_key(file) == key:
                    return self._published(project, file, key, self.clock())
        return None

    def invalidate(self, project: NormalizedName) -> None:
        """Forget rendered views of a project (its published hashes changed)."""
        for view in self._views_of(project):
            view.fresh_until = 0.0
            view.inputs = ()

    # -- the project list ---------------------------------------------------------------------

    async def project_list(self) -> IndexView:
        index = self._index
        now = self.clock()
        if index is not None and now < index.fresh_until:
            return index
        results = await asyncio.gather(*(self._list_one(name) for name in self.upstreams))
        names: set[NormalizedName] = set()
        missing = []
        stale = []
        for name, (listed, failed, was_stale) in zip(self.upstreams, results, strict=True):
            if failed:
                missing.append(name)
            if was_stale:
                stale.append(name)
            if listed is not None:
                names |= listed
        names |= set(self.config.projects)
        fresh_for = 5.0 if missing or stale else self.config.index.ttl
        index = IndexView(tuple(sorted(names)), now, now + fresh_for, tuple(missing), tuple(stale))
        self._index = index
        return index

    async def _list_one(self, name: str) -> tuple[frozenset[NormalizedName] | None, bool, bool]:
        """(names, failed without a stand-in, served from the last good list)."""
        try:
            if self._breaker_open(name):
                raise CircuitOpenError(name, "circuit open")
            result = await self.upstreams[name].fetch_project_list()
        except Exception as exc:
            exc = _as_upstream_error(name, exc)
            last = self._lists.get(name)
            if last is not None and self.clock() - last[1] <= self.config.index.stale_if_error:
                log.warning(
                    "upstream %r failed to list projects (%s): using its last list",
                    name,
                    exc.reason,
                )
                return last[0], False, True
            log.warning("upstream %r left out of the project list: %s", name, exc.reason)
            return None, True, False
        if result is None:
            return None, False, False
        # Pinned projects are listed only from their own upstreams.
        listed = frozenset(
            p for p in result if p not in self.config.projects or name in self.upstreams_for(p)
        )
        self._lists[name] = (listed, self.clock())
        return listed, False, False

    def newest_builds(self) -> list[tuple[NormalizedName, str, str, datetime | None]]:
        """(project, upstream, newest version, its upload time) for every page seen so far."""
        rows = []
        for (upstream, project), entry in sorted(self._pages.items()):
            if entry.page is None or not entry.page.files:
                continue
            newest = max(entry.page.files, key=_version_key)
            version = parse_dist_filename(newest.filename)
            rows.append(
                (project, upstream, str(version.version) if version else "?", newest.upload_time)
            )
        return rows

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _persist_page(store: CacheStore, upstream: str, now: float, page: ProjectPage) -> None:
    """Blocking: serialising a 2,000-file page is CPU work too, so both happen in a thread."""
    store.save_page(upstream, page.name, now, page_to_json(page))


def _load_persisted(
    store: CacheStore, upstream: str, project: str
) -> tuple[float, ProjectPage] | None:
    """Blocking: a persisted page and when it was last known good; None if absent or unreadable."""
    saved = store.load_page(upstream, project)
    if saved is None:
        return None
    try:
        return saved[0], page_from_json(saved[1])
    except (ValueError, KeyError, TypeError):
        return None


def _load_persisted_state(
    store: CacheStore, upstream: str, project: str
) -> tuple[ProjectPage | None, dict[str, tuple[DistFile, float]]]:
    """Blocking: the persisted page and keep_missing state of one upstream's project."""
    saved = _load_persisted(store, upstream, project)
    text = store.load_retained(upstream, project)
    gone: dict[str, tuple[DistFile, float]] = {}
    if text is not None:
        try:
            gone = gone_from_json(text)
        except (ValueError, KeyError, TypeError):
            gone = {}
    return (saved[1] if saved is not None else None), gone


def _version_key(file: DistFile) -> tuple[int, object]:
    dist = parse_dist_filename(file.filename)
    return (1, dist.version) if dist else (0, file.filename)


def _key_of(pub: PublishedFile) -> str:
    return pub.url.split("/")[-2]


def _as_upstream_error(upstream: str, exc: Exception) -> UpstreamError:
    """Any failure of one upstream's fetch as that upstream's failure, never the page's.

    Upstream kinds raise UpstreamError for what they expect; anything else (a parser bug, a
    malformed body no one foresaw) must still leave only that upstream out. Its text may
    carry a URL with a token in it, so only its type and where it was raised are kept.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamError(upstream, "timed out")
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
    log.warning("upstream %r: unexpected %s%s", upstream, type(exc).__name__, where)
    return UpstreamError(upstream, f"unexpected {type(exc).__name__}")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's failure as seen: its waiters may all be gone (cancelled at
    shutdown), and asyncio would log it as an error nobody retrieved."""
    if not future.cancelled():
        future.exception()


def _log_task_error(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.warning("background refresh failed: %s", exc)
