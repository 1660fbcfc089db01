"""Per-upstream health: what readiness and the status page report, and the circuit breaker.

The breaker counts failures of the upstream, not of a page: a connection refused or reset, a
timeout, an answer that the upstream (or whatever stands in front of it) is unavailable, a
server error on its root. A single project's page failing (malformed, missing, a server error
of its own) does not count: any client can ask for such a page, and every healthy project of
the upstream would be refused with it. Pages of ``PAGE_FAILURE_PROJECTS`` different projects
failing without a success in between do count: then it is the upstream that is broken.

After ``BREAKER_THRESHOLD`` counted failures in a row an upstream is skipped for a while
(doubling up to ``BREAKER_MAX_DELAY``), so that a feed that is down costs clients no timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nightproxy.upstreams.http import SHORTAGE, UpstreamError, is_shortage

log = logging.getLogger(__name__)

#: Circuit breaker: after this many consecutive failures an upstream is skipped for a while.
BREAKER_THRESHOLD = 3
BREAKER_BASE_DELAY = 5.0
BREAKER_MAX_DELAY = 300.0
#: Different projects whose pages failed since the upstream's last success, from which on a
#: page's failure counts against the upstream.
PAGE_FAILURE_PROJECTS = 3
#: Statuses that say the upstream (or the proxy or balancer in front of it) is unavailable,
#: whichever page was asked for; and those that concern the client's standing with it.
UNAVAILABLE = frozenset({502, 503, 504})
REFUSED = frozenset({401, 403, 407, 429})
#: Different projects answered "not found", with none found, after which the upstream's URL
#: is suspected of not being an index's root.
NOT_FOUND_WARNING = 5
#: Projects remembered per upstream for the two counts above (client-chosen names).
_MEMORY = 64


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
    #: Something a person should look at although requests succeed.
    warning: str | None = None

    @property
    def state(self) -> str:
        if self.failures == 0:
            return "ok"
        return "stale" if self.served_stale else "down"

    @property
    def unavailable(self) -> bool:
        """Failed often enough to be skipped, and not answered since (a request or the
        readiness probe): not counted on for readiness. A single blip does not make it so."""
        return self.failures >= BREAKER_THRESHOLD


def counts_against_upstream(failure: UpstreamError, project: str | None) -> bool:
    """Whether a failure is the upstream's rather than one page's (``project`` None: the
    upstream's root, its project list)."""
    if failure.page or failure.local:
        return False
    if failure.status is None or failure.status in UNAVAILABLE | REFUSED:
        return True  # transport: refused, reset, timed out, cut short
    return project is None and failure.status >= 500


class Breakers:
    """The health of every upstream, and the breaker that skips the failing ones."""

    def __init__(self, names: Iterable[str], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.health: dict[str, UpstreamHealth] = {name: UpstreamHealth() for name in names}
        #: Per upstream: projects whose pages failed since its last success.
        self._failing_pages: dict[str, set[str]] = {name: set() for name in self.health}
        #: Per upstream that has never had a project: projects it said it does not have.
        self._not_found: dict[str, set[str]] = {name: set() for name in self.health}
        self._found: set[str] = set()

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
        self._failing_pages[upstream].clear()
        health.last_success = self.clock()

    def record_failure(
        self, upstream: str, failure: UpstreamError, project: str | None = None
    ) -> None:
        """A request of ``project``'s page (None: of the project list) failed."""
        health = self.health[upstream]
        health.last_error = failure.reason
        health.last_error_at = self.clock()
        if not counts_against_upstream(failure, project):
            failing = self._failing_pages[upstream]
            if project is not None and len(failing) < _MEMORY:
                failing.add(project)
            if len(failing) < PAGE_FAILURE_PROJECTS:
                return
        health.failures += 1
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

    def record_found(self, upstream: str, *, found: bool, project: str) -> None:
        """The upstream answered for ``project``'s page: with a page, or "no such project".

        An upstream that has answered "not found" for every one of several projects, and
        never had one, is most likely configured with a URL that is not an index's root (a
        missing ``/simple/``): that is logged once and shown on the status page.
        """
        health = self.health[upstream]
        not_found = self._not_found[upstream]
        if found:
            self._found.add(upstream)
            not_found.clear()
            health.warning = None
            return
        if upstream in self._found or len(not_found) >= _MEMORY:
            return
        not_found.add(project)
        if len(not_found) == NOT_FOUND_WARNING:
            health.warning = (
                f"answered 404 for all {NOT_FOUND_WARNING} projects asked so far: is its url "
                "the index root (for a simple index, ending in /simple/)?"
            )
            log.warning("upstream %r %s", upstream, health.warning)


def as_upstream_error(upstream: str, exc: Exception) -> UpstreamError:
    """Any failure of one upstream's fetch as that upstream's failure, never the page's.

    Upstream kinds raise UpstreamError for what they expect; anything else (a parser bug, a
    malformed body no one foresaw) must still leave only that upstream out, and is taken for
    a failure of the page it was reading. Its text may carry a URL with a token in it, so
    only its type and where it was raised are kept.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamError(upstream, "timed out")
    if is_shortage(exc):
        return UpstreamError(upstream, SHORTAGE, local=True)
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
    log.warning("upstream %r: unexpected %s%s", upstream, type(exc).__name__, where)
    return UpstreamError(upstream, f"unexpected {type(exc).__name__}", page=True)
