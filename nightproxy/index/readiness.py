"""Readiness from an active probe of the upstreams that are down.

A down upstream gets no page requests while its breaker is open, and a server that says it is
not ready gets no clients: readiness would never see it come back, or would have to guess from
the breaker. So while an upstream is down it is probed in the background (cheaply: see
``Upstream.probe``) every ``PROBE_INTERVAL``, and its first answer marks it up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from nightproxy.index.health import Breakers, as_upstream_error
from nightproxy.upstreams.base import Upstream

log = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 10.0


class Prober:
    def __init__(self, upstreams: Mapping[str, Upstream], breakers: Breakers) -> None:
        self.upstreams = upstreams
        self.breakers = breakers
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="upstream readiness probe")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            down = [name for name, health in self.breakers.health.items() if health.failures]
            await asyncio.gather(*(self.probe(name) for name in down))

    async def probe(self, name: str) -> bool:
        """Ask one upstream whether it answers; True (and its health reset) if it does."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self.upstreams[name].probe()
        except Exception as exc:  # whatever it is, the upstream stays down
            log.debug("upstream %r still down: %s", name, as_upstream_error(name, exc).reason)
            return False
        log.info("upstream %r answers again", name)
        self.breakers.record_success(name)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
