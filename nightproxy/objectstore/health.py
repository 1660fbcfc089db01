"""The shared store's state as one replica sees it, for /readyz, the status page and metrics.

Every request's outcome is recorded (the client's health hook): a failure of the store itself
(down, throttled, 5xx, denied) makes it ``degraded`` until a request succeeds again. While
degraded, callers skip the store for a short back-off instead of making every client wait for
a store that is not answering, and a probe (``StoreHealth.due_probe``) finds out when it is back
without needing client traffic. While ok, the same probe runs when the store has not been asked
anything for a while, so that an outage shows on /readyz even when every request is served
from local disk.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from nightproxy.objectstore.errors import StoreError

#: While degraded, the store is skipped for this long after each failure.
SKIP_AFTER_FAILURE = 2.0


@dataclass
class StoreHealth:
    state: str = "ok"
    #: Monotonic time of the last change of state.
    since: float = field(default_factory=time.monotonic)
    #: ``kind: reason`` of the last failure (never credentials: the client's messages carry
    #: the operation and key only).
    last_error: str | None = None
    last_failure: float | None = None
    #: Monotonic time of the last request, whatever its outcome.
    last_request: float = field(default_factory=time.monotonic)
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def record(self, error: StoreError | None) -> None:
        self.requests += 1
        now = time.monotonic()
        self.last_request = now
        if error is None:
            if self.state != "ok":
                self.state = "ok"
                self.since = now
            return
        self.failures[error.kind] += 1
        self.last_error = f"{error.kind}: {error.reason}"
        self.last_failure = now
        if self.state != "degraded":
            self.state = "degraded"
            self.since = now

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def skip(self) -> bool:
        """Whether to leave the store out of a request for now (it failed just before)."""
        return (
            not self.ok
            and self.last_failure is not None
            and time.monotonic() - self.last_failure < SKIP_AFTER_FAILURE
        )

    def due_probe(self, idle: float) -> bool:
        """Whether a probe should ask the store: if it is back, or (when ok and nothing
        asked it for ``idle`` seconds) if it is still there."""
        if self.ok:
            return time.monotonic() - self.last_request >= idle
        return not self.skip()

    def describe(self) -> dict[str, object]:
        """For the status page and /readyz."""
        return {
            "state": self.state,
            "for_seconds": round(time.monotonic() - self.since, 1),
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": dict(self.failures),
        }
