"""``keep_missing``: files an upstream stopped listing, still published while the cache holds
their bytes, for a configured time after they disappeared."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from packaging.utils import NormalizedName

from nightproxy.cache.keys import file_key
from nightproxy.cache.store import CacheStore
from nightproxy.config import Config, effective_retention
from nightproxy.index.state import Gone
from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.packed import PackedFiles


class MissingFiles:
    """Per upstream and project: which files went missing, and since when."""

    def __init__(self, config: Config, store: CacheStore, clock: Callable[[], float]) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._gone: dict[tuple[str, NormalizedName], Gone] = {}
        #: Changed by fetches in worker threads, read by page builds on the event loop.
        self._lock = threading.Lock()

    def knows(self, upstream: str, project: NormalizedName) -> bool:
        return (upstream, project) in self._gone

    def restore(self, upstream: str, project: NormalizedName, gone: Gone) -> None:
        """Take up the state persisted before a restart, unless there is newer in memory."""
        with self._lock:
            if gone and (upstream, project) not in self._gone:
                self._gone[(upstream, project)] = gone

    def note_removed(
        self,
        upstream: str,
        project: NormalizedName,
        old: ProjectPage | None,
        new: ProjectPage | None,
    ) -> Gone | None:
        """Blocking: remember files an upstream stopped listing; the new state if it changed
        (to be saved), else None."""
        listed = set(_filenames(new.files)) if new is not None else set()
        with self._lock:
            gone = self._gone.setdefault((upstream, project), {})
            back = [name for name in gone if name in listed]
            for filename in back:
                del gone[filename]  # back again, or re-uploaded under the same name
            added = 0
            if old is not None:
                now = self.clock()
                for index, filename in enumerate(_filenames(old.files)):
                    if filename not in listed and filename not in gone:
                        gone[filename] = (old.files[index], now)
                        added += 1
            return dict(gone) if back or added else None

    def retained(self, upstream: str, project: NormalizedName) -> list[DistFile]:
        """Files the upstream deleted that we still hold, within ``keep_missing``."""
        keep = effective_retention(self.config, upstream, project).keep_missing
        now = self.clock()
        kept = []
        with self._lock:
            gone = self._gone.get((upstream, project))
            if not gone:
                return []
            for filename, (file, since) in list(gone.items()):
                if now - since > keep:
                    del gone[filename]
                elif self.store.resolve(file_key(file)) is not None:
                    kept.append(file.replace(retained=True))
        return kept


def _filenames(files: Sequence[DistFile]) -> Iterable[str]:
    if isinstance(files, PackedFiles):
        return files.filenames()
    return (f.filename for f in files)
