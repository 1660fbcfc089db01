"""The index's persisted state, written through to the fleet's shared store and read back from
it when this replica's disk has none (a new replica, an empty disk).

The local copy is what callers wait for; the store is reached through ``StoreBridge`` (reads
bounded in time, writes in the background). Whenever the store is failing or slow, the replica
runs on its local state alone.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nightproxy.cache.shared.bridge import StoreBridge
from nightproxy.cache.shared.docs import SharedDocs
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.index.codec import gone_from_json, gone_to_json, page_from_json, page_to_json
from nightproxy.index.state import Gone, IndexState
from nightproxy.model import ProjectPage

_T = TypeVar("_T")
#: A page the upstream confirmed (304) is written to the store again at most this often.
TOUCH_EVERY = 600.0


class SharedIndexState(IndexState):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.docs: SharedDocs | None = None
        self._bridge: StoreBridge | None = None
        self._touched: dict[tuple[str, str], float] = {}
        self._known: set[str] = set()

    def attach(self, tier: SharedTier) -> None:
        """Start writing to and reading from the shared store (called on the event loop, once
        the tier exists: the state is opened before it)."""
        self.docs = SharedDocs(tier.store)
        self._bridge = StoreBridge(tier, "index state")

    def _wait(self, coro: Coroutine[Any, Any, _T], default: _T) -> _T:
        assert self._bridge is not None
        return self._bridge.wait(coro, default)

    def _send(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._bridge is not None
        self._bridge.send(coro)

    # -- IndexState ---------------------------------------------------------------------------

    def save_page(self, upstream: str, fetched_at: float, page: ProjectPage) -> None:
        super().save_page(upstream, fetched_at, page)
        if self.docs is not None:
            self._touched[(upstream, page.name)] = time.monotonic()
            self._send(self.docs.put_page(upstream, page.name, fetched_at, page_to_json(page)))

    def touch_page(self, upstream: str, project: str, fetched_at: float) -> None:
        super().touch_page(upstream, project, fetched_at)
        last = self._touched.get((upstream, project))
        if self.docs is None or (last is not None and time.monotonic() - last < TOUCH_EVERY):
            return
        saved = super().load_page(upstream, project)
        if saved is not None:
            self.save_page(upstream, fetched_at, saved[1])

    def load_page(self, upstream: str, project: str) -> tuple[float, ProjectPage] | None:
        local = super().load_page(upstream, project)
        if local is not None or self.docs is None:
            return local
        shared = self._wait(self.docs.get_page(upstream, project), None)
        if shared is None:
            return None
        fetched_at, body = shared
        try:
            page = page_from_json(body)
        except (ValueError, KeyError, TypeError):
            return None
        super().save_page(upstream, fetched_at, page)
        return fetched_at, page

    def save_gone(self, upstream: str, project: str, gone: Gone) -> None:
        super().save_gone(upstream, project, gone)
        if self.docs is not None:
            self._send(self.docs.put_retained(upstream, project, gone_to_json(gone)))

    def load_gone(self, upstream: str, project: str) -> Gone:
        local = super().load_gone(upstream, project)
        if local or self.docs is None:
            return local
        body = self._wait(self.docs.get_retained(upstream, project), None)
        if body is None:
            return {}
        try:
            gone = gone_from_json(body)
        except (ValueError, KeyError, TypeError):
            return {}
        super().save_gone(upstream, project, gone)
        return gone

    def first_seen(self, keys: list[str], now: float) -> dict[str, float]:
        """The fleet's first sighting for keys new to this process, else the local one."""
        new = [k for k in keys if k not in self._known]
        if new and self.docs is not None:
            fleet = self._wait(self.docs.first_seen(new, now), {})
            # Recorded locally first (a key this replica knew before keeps its own time).
            for when in sorted(set(fleet.values())):
                super().first_seen([k for k, t in fleet.items() if t == when], when)
            self._known.update(fleet)
        return super().first_seen(keys, now)
