"""Per-upstream health: what readiness and the status page report, and the circuit breaker.

After ``BREAKER_THRESHOLD`` consecutive failures an upstream is skipped for a while (doubling
up to ``BREAKER_MAX_DELAY``), so that a feed that is down costs clients no timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nightproxy.upstreams.http import UpstreamError

log = logging.getLogger(__name__)

#: Circuit breaker: after this many consecutive failures an upstream is skipped for a while.
BREAKER_THRESHOLD = 3
BREAKER_BASE_DELAY = 5.0
BREAKER_MAX_DELAY = 300.0


class CircuitOpenError(UpstreamError):
    """The upstream was not asked: its breaker is open."""


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


class Breakers:
    """The health of every upstream, and the breaker that skips the failing ones."""

    def __init__(self, names: Iterable[str], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.health: dict[str, UpstreamHealth] = {name: UpstreamHealth() for name in names}

    def is_open(self, upstream: str) -> bool:
        return self.health[upstream].open_until > self.clock()

    def check(self, upstream: str, what: str = "skipped: failing repeatedly") -> None:
        """Raise CircuitOpenError while the upstream's breaker is open."""
        if self.is_open(upstream):
            raise CircuitOpenError(upstream, f"{what} (circuit open)")

    def failing(self, upstream: str) -> bool:
        return self.health[upstream].failures > 0

    def served_stale(self, upstream: str) -> None:
        self.health[upstream].served_stale = True

    def record_success(self, upstream: str) -> None:
        health = self.health[upstream]
        health.failures = 0
        health.open_until = 0.0
        health.served_stale = False
        health.last_success = self.clock()

    def record_failure(self, upstream: str, reason: str) -> None:
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


def as_upstream_error(upstream: str, exc: Exception) -> UpstreamError:
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
