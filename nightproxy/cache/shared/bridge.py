"""Reaching the shared store from the blocking state classes (index state, trust ledger).

Those classes do disk I/O and are called in worker threads (``asyncio.to_thread``). From there
the store is reached through the event loop: reads wait for their answer, bounded by
``STORE_WAIT``; writes are started in the background and not waited for. On the loop's own
thread a blocking wait would deadlock, so there only local state answers. A store that is too
slow is recorded as failing, so that the next calls do not wait for it either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from nightproxy.objectstore import StoreDownError, StoreError

if TYPE_CHECKING:
    from nightproxy.cache.shared.tier import SharedTier

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Seconds a read of the store may hold up its caller; after that local state answers alone.
STORE_WAIT = 5.0


class StoreBridge:
    def __init__(self, tier: SharedTier, what: str) -> None:
        self.tier = tier
        self.what = what
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def wait(self, coro: Coroutine[Any, Any, _T], default: _T) -> _T:
        """The coroutine's result, or ``default`` when the store fails, is slow, or is being
        skipped (and always on the loop's own thread)."""
        if threading.get_ident() == self._loop_thread or self.tier.health.skip():
            coro.close()
            return default
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(STORE_WAIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self.tier.health.record(StoreDownError(f"no answer within {STORE_WAIT:.0f} s"))
            log.info("shared store too slow for %s: local state only", self.what)
            return default
        except StoreError as exc:
            log.info("shared store not consulted for %s: %s", self.what, exc)
            return default

    def send(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a write to the store and return at once (a failure is logged)."""
        tier = self.tier
        if tier.health.skip():
            coro.close()
            return

        async def guarded() -> None:
            try:
                await coro
            except StoreError as exc:
                log.info("%s not written to the shared store: %s", self.what, exc)

        if threading.get_ident() == self._loop_thread:
            tier.spawn(guarded(), self.what)
        else:
            self.loop.call_soon_threadsafe(tier.spawn, guarded(), self.what)
