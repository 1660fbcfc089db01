"""Upstream feeds: one module per kind behind the ``Upstream`` interface."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from nightproxy.config import UpstreamConfig
from nightproxy.upstreams.base import Upstream
from nightproxy.upstreams.simple import SimpleUpstream

Factory = Callable[[UpstreamConfig, aiohttp.ClientSession], Upstream]

KINDS: dict[str, Factory] = {
    "simple": SimpleUpstream,
}


def make_upstream(config: UpstreamConfig, session: aiohttp.ClientSession) -> Upstream:
    """Build the upstream a config entry describes."""
    factory = KINDS.get(config.kind)
    if factory is None:
        raise NotImplementedError(f"upstream kind {config.kind!r} is not available yet")
    return factory(config, session)
