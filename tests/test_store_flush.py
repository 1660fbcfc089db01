"""Recency flushed in a thread while the event loop keeps touching blobs."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from tests.test_store import blob, open_store, put


def test_flush_in_a_thread_while_blobs_are_touched_loses_no_touch(tmp_path: Path) -> None:
    """The maintenance task flushes recency in a thread while requests touch blobs on the
    loop: the flush never fails on the changing set, and every touch reaches the database
    (by this flush or the next)."""
    store = open_store(tmp_path, max_size=10**9)
    shas = [put(store, blob(f"b{i}", 10), name=f"b{i}.whl") for i in range(3000)]
    store.flush()
    errors: list[BaseException] = []
    stop = threading.Event()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as the interpreter allows

    def flusher() -> None:
        while not stop.is_set():
            try:
                store.flush()
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for rnd in range(20):
            for sha in shas:
                store.touch(sha, now=1_000_000.0 + rnd)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert errors == []
    store.flush()
    store.close()
    reopened = open_store(tmp_path, max_size=10**9)
    assert {reopened._entries[s].last_use for s in shas} == {1_000_019.0}
