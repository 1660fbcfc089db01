"""Merged upstream files as the proxy publishes them: its own URLs, the hashes and sizes it
verified, build dates for retention, and the nightly view's retention rules applied."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

from packaging.utils import NormalizedName

from nightproxy.cache.keys import file_key, file_path
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config
from nightproxy.index.builddate import build_time
from nightproxy.index.merge import merge_files
from nightproxy.index.retention import Policy, apply_retention, dev_only_files
from nightproxy.index.state import IndexState
from nightproxy.model import DistFile, ProjectPage, PublishedFile
from nightproxy.upstreams.base import Upstream


class Publisher:
    def __init__(
        self,
        config: Config,
        upstreams: Mapping[str, Upstream],
        store: CacheStore,
        state: IndexState,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.store = store
        self.state = state

    async def publish(
        self,
        project: NormalizedName,
        pages: list[tuple[str, ProjectPage]],
        as_of: datetime | None,
        now: float,
    ) -> tuple[PublishedFile, ...]:
        """The files of one project's page, from its upstreams' pages in priority order."""
        # A dev_only feed's releases are dropped before merging, so that a release it also
        # carries cannot shadow the same file from a later, real release feed.
        merged = merge_files(
            dev_only_files(page.files) if self.upstreams[name].config.dev_only else page.files
            for name, page in pages
        )
        keys = [file_key(f) for f in merged]
        # PEP 700 (API 1.1) requires a size the feed may not list; the verified copy has one.
        sizes = {
            key: size
            for file, key in zip(merged, keys, strict=True)
            if file.size is None
            and (sha := self.store.resolve(key)) is not None
            and (size := self.store.size_of(sha)) is not None
        }
        first_seen = await asyncio.to_thread(self.state.first_seen, keys, now)
        policy = Policy.for_project(self.config, project)
        published = []
        for file, key in zip(merged, keys, strict=True):
            published.append(
                self.published(project, file, key, first_seen.get(key, now), sizes.get(key))
            )
        return apply_retention(
            published,
            policy,
            now=datetime.fromtimestamp(now, UTC),
            as_of=as_of,
            dev_only={n for n, up in self.upstreams.items() if up.config.dev_only},
        )

    def published(
        self,
        project: NormalizedName,
        file: DistFile,
        key: str,
        first_seen: float,
        cached_size: int | None = None,
    ) -> PublishedFile:
        hashes = file.hashes
        if "sha256" not in hashes:
            verified = self.store.alias(key)
            if verified is not None:
                # Publish only what we hashed ourselves from the bytes we hold.
                hashes = {**hashes, "sha256": verified}
        # ``.metadata`` is served for wheels only, so nothing else may advertise it: pip
        # aborts on the 404 of an advertised sdist's metadata instead of reading the sdist.
        meta: bool | Mapping[str, str] = False
        if file.filename.endswith(".whl"):
            known = self.store.alias(f"m:{key}")
            meta = {"sha256": known} if known else (file.core_metadata or True)
        when, source = build_time(file, datetime.fromtimestamp(first_seen, UTC))
        return PublishedFile(
            source=file,
            url=file_path(project, key, file.filename),
            hashes=hashes,
            core_metadata=meta,
            build_time=when,
            build_time_source=source,
            cached_size=cached_size,
        )


def key_of(pub: PublishedFile) -> str:
    """The file key in a published file's URL."""
    return pub.url.split("/")[-2]
