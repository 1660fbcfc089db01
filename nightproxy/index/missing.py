"""``keep_missing``: files an upstream stopped listing, still published while the cache holds
their bytes, for a configured time after they disappeared."""

from __future__ import annotations

from collections.abc import Callable

from packaging.utils import NormalizedName

from nightproxy.cache.keys import file_key
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config, effective_retention
from nightproxy.index.state import Gone
from nightproxy.model import DistFile, ProjectPage


class MissingFiles:
    """Per upstream and project: which files went missing, and since when."""

    def __init__(self, config: Config, store: CacheStore, clock: Callable[[], float]) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._gone: dict[tuple[str, NormalizedName], Gone] = {}

    def knows(self, upstream: str, project: NormalizedName) -> bool:
        return (upstream, project) in self._gone

    def restore(self, upstream: str, project: NormalizedName, gone: Gone) -> None:
        """Take up the state persisted before a restart, unless there is newer in memory."""
        if gone and (upstream, project) not in self._gone:
            self._gone[(upstream, project)] = gone

    def state(self, upstream: str, project: NormalizedName) -> Gone:
        return self._gone.get((upstream, project), {})

    def note_removed(
        self,
        upstream: str,
        project: NormalizedName,
        old: ProjectPage | None,
        new: ProjectPage | None,
    ) -> bool:
        """Remember files an upstream stopped listing; True if anything changed."""
        gone = self._gone.setdefault((upstream, project), {})
        listed = {f.filename for f in new.files} if new is not None else set()
        back = [name for name in gone if name in listed]
        for filename in back:
            del gone[filename]  # back again, or re-uploaded under the same name
        added = 0
        if old is not None:
            now = self.clock()
            for file in old.files:
                if file.filename not in listed and file.filename not in gone:
                    gone[file.filename] = (file, now)
                    added += 1
        return bool(back or added)

    def retained(self, upstream: str, project: NormalizedName) -> list[DistFile]:
        """Files the upstream deleted that we still hold, within ``keep_missing``."""
        gone = self._gone.get((upstream, project))
        if not gone:
            return []
        keep = effective_retention(self.config, upstream, project).keep_missing
        now = self.clock()
        kept = []
        for filename, (file, since) in list(gone.items()):
            if now - since > keep:
                del gone[filename]
            elif self.store.resolve(file_key(file)) is not None:
                kept.append(file.replace(retained=True))
        return kept
