"""Building a hosted feed from its configuration: its settings, tokens and storage.

The server and the ``nightproxy feed`` commands open feeds the same way, so a command run
beside a live server works on the same records and sees the same retention rules.
"""

from __future__ import annotations

import dataclasses

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import Config, HostedOptions, UpstreamConfig, effective_retention
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.bucket import BucketStorage
from nightproxy.hosted.feed import Clock, FeedSettings, HostedFeed, utc_now
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.storage import Storage
from nightproxy.objectstore import ObjectStore, StoreSettings

#: Seconds a bucket-backed feed's listing may lag behind other servers' changes.
BUCKET_RECHECK = 2.0


def hosted_options(upstream: UpstreamConfig) -> HostedOptions:
    options = upstream.options
    if not isinstance(options, HostedOptions):
        raise TypeError(f"upstream {upstream.name} is of kind {upstream.kind}, not hosted")
    return options


def hosted_upstreams(config: Config) -> list[UpstreamConfig]:
    return [u for u in config.upstreams if u.kind == "hosted"]


def find_hosted(config: Config, name: str) -> UpstreamConfig | None:
    return next((u for u in hosted_upstreams(config) if u.name == name), None)


def feed_settings(config: Config, upstream: UpstreamConfig) -> FeedSettings:
    options = hosted_options(upstream)

    def rules(project: NormalizedName) -> PruneRules:
        # Global, then the feed's, then the project's settings (the most specific wins).
        effective = effective_retention(config, upstream.name, project)
        return PruneRules(dev_max_age=effective.dev_max_age, keep_latest=effective.keep_latest)

    return FeedSettings(
        name=upstream.name,
        rules=rules,
        overwrite=options.overwrite,
        max_file_size=options.max_file_size,
        trash=options.trash,
    )


def feed_auth(upstream: UpstreamConfig) -> FeedAuth:
    options = hosted_options(upstream)
    return FeedAuth(
        {project: publisher.tokens for project, publisher in options.publishers.items()},
        options.admins,
    )


def make_storage(
    config: Config, upstream: UpstreamConfig, session: aiohttp.ClientSession | None
) -> Storage:
    """The feed's storage; one in a bucket is reached over ``session``."""
    options = hosted_options(upstream)
    if options.path is not None:
        return LocalStorage(options.path)
    if session is None:
        raise ValueError(f"hosted feed {upstream.name} is in a bucket: it needs a session")
    assert upstream.url is not None
    assert options.s3 is not None
    s3 = options.s3
    settings = StoreSettings.from_url(
        upstream.url,
        endpoint=s3.endpoint,
        region=s3.region,
        addressing=s3.addressing,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        proxy=upstream.proxy,
    )
    # Upload bodies are received here: a wheel is checked whole before it goes to the bucket.
    staging = config.cache.dir / "feeds" / upstream.name / "staging"
    return BucketStorage(ObjectStore(session, settings), staging)


def make_feed(
    config: Config,
    upstream: UpstreamConfig,
    session: aiohttp.ClientSession | None = None,
    *,
    clock: Clock = utc_now,
) -> HostedFeed:
    """The feed of a hosted upstream, not yet opened; a bucket is reached over ``session``."""
    settings = feed_settings(config, upstream)
    if hosted_options(upstream).path is None:
        # Each look at a bucket's records is a listing request: not more than every 2 s.
        settings = dataclasses.replace(settings, recheck=BUCKET_RECHECK)
    return HostedFeed(
        settings, make_storage(config, upstream, session), feed_auth(upstream), clock=clock
    )
