"""What the index keeps across restarts: last good pages, retained files, first-seen times.

Every method does disk I/O: callers on the event loop run them in a thread.
"""

from __future__ import annotations

from nightproxy.cache.store import CacheStore
from nightproxy.index.codec import gone_from_json, gone_to_json, page_from_json, page_to_json
from nightproxy.model import DistFile, ProjectPage

#: Files an upstream stopped listing, by filename, with the time it stopped.
Gone = dict[str, tuple[DistFile, float]]


class IndexState:
    def __init__(self, store: CacheStore) -> None:
        self.store = store

    def save_page(self, upstream: str, fetched_at: float, page: ProjectPage) -> None:
        """Keep an upstream's last good page for stale-if-error across restarts."""
        self.store.save_page(upstream, page.name, fetched_at, page_to_json(page))

    def touch_page(self, upstream: str, project: str, fetched_at: float) -> None:
        """The upstream confirmed its page (304): it is good as of ``fetched_at``."""
        self.store.touch_page(upstream, project, fetched_at)

    def load_page(self, upstream: str, project: str) -> tuple[float, ProjectPage] | None:
        """A persisted page and when it was last known good; None if absent or unreadable."""
        saved = self.store.load_page(upstream, project)
        if saved is None:
            return None
        try:
            return saved[0], page_from_json(saved[1])
        except (ValueError, KeyError, TypeError):
            return None

    def save_gone(self, upstream: str, project: str, gone: Gone) -> None:
        """The keep_missing state of one upstream's project."""
        self.store.save_retained(upstream, project, gone_to_json(gone))

    def load_gone(self, upstream: str, project: str) -> Gone:
        text = self.store.load_retained(upstream, project)
        if text is None:
            return {}
        try:
            return gone_from_json(text)
        except (ValueError, KeyError, TypeError):
            return {}

    def first_seen(self, keys: list[str], now: float) -> dict[str, float]:
        """When each key was first seen, recording ``now`` for new ones."""
        return self.store.first_seen(keys, now)
