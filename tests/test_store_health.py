"""How a replica judges the shared store: the rules behind /readyz's ``shared`` section."""

from __future__ import annotations

import time

from nightproxy.objectstore.errors import StoreDownError, StoreError
from nightproxy.objectstore.health import StoreHealth


def down() -> StoreError:
    return StoreDownError("HEAD health/probe: connection refused")


def test_a_healthy_store_that_nobody_asked_for_a_while_is_probed() -> None:
    """Served from local disk only, a replica still checks the store now and then, so that
    an outage shows on /readyz without client traffic reaching the store."""
    health = StoreHealth()
    assert not health.due_probe(idle=5.0)
    health.last_request = time.monotonic() - 6.0
    assert health.due_probe(idle=5.0)


def test_a_request_counts_as_a_look_at_the_store() -> None:
    """Any request, answered or not, restarts the idle time of a healthy store."""
    health = StoreHealth()
    health.last_request = time.monotonic() - 60.0
    health.record(None)
    assert not health.due_probe(idle=5.0)


def test_a_failed_store_is_skipped_then_probed_until_it_answers() -> None:
    """Right after a failure the store is left alone; after the back-off a probe is due, and
    one success makes it ok again."""
    health = StoreHealth()
    health.record(down())
    assert health.state == "degraded"
    assert health.skip()
    assert not health.due_probe(idle=5.0)
    assert health.last_failure is not None
    health.last_failure -= 60.0
    assert health.due_probe(idle=5.0)
    health.record(None)
    assert health.ok
