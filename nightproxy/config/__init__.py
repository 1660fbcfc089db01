"""Loading and validating ``nightproxy.yaml``.

Every user-supplied setting passes through here once, at start-up. Afterwards the rest of the
proxy works with frozen, fully typed records and never re-checks a value. Errors name the file
and the key path (``upstreams[1].url``) so a user can find the offending line without reading a
traceback, and no error message, ``repr`` or :func:`masked` output ever echoes a credential.

Where things are:

- ``records``, ``kinds``, ``retention``: the typed records (one options record per upstream kind);
- ``units``: durations and sizes; ``env``: ``${VAR}`` expansion; ``masking``: credentials kept
  out of what people read; ``effective``: the masked configuration ``check`` prints;
- ``reader``: the small validation toolkit; ``sections``, ``upstream_reader``,
  ``hosted_reader`` (a hosted feed's keys and tokens), ``storage_reader`` (a bucket's keys),
  ``validate``: the validation of each part of the file;
- ``yaml_loader``: reading the file; ``discovery``: finding it, and preparing ``cache.dir``.
"""

from __future__ import annotations

from nightproxy.config.discovery import find_config_path, prepare_cache_dir
from nightproxy.config.effective import masked
from nightproxy.config.errors import FILE_KEY, ConfigError
from nightproxy.config.hosted_reader import token_digest
from nightproxy.config.kinds import (
    Addressing,
    AnacondaOptions,
    AzureOptions,
    DirectoryOptions,
    GithubPublisher,
    HostedOptions,
    Publisher,
    S3Options,
    SimpleOptions,
    UpstreamConfig,
    UpstreamKind,
    UpstreamOptions,
)
from nightproxy.config.masking import mask_path, mask_url
from nightproxy.config.records import (
    CacheConfig,
    Config,
    IndexConfig,
    LogFormat,
    LoggingConfig,
    OidcConfig,
    ProjectConfig,
    PublishingConfig,
    ServerConfig,
    SharedCacheConfig,
    TlsConfig,
    effective_retention,
)
from nightproxy.config.retention import INHERIT, RetentionConfig, RetentionOverride
from nightproxy.config.units import parse_duration, parse_size
from nightproxy.config.validate import config_from_mapping
from nightproxy.config.yaml_loader import load_config

__all__ = [
    "FILE_KEY",
    "INHERIT",
    "Addressing",
    "AnacondaOptions",
    "AzureOptions",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DirectoryOptions",
    "GithubPublisher",
    "HostedOptions",
    "IndexConfig",
    "LogFormat",
    "LoggingConfig",
    "OidcConfig",
    "ProjectConfig",
    "Publisher",
    "PublishingConfig",
    "RetentionConfig",
    "RetentionOverride",
    "S3Options",
    "ServerConfig",
    "SharedCacheConfig",
    "SimpleOptions",
    "TlsConfig",
    "UpstreamConfig",
    "UpstreamKind",
    "UpstreamOptions",
    "config_from_mapping",
    "effective_retention",
    "find_config_path",
    "load_config",
    "mask_path",
    "mask_url",
    "masked",
    "parse_duration",
    "parse_size",
    "prepare_cache_dir",
    "token_digest",
]
