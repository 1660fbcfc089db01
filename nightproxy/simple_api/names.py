"""A sorted list of project names, packed: the project list of an index of a million projects
in about 20 MB instead of 100, built without holding the GIL for long.

Sorting a million strings at once holds the GIL for most of a second, during which the event
loop answers nobody; so names are sorted in runs, and the runs merged in Python.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Iterator

from packaging.utils import NormalizedName

#: Names per sorted run while building (each run is one short sort).
RUN = 32_768
#: Names per packed segment.
SEGMENT = 4096


class ProjectNames:
    """Canonical project names, sorted, each once."""

    __slots__ = ("_count", "_firsts", "_segments")

    def __init__(self, segments: tuple[str, ...], count: int) -> None:
        self._segments = segments
        self._count = count
        self._firsts = [s[: s.find("\n")] if "\n" in s else s for s in segments]

    @classmethod
    def build(cls, names: Iterable[str]) -> ProjectNames:
        """From names in any order, with repeats; they must be canonical already."""
        runs: list[list[str]] = []
        run: list[str] = []
        for name in names:
            run.append(name)
            if len(run) == RUN:
                run.sort()
                runs.append(run)
                run = []
        run.sort()
        runs.append(run)
        return cls.from_sorted(heapq.merge(*runs) if len(runs) > 1 else run)

    @classmethod
    def from_sorted(cls, names: Iterable[str]) -> ProjectNames:
        """From names already in order (repeats are dropped)."""
        segments: list[str] = []
        pending: list[str] = []
        previous = None
        count = 0
        for name in names:
            if name == previous or not name:
                continue
            previous = name
            pending.append(name)
            count += 1
            if len(pending) == SEGMENT:
                segments.append("\n".join(pending))
                pending = []
        if pending:
            segments.append("\n".join(pending))
        return cls(tuple(segments), count)

    @classmethod
    def union(cls, lists: Iterable[ProjectNames]) -> ProjectNames:
        some = [names for names in lists if len(names)]
        if len(some) == 1:
            return some[0]  # nothing to merge: the one list as it is
        return cls.from_sorted(heapq.merge(*some))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[NormalizedName]:
        for segment in self._segments:
            for name in segment.split("\n"):
                yield NormalizedName(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not self._segments:
            return False
        at = bisect_right(self._firsts, name) - 1
        if at < 0:
            return False
        segment = self._segments[at]
        start = 0
        while start <= len(segment):
            end = segment.find("\n", start)
            end = len(segment) if end < 0 else end
            if segment[start:end] == name:
                return True
            start = end + 1
        return False

    def without(self, names: Iterable[str]) -> ProjectNames:
        """These names but ``names``."""
        gone = set(names)
        if not any(n in self for n in gone):
            return self
        return ProjectNames.from_sorted(n for n in self if n not in gone)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ProjectNames):
            return self._segments == other._segments
        if isinstance(other, frozenset | set):
            return len(other) == self._count and all(n in other for n in self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._segments)

    def __repr__(self) -> str:
        return f"<ProjectNames of {self._count}>"
