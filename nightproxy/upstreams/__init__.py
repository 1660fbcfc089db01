"""Upstream feeds: one module per kind behind the ``Upstream`` interface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp

from nightproxy.config import ConfigError, UpstreamConfig
from nightproxy.upstreams.anaconda import AnacondaUpstream
from nightproxy.upstreams.azure import AzureUpstream
from nightproxy.upstreams.base import Upstream
from nightproxy.upstreams.directory import DirectoryUpstream
from nightproxy.upstreams.s3 import S3Upstream
from nightproxy.upstreams.simple import SimpleUpstream

Factory = Callable[[UpstreamConfig, aiohttp.ClientSession], Upstream]

KINDS: dict[str, Factory] = {
    "simple": SimpleUpstream,
    "anaconda": AnacondaUpstream,
    "azure": AzureUpstream,
    "s3": S3Upstream,
    "directory": DirectoryUpstream,
}


def make_upstream(config: UpstreamConfig, session: aiohttp.ClientSession) -> Upstream:
    """Build the upstream a config entry describes."""
    factory = KINDS.get(config.kind)
    if factory is None:
        # The configuration accepts the hosted kind before its upstream is wired in here:
        # one line and exit 2 rather than a KeyError traceback at start-up.
        raise ConfigError(
            Path("(config)"),
            f"upstreams: {config.name}",
            f"kind {config.kind!r} is not served by this build yet",
        )
    return factory(config, session)
