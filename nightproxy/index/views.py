"""Merged project pages: every upstream's page of a project, merged, retention-filtered and
prepared once per change of its inputs, for now and for any ``as_of`` time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from cachetools import LRUCache
from packaging.utils import NormalizedName

from nightproxy.cache.keys import file_key
from nightproxy.config import Config
from nightproxy.index.pages import UpstreamPages, retrieve
from nightproxy.index.prepared import Representations
from nightproxy.index.publish import Publisher, Sources
from nightproxy.model import ProjectPage, PublishedFile
from nightproxy.simple_api.negotiate import Format
from nightproxy.simple_api.published import PackedPublished
from nightproxy.simple_api.render import iter_project_html, iter_project_json

#: Bounds on what client-chosen names and times can make the service hold: merged views
#: (the least recently used is rebuilt from its pages when asked again), and views of one
#: ``as_of`` time (a CI job may pin a new one per run).
VIEW_LIMIT = 10_000
AS_OF_VIEW_LIMIT = 64
#: How soon a page missing an upstream, or built from a stale copy, is built again.
DEGRADED_TTL = 5.0


class AllUpstreamsFailedError(Exception):
    """No upstream of a project could answer, and none had a usable stale page."""

    def __init__(self, project: str, reasons: dict[str, str], *, local: bool = False) -> None:
        detail = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        super().__init__(f"no upstream could serve {project}: {detail}")
        self.reasons = dict(reasons)
        #: Some upstream was never asked because this server is short of descriptors or
        #: memory: "try again" (503), not "the upstreams failed" (502).
        self.local = local
        first = next(iter(reasons.items()), None)
        #: One line for a status line: the project and the first upstream's reason.
        self.summary = f"no upstream could serve {project}" + (
            f" ({first[0]}: {first[1]})" if first else ""
        )


@dataclass(slots=True)
class ProjectView:
    """A merged, retention-filtered project page, prepared lazily once per representation."""

    name: NormalizedName
    files: PackedPublished
    missing: tuple[str, ...]
    stale: tuple[str, ...]
    retained: int
    built_at: float
    fresh_until: float
    inputs: tuple[int, ...]
    prepared: Representations = field(init=False)

    def __post_init__(self) -> None:
        self.prepared = Representations(self._render)

    def _render(self, fmt: Format) -> Iterator[bytes]:
        if fmt == "json":
            return iter_project_json(self.name, self.files, self.files.filenames())
        return iter_project_html(self.name, self.files)


#: A merged view's key: the project, and the ``as_of`` time as a timestamp (None: now).
_ViewKey = tuple[NormalizedName, float | None]


def _key(project: NormalizedName, as_of: datetime | None) -> _ViewKey:
    return (project, as_of.timestamp() if as_of else None)


class ProjectViews:
    def __init__(
        self,
        config: Config,
        pages: UpstreamPages,
        publisher: Publisher,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.pages = pages
        self.publisher = publisher
        self.clock = clock
        self.current: LRUCache[_ViewKey, ProjectView] = LRUCache(VIEW_LIMIT)
        self.as_of: LRUCache[_ViewKey, ProjectView] = LRUCache(AS_OF_VIEW_LIMIT)
        self.inflight: dict[_ViewKey, asyncio.Future[ProjectView]] = {}

    def _map(self, as_of: datetime | None) -> LRUCache[_ViewKey, ProjectView]:
        return self.current if as_of is None else self.as_of

    def of(self, project: NormalizedName) -> list[ProjectView]:
        """Every built view of a project: today's and those of any ``as_of`` time."""
        views = [v for (name, _t), v in list(self.as_of.items()) if name == project]
        current = self.current.get((project, None))
        return views if current is None else [current, *views]

    def expire(self, project: NormalizedName) -> None:
        """Have a project's views built again when next asked (their pages changed)."""
        for view in self.of(project):
            view.fresh_until = 0.0

    def invalidate(self, project: NormalizedName) -> None:
        """Forget a project's views (their published hashes changed)."""
        for view in self.of(project):
            view.fresh_until = 0.0
            view.inputs = ()

    def upstreams_for(self, project: NormalizedName) -> tuple[str, ...]:
        return self.config.upstream_names_for(project)

    def fresh(self, project: NormalizedName, as_of: datetime | None = None) -> ProjectView | None:
        """The built page while it is fresh, without waiting: the hot path of a cached page.

        A view whose every upstream said "no such project" is returned too; ``view`` maps it
        to None.
        """
        view = self._map(as_of).get(_key(project, as_of))
        if view is not None and self.clock() < view.fresh_until:
            return view
        return None

    async def view(
        self, project: NormalizedName, as_of: datetime | None = None
    ) -> ProjectView | None:
        """The merged page of a project; None when no upstream has it.

        Raises AllUpstreamsFailedError when every upstream failed without a stale stand-in.
        """
        view = self.fresh(project, as_of)
        if view is not None:
            return view if view.files or view.inputs else None
        key = _key(project, as_of)
        view = self._map(as_of).get(key)
        future = self.inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._build(project, as_of, view))
            future.add_done_callback(retrieve)
            self.inflight[key] = future
            future.add_done_callback(lambda _f: self.inflight.pop(key, None))
        built = await asyncio.shield(future)
        return built if built.files or built.inputs else None

    async def _build(
        self, project: NormalizedName, as_of: datetime | None, previous: ProjectView | None
    ) -> ProjectView:
        names = self.upstreams_for(project)
        results = await asyncio.gather(*(self.pages.page(name, project) for name in names))
        missing: list[str] = []
        stale: list[str] = []
        reasons: dict[str, str] = {}
        local = False
        sources: Sources = []
        inputs: list[int] = []
        for name, (entry, failure, was_stale) in zip(names, results, strict=True):
            if entry is None:
                missing.append(name)
                reasons[name] = failure.reason if failure is not None else "failed"
                local = local or (failure is not None and failure.local)
                continue
            if was_stale:
                stale.append(name)
            retained = self.pages.missing.retained(name, project)
            if entry.page is not None or retained:
                listed = [] if entry.page is None else [entry.page.files]
                sources.append((name, [*listed, retained] if retained else listed))
                inputs.append(entry.generation)
        if not sources and missing:
            raise AllUpstreamsFailedError(project, reasons, local=local)
        now = self.clock()
        fresh_for = min((self.pages.ttl(n) for n in names), default=self.config.index.ttl)
        if stale or missing:
            # A degraded page is retried soon rather than pinned for a whole ttl.
            fresh_for = min(fresh_for, DEGRADED_TTL)
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
        files, retained_count = await asyncio.to_thread(
            self.publisher.build, project, sources, as_of, now
        )
        view = ProjectView(
            name=project,
            files=files,
            missing=tuple(missing),
            stale=tuple(stale),
            retained=retained_count,
            built_at=now,
            fresh_until=now + fresh_for,
            inputs=key_inputs,
        )
        self._map(as_of)[_key(project, as_of)] = view
        return view

    async def find_file(self, project: NormalizedName, key: str) -> PublishedFile | None:
        """The published file behind a key: from a built view, else from a fresh one."""
        for built in self.of(project):
            if (pub := built.files.find(key)) is not None:
                return pub
        view = await self.view(project)
        if view is not None and (pub := view.files.find(key)) is not None:
            return pub
        # An older page may link a file that retention now hides: it still names real bytes.
        pages = [page for _upstream, name, page in self.pages.held() if name == project]
        if not pages:
            return None
        return await asyncio.to_thread(self._find_in_pages, project, key, pages)

    def _find_in_pages(
        self, project: NormalizedName, key: str, pages: list[ProjectPage]
    ) -> PublishedFile | None:
        """Blocking: the file behind ``key`` on any of ``pages``."""
        for page in pages:
            for file in page.files:
                if file_key(file) == key:
                    return self.publisher.published(project, file, key, self.clock())
        return None
