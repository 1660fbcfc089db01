"""Building a hosted feed from its configuration: its settings, tokens and storage.

The server and the ``nightproxy feed`` commands open feeds the same way, so a command run
beside a live server works on the same records and sees the same retention rules.
"""

from __future__ import annotations

from packaging.utils import NormalizedName

from nightproxy.config import Config, HostedOptions, UpstreamConfig, effective_retention
from nightproxy.hosted.auth import FeedAuth
from nightproxy.hosted.feed import Clock, FeedSettings, HostedFeed, utc_now
from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.prune import PruneRules
from nightproxy.hosted.storage import Storage


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


def make_storage(upstream: UpstreamConfig) -> Storage:
    options = hosted_options(upstream)
    if options.path is None:
        raise NotImplementedError(
            f"upstream {upstream.name}: a hosted feed in a bucket is not served by this build"
        )
    return LocalStorage(options.path)


def make_feed(config: Config, upstream: UpstreamConfig, *, clock: Clock = utc_now) -> HostedFeed:
    """The feed of a hosted upstream, not yet opened."""
    return HostedFeed(
        feed_settings(config, upstream), make_storage(upstream), feed_auth(upstream), clock=clock
    )
