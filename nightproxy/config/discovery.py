"""Where the configuration file is, and whether the cache directory it names can be used."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from nightproxy.config.errors import ConfigError
from nightproxy.config.records import Config

__all__ = ["find_config_path", "prepare_cache_dir"]


def find_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """``--config``, else ``$NIGHTPROXY_CONFIG``, else ``./nightproxy.yaml``; empty means unset."""
    chosen = cli_value or environ.get("NIGHTPROXY_CONFIG") or ""
    if chosen:
        return Path(chosen).expanduser()
    return Path.cwd() / "nightproxy.yaml"


def prepare_cache_dir(config: Config) -> None:
    """Create ``cache.dir`` if it is missing and make sure files can be written in it.

    ``check`` and ``serve`` call this, so that a directory the cache cannot live in is a
    config error naming the key, not a traceback once the server has started opening it.
    """
    path = config.cache.dir
    try:
        if path.exists() and not path.is_dir():
            reason = "not a directory"
        else:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
            return
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise ConfigError(config.source, "cache.dir", f"cannot use {path}: {reason}")
