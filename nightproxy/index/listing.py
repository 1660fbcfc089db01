"""The project list (``/simple/``): every upstream's list of projects, merged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from packaging.utils import NormalizedName

from nightproxy.config import Config
from nightproxy.index.health import Breakers, CircuitOpenError, as_upstream_error
from nightproxy.index.prepared import Representations
from nightproxy.simple_api.names import ProjectNames
from nightproxy.simple_api.negotiate import Format
from nightproxy.simple_api.render import iter_index_html, iter_index_json
from nightproxy.upstreams.base import Upstream

log = logging.getLogger(__name__)

#: How soon a list missing an upstream, or holding a stale one, is built again.
DEGRADED_TTL = 5.0


@dataclass(slots=True)
class ListView:
    names: ProjectNames
    built_at: float
    fresh_until: float
    missing: tuple[str, ...]
    stale: tuple[str, ...] = ()
    prepared: Representations = field(init=False)

    def __post_init__(self) -> None:
        self.prepared = Representations(self._render)

    def _render(self, fmt: Format) -> Iterator[bytes]:
        return iter_index_json(self.names) if fmt == "json" else iter_index_html(self.names)


class ProjectListing:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        breakers: Breakers,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.breakers = breakers
        self.clock = clock
        self._view: ListView | None = None
        #: Each upstream's last list, with when it was fetched: the stand-in when it fails.
        self._lists: dict[str, tuple[ProjectNames, float]] = {}

    def expire(self) -> None:
        """Build the list again when next asked."""
        if self._view is not None:
            self._view.fresh_until = 0.0

    async def view(self) -> ListView:
        current = self._view
        now = self.clock()
        if current is not None and now < current.fresh_until:
            return current
        results = await asyncio.gather(*(self._list_one(name) for name in self.upstreams))
        lists = [ProjectNames.build(self.config.projects)]
        missing = []
        stale = []
        for name, (listed, failed, was_stale) in zip(self.upstreams, results, strict=True):
            if failed:
                missing.append(name)
            if was_stale:
                stale.append(name)
            if listed is not None:
                lists.append(listed)
        # A million names are merged in a thread: the loop answers meanwhile.
        names = await asyncio.to_thread(ProjectNames.union, lists)
        fresh_for = DEGRADED_TTL if missing or stale else self.config.index.ttl
        current = ListView(names, now, now + fresh_for, tuple(missing), tuple(stale))
        self._view = current
        return current

    async def _list_one(self, name: str) -> tuple[ProjectNames | None, bool, bool]:
        """(names, failed without a stand-in, served from the last good list)."""
        try:
            self.breakers.check(name, "skipped")
            result = await self.upstreams[name].fetch_project_list()
        except Exception as exc:
            exc = as_upstream_error(name, exc)
            if not isinstance(exc, CircuitOpenError):
                self.breakers.record_failure(name, exc)
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
        self.breakers.record_success(name)
        if result is None:
            return None, False, False
        listed = await asyncio.to_thread(self._own, name, result)
        self._lists[name] = (listed, self.clock())
        return listed, False, False

    def _own(self, name: str, result: Collection[NormalizedName]) -> ProjectNames:
        """Blocking: an upstream's list, packed, without the projects pinned elsewhere (pinned
        projects are listed only from their own upstreams)."""
        listed = result if isinstance(result, ProjectNames) else ProjectNames.build(result)
        return listed.without(
            p for p in self.config.projects if name not in self.config.upstream_names_for(p)
        )
