"""Every piece of application state, behind typed keys, in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from nightproxy.cache.fills import FillManager
from nightproxy.cache.remote_metadata import RemoteMetadata
from nightproxy.cache.service import CacheService
from nightproxy.cache.shared.tier import SharedTier
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.hosted.feed import HostedFeed
from nightproxy.index.service import IndexService
from nightproxy.index.state import IndexState
from nightproxy.server.metrics import Metrics
from nightproxy.server.tls import TlsCertificates
from nightproxy.trust.service import TrustedPublishing
from nightproxy.upstreams.base import Upstream

CONFIG = web.AppKey("config", Config)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])
STORE = web.AppKey("store", CacheStore)
FILLS = web.AppKey("fills", FillManager)
CACHE = web.AppKey("cache", CacheService)
INDEX = web.AppKey("index", IndexService)
INDEX_STATE = web.AppKey("index_state", IndexState)
METRICS = web.AppKey("metrics", Metrics)
REMOTE_METADATA = web.AppKey("remote_metadata", RemoteMetadata)
FEEDS = web.AppKey("feeds", dict[str, HostedFeed])
#: The shared tier of a fleet (``cache.shared``), or None for a replica on its own.
SHARED: web.AppKey[SharedTier | None] = web.AppKey("shared")
TLS = web.AppKey("tls", TlsCertificates)
TRUST = web.AppKey("trusted_publishing", TrustedPublishing)
