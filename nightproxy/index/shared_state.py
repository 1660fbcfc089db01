"""The index's persisted state, written through to the fleet's shared store and read back from
it when this replica's disk has none (a new replica, an empty disk).

``IndexState``'s methods do disk I/O and are called in worker threads; the store is reached
from there through the event loop (``run_coroutine_threadsafe``), each call bounded by
``STORE_WAIT``. Writes to the store happen in the background: the local copy is what the caller
waited for. Whenever the store is failing, the replica runs on its local state alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nightproxy.cache.shared.docs import SharedDocs
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.index.codec import gone_from_json, gone_to_json, page_from_json, page_to_json
from nightproxy.index.state import Gone, IndexState
from nightproxy.model import ProjectPage
from nightproxy.objectstore import StoreDownError, StoreError

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Seconds a read of the store may hold up a page; after that the local state answers alone.
STORE_WAIT = 5.0
#: A page the upstream confirmed (304) is written to the store again at most this often.
TOUCH_EVERY = 600.0


class SharedIndexState(IndexState):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tier: SharedTier | None = None
        self.docs: SharedDocs | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._touched: dict[tuple[str, str], float] = {}
        self._known: set[str] = set()

    def attach(self, tier: SharedTier) -> None:
        """Start writing to and reading from the shared store (called on the event loop, once
        the tier exists: the state is opened before it)."""
        self.tier = tier
        self.docs = SharedDocs(tier.store)
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    # -- bridging from worker threads to the loop -------------------------------------------

    def _usable(self) -> bool:
        # On the loop's own thread a blocking wait would deadlock: local state only there.
        return (
            self.tier is not None
            and threading.get_ident() != self._loop_thread
            and not self.tier.health.skip()
        )

    def _wait(self, coro: Coroutine[Any, Any, _T], default: _T) -> _T:
        if not self._usable():
            coro.close()
            return default
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(STORE_WAIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            assert self.tier is not None
            # A slow store counts as failing: the next pages do not wait for it (see health).
            self.tier.health.record(StoreDownError(f"no answer within {STORE_WAIT:.0f} s"))
            log.info("shared store too slow for index state: local state only")
            return default
        except StoreError as exc:
            log.info("shared store not consulted for index state: %s", exc)
            return default

    def _send(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a write to the store and return at once (failures are logged)."""
        tier, loop = self.tier, self.loop
        if tier is None or loop is None or tier.health.skip():
            coro.close()
            return

        async def guarded() -> None:
            try:
                await coro
            except StoreError as exc:
                log.info("index state not written to the shared store: %s", exc)

        if threading.get_ident() == self._loop_thread:
            tier.spawn(guarded(), "shared index state")
        else:
            loop.call_soon_threadsafe(tier.spawn, guarded(), "shared index state")

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
