"""From parsed YAML to a :class:`Config`: the whole document, section by section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nightproxy.config.env import expand
from nightproxy.config.errors import FILE_KEY, ConfigError, describe
from nightproxy.config.reader import Node, Section
from nightproxy.config.records import Config
from nightproxy.config.sections import (
    read_cache,
    read_index,
    read_logging,
    read_projects,
    read_publishing,
    read_retention,
    read_server,
)
from nightproxy.config.upstream_reader import read_upstreams

__all__ = ["config_from_mapping"]

_TOP_KEYS: Final = (
    "server",
    "cache",
    "index",
    "retention",
    "logging",
    "upstreams",
    "projects",
    "publishing",
)


def config_from_mapping(
    data: object, source: Path, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate already-parsed YAML ``data`` as if it had been read from ``source``."""
    file = source.expanduser().absolute()
    env = os.environ if environ is None else environ
    if data is None:
        raise ConfigError(file, FILE_KEY, "the file is empty; at least one upstream is required")
    if not isinstance(data, Mapping):
        raise ConfigError(
            file, FILE_KEY, f"expected a mapping at the top level, got {describe(data)}"
        )
    # Expanding everything up front means every reader below sees final values, and a missing
    # variable is reported even under a key that would be rejected for other reasons later.
    root = Section(Node(expand(data, "", file, env), "", file))
    root.only(_TOP_KEYS)
    base = file.parent
    upstreams = read_upstreams(root.require("upstreams", "at least one upstream is required"), base)
    return Config(
        source=file,
        server=read_server(root.section("server"), base),
        cache=read_cache(root.section("cache"), base),
        index=read_index(root.section("index")),
        retention=read_retention(root.section("retention")),
        logging=read_logging(root.section("logging")),
        upstreams=upstreams,
        projects=read_projects(root.section("projects"), [u.name for u in upstreams]),
        publishing=read_publishing(root.section("publishing"), base),
    )
