"""Where everything lives under ``cache.dir``, and how one process names itself to the others.

::

    blobs/<aa>/<sha256>   verified bytes, named by their own digest
    tmp/<key>.fill        a download in progress: owned by whoever holds locks/<key>.lock
    tmp/<name>.<owner>.part  a file one process is staging (extracted metadata, an import)
    locks/<key>.lock      one lock file per download (``locks.py``); locks/state.lock
    state.sqlite          the authority on what the cache holds (``db.py``)

Several server processes share one directory. What a process holds (a download, a
reservation of budget, a staged file) is tagged with its *owner token*: its pid and the
kernel's start time of that pid, so that a pid reused after a crash is not taken for the
process that died.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_HEX = frozenset("0123456789abcdef")


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in _HEX for c in value)


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def lock_dir(self) -> Path:
        return self.root / "locks"

    @property
    def db_path(self) -> Path:
        return self.root / "state.sqlite"

    def make_dirs(self) -> None:
        for path in (self.blob_dir, self.tmp_dir, self.lock_dir):
            path.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def fill_path(self, key: str) -> Path:
        """The one temporary file of a key's download, shared by every process."""
        return self.tmp_dir / f"{_file_safe(key)}.fill"

    def lock_path(self, key: str) -> Path:
        return self.lock_dir / f"{_file_safe(key)}.lock"

    def staged_path(self, name: str, unique: int) -> Path:
        """A private temporary file of this process (``unique`` tells its own files apart)."""
        return self.tmp_dir / f"{_file_safe(name)}-{unique}.{owner_token()}.part"


def _file_safe(key: str) -> str:
    # Keys are hex digests, optionally prefixed ("u", "m:"): only ":" needs replacing.
    return key.replace(":", "_").replace("/", "_")


@cache
def _start_time(pid: int) -> str | None:
    return _read_start_time(pid)


def _read_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_token() -> str:
    """This process's name in shared state: ``<pid>-<start time>``."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def owner_alive(token: str) -> bool:
    """Whether the process a token names still runs (a malformed token names nobody)."""
    pid_text, _, start = token.partition("-")
    if not pid_text.isdigit() or not start:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return token == owner_token()
    current = _read_start_time(pid)
    if current is not None:
        return current == start
    if start != "0":
        return False  # /proc answers for this system, and the pid is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staged_owner(name: str) -> str | None:
    """The owner token of a ``.part`` file's name, None when it carries none."""
    if not name.endswith(".part"):
        return None
    parts = name[: -len(".part")].rsplit(".", 1)
    return parts[1] if len(parts) == 2 and "-" in parts[1] else None
