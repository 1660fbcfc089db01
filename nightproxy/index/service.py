"""The index service: the one object the server asks for pages.

It wires the parts, each in its own module:

- ``health``: per-upstream health and the circuit breaker;
- ``pages``: each upstream's page of each project (ttl, revalidation, stale copies);
- ``missing``: files upstreams stopped listing (``keep_missing``);
- ``publish``: merged files as the proxy publishes them (retention applied);
- ``views``: merged project pages, for now and for ``as_of`` times;
- ``listing``: the project list;
- ``prepared``: the bytes and ETags of a page's representations;
- ``state``: what all this keeps across restarts;
- ``readiness``: the background probe of upstreams that are down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime

from packaging.utils import NormalizedName

from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.index.health import Breakers, UpstreamHealth
from nightproxy.index.listing import ListView, ProjectListing
from nightproxy.index.missing import MissingFiles
from nightproxy.index.pages import UpstreamPages
from nightproxy.index.publish import Publisher
from nightproxy.index.readiness import Prober
from nightproxy.index.state import IndexState
from nightproxy.index.views import AllUpstreamsFailedError, ProjectView, ProjectViews
from nightproxy.model import PublishedFile
from nightproxy.upstreams.base import Upstream

__all__ = ["AllUpstreamsFailedError", "IndexService", "ListView", "ProjectView"]


class Clock:
    """The service's time, shared by its parts; replaceable as a whole (``service.clock``)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now()


class IndexService:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        store: CacheStore,
        state: IndexState,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.upstreams = dict(upstreams)
        self.store = store
        self._clock = Clock(clock)
        self.state = state
        self.breakers = Breakers(self.upstreams, self._clock)
        self.pages = UpstreamPages(
            config,
            self.upstreams,
            breakers=self.breakers,
            state=self.state,
            store=store,
            missing=MissingFiles(config, store, self._clock),
            clock=self._clock,
        )
        publisher = Publisher(config, self.upstreams, store, self.state)
        self.views = ProjectViews(config, self.pages, publisher, self._clock)
        self.pages.on_refreshed = self.views.expire
        for name, upstream in self.upstreams.items():
            # ``index.ttl`` for every upstream without a ttl of its own, whatever its kind.
            upstream.ttl = self.pages.ttl(name)
        self.listing = ProjectListing(config, self.upstreams, self.breakers, self._clock)
        self.prober = Prober(self.upstreams, self.breakers)

    def start(self) -> None:
        """Start the background work: probing upstreams that are down, for readiness."""
        self.prober.start()

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, now: Callable[[], float]) -> None:
        self._clock.now = now

    @property
    def health(self) -> dict[str, UpstreamHealth]:
        return self.breakers.health

    @property
    def stale_pages_served(self) -> int:
        return self.pages.stale_pages_served

    @property
    def on_upstream_request(self) -> Callable[[str, float, bool], None] | None:
        """Called after every upstream page request with (upstream, seconds, succeeded)."""
        return self.pages.on_upstream_request

    @on_upstream_request.setter
    def on_upstream_request(self, observe: Callable[[str, float, bool], None] | None) -> None:
        self.pages.on_upstream_request = observe

    def upstreams_for(self, project: NormalizedName) -> tuple[str, ...]:
        return self.config.upstream_names_for(project)

    def fresh_view(
        self, project: NormalizedName, as_of: datetime | None = None
    ) -> ProjectView | None:
        return self.views.fresh(project, as_of)

    async def view(
        self, project: NormalizedName, as_of: datetime | None = None
    ) -> ProjectView | None:
        return await self.views.view(project, as_of)

    async def find_file(self, project: NormalizedName, key: str) -> PublishedFile | None:
        return await self.views.find_file(project, key)

    def upstream_changed(self, upstream: str, projects: Collection[NormalizedName]) -> None:
        """An upstream says these projects changed (a hosted feed took an upload): fetch
        their pages and the project list again when next asked, not after their ttl."""
        for project in projects:
            self.pages.expire(upstream, project)
            self.views.expire(project)
        self.listing.expire()

    def invalidate(self, project: NormalizedName) -> None:
        """Forget a project's views (its published hashes changed)."""
        self.views.invalidate(project)

    async def project_list(self) -> ListView:
        return await self.listing.view()

    def newest_builds(self) -> list[tuple[NormalizedName, str, str, datetime | None]]:
        """(project, upstream, newest version, its upload time) for every page seen so far."""
        return [
            (project, upstream, version, uploaded)
            for upstream, project, (version, uploaded) in sorted(
                self.pages.newest(), key=lambda row: row[:2]
            )
        ]

    async def close(self) -> None:
        await self.prober.close()
        await self.pages.close()
