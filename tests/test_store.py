"""CacheStore unit tests: LRU order by use, pins, the hard budget, age sweep, restart state.

The store is driven directly on temporary directories: no server, no HTTP. The Hypothesis
state machine checks the two invariants everything else relies on: admitted bytes plus
outstanding reservations never exceed the budget, and eviction always takes the least
recently *used* unpinned blobs, in that order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from nightproxy.cache import store as store_module
from nightproxy.cache.store import CacheStore

MAX_AGE = 3600.0


def open_store(root: Path, max_size: int = 1000, max_age: float = MAX_AGE) -> CacheStore:
    store = CacheStore(root, max_size, max_age)
    store.open()
    return store


def put(store: CacheStore, data: bytes, name: str = "f.whl") -> str:
    """Admit ``data`` the way a fill does: reserve (evicting), write, account."""
    victims = store.reserve(len(data))
    assert victims is not None, "no room for the blob"
    store.delete_blobs(victims)
    sha = store.write_blob(data, key=hashlib.sha256(data).hexdigest(), filename=name, upstream="u")
    store.admitted(sha, len(data), len(data), name)
    return sha


def blob(tag: str, size: int = 100) -> bytes:
    return (tag.encode() * size)[:size]


def lru_order(store: CacheStore) -> list[str]:
    """Digests from least to most recently used, as eviction would take them."""
    return [record["sha256"] for record in store.snapshot()[0]]


def disk_blobs(store: CacheStore) -> set[str]:
    return {p.name for p in store.blob_dir.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    """A store with a budget of exactly three 100-byte blobs."""
    s = open_store(tmp_path / "cache", max_size=300)
    yield s
    s.close()


# -- LRU order by last use ------------------------------------------------------------------


def test_eviction_takes_least_recently_used_not_first_inserted(store: CacheStore) -> None:
    """Touching the oldest blob protects it: the next admission evicts the second one."""
    a, b, c = (put(store, blob(t)) for t in "abc")
    store.touch(a)
    d = put(store, blob("d"))
    assert not store.has(b)
    assert {a, c, d} == {s for s in (a, b, c, d) if store.has(s)}
    assert disk_blobs(store) == {a, c, d}


def test_eviction_evicts_as_many_as_needed_in_lru_order(store: CacheStore) -> None:
    """A blob needing two slots evicts the two least recently used, nothing more."""
    a, b, c = (put(store, blob(t)) for t in "abc")
    store.touch(a)
    victims = store.reserve(200)
    assert victims == [b, c]
    store.release(200)
    assert store.has(a)


def test_touch_of_unknown_digest_is_ignored(store: CacheStore) -> None:
    """Touching a digest the store does not hold neither fails nor creates an entry."""
    store.touch("0" * 64)
    assert store.file_count == 0


def test_reservations_count_against_the_budget(store: CacheStore) -> None:
    """Two fills in flight reserve their bytes: a third that cannot fit gets no room."""
    assert store.reserve(150) == []
    assert store.reserve(150) == []
    assert store.reserve(1) is None
    store.release(150)
    assert store.reserve(100) == []


def test_file_larger_than_budget_gets_no_reservation(store: CacheStore) -> None:
    """reserve() refuses a file bigger than the whole budget and evicts nothing for it."""
    a = put(store, blob("a"))
    assert store.reserve(301) is None
    assert store.has(a)
    assert store.used_bytes == 100


# -- pins -----------------------------------------------------------------------------------


def test_pinned_blob_is_skipped_by_eviction(store: CacheStore) -> None:
    """The least recently used blob is being served: eviction takes the next one instead."""
    a, b, _c = (put(store, blob(t)) for t in "abc")
    with store.pinned(a):
        d = put(store, blob("d"))
        assert store.has(a)
        assert not store.has(b)
        assert store.has(d)
    assert (store.path_for(a)).is_file()


def test_reserve_returns_none_when_only_pinned_blobs_could_make_room(store: CacheStore) -> None:
    """With every blob pinned, no room can be made: None, and nothing is evicted."""
    shas = [put(store, blob(t)) for t in "abc"]
    with contextlib.ExitStack() as stack:
        for sha in shas:
            stack.enter_context(store.pinned(sha))
        assert store.reserve(50) is None
        assert all(store.has(s) for s in shas)
        assert store.used_bytes == 300
    assert store.reserve(50) == [shas[0]]


def test_partial_room_from_unpinned_is_not_taken_when_not_enough(store: CacheStore) -> None:
    """If unpinned blobs alone cannot make room, none of them is evicted for nothing."""
    a, b, c = (put(store, blob(t)) for t in "abc")
    with store.pinned(a), store.pinned(b):
        assert store.reserve(200) is None
    assert all(store.has(s) for s in (a, b, c))


def test_nested_pins_hold_until_the_last_is_released(store: CacheStore) -> None:
    """Two concurrent readers pin the same blob: it stays protected until both are done."""
    a = put(store, blob("a"))
    store.touch(a, now=time.time() - 2 * MAX_AGE)
    with store.pinned(a):
        with store.pinned(a):
            pass
        assert store.expired() == []
    assert store.expired() == [a]


# -- age sweep ------------------------------------------------------------------------------


def test_expired_evicts_blobs_unused_for_longer_than_max_age(store: CacheStore) -> None:
    """With a clock: only blobs whose last use is older than max_age are swept."""
    old, recent = put(store, blob("o")), put(store, blob("r"))
    now = time.time()
    store.touch(old, now=now - MAX_AGE - 60)
    store.touch(recent, now=now - MAX_AGE + 60)
    victims = store.expired(now)
    assert victims == [old]
    assert store.has(recent)
    assert not store.has(old)
    assert store.used_bytes == 100


def test_expired_skips_pinned_blobs(store: CacheStore) -> None:
    """A blob being served is not swept even when it is old."""
    old = put(store, blob("o"))
    now = time.time()
    store.touch(old, now=now - 2 * MAX_AGE)
    with store.pinned(old):
        assert store.expired(now) == []
    assert store.expired(now) == [old]


# -- restart --------------------------------------------------------------------------------


def test_restart_keeps_recency(tmp_path: Path) -> None:
    """LRU order survives close/open: the blob touched last is evicted last after a restart."""
    root = tmp_path / "cache"
    first = open_store(root, max_size=300)
    a, b, c = (put(first, blob(t)) for t in "abc")
    now = time.time()
    first.touch(b, now=now - 30)
    first.touch(c, now=now - 20)
    first.touch(a, now=now - 10)
    first.close()

    second = open_store(root, max_size=300)
    try:
        assert lru_order(second) == [b, c, a]
        assert second.reserve(100) == [b]
    finally:
        second.close()


def test_restart_keeps_sizes_and_stats(tmp_path: Path) -> None:
    """Files, bytes and last-use range are the same after a restart."""
    root = tmp_path / "cache"
    first = open_store(root)
    put(first, blob("a", 120))
    put(first, blob("b", 80))
    before = first.stats()
    first.close()
    second = open_store(root)
    try:
        after = second.stats()
        assert (after.files, after.bytes) == (2, 200)
        assert after.oldest_use == pytest.approx(before.oldest_use)
        assert after.newest_use == pytest.approx(before.newest_use)
    finally:
        second.close()


def test_open_removes_crash_leftovers_in_tmp(tmp_path: Path) -> None:
    """Partial files in tmp/ from a crashed fill are deleted when the server opens the store."""
    root = tmp_path / "cache"
    (root / "tmp").mkdir(parents=True)
    leftover = root / "tmp" / "abc.123.456.part"
    leftover.write_bytes(b"half a wheel")
    store = open_store(root)
    try:
        assert list((root / "tmp").iterdir()) == []
    finally:
        store.close()


def test_open_without_clean_tmp_keeps_fills_of_a_live_server(tmp_path: Path) -> None:
    """The cache commands open with clean_tmp=False and leave a running server's fills alone."""
    root = tmp_path / "cache"
    (root / "tmp").mkdir(parents=True)
    running = root / "tmp" / "abc.123.456.part"
    running.write_bytes(b"in progress")
    store = CacheStore(root, 1000, MAX_AGE)
    store.open(clean_tmp=False)
    try:
        assert running.exists()
    finally:
        store.close()


def test_row_without_blob_is_dropped_at_open(tmp_path: Path) -> None:
    """A blob deleted while the server was down is not offered after the restart."""
    root = tmp_path / "cache"
    first = open_store(root)
    a, b = put(first, blob("a")), put(first, blob("b"))
    first.close()
    first.path_for(a).unlink()
    second = open_store(root)
    try:
        assert not second.has(a)
        assert second.has(b)
        assert second.used_bytes == 100
    finally:
        second.close()


def test_blob_without_row_is_adopted_at_open(tmp_path: Path) -> None:
    """A verified blob whose database row is missing is counted, with its mtime as last use."""
    root = tmp_path / "cache"
    first = open_store(root)
    a = put(first, blob("a"))
    first.close()
    os.remove(root / "state.sqlite")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(root / f"state.sqlite{suffix}")
    second = open_store(root)
    try:
        assert second.has(a)
        assert second.used_bytes == 100
    finally:
        second.close()


def test_a_lost_database_is_rebuilt_without_reading_every_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More row-less blobs than crash leftovers could be (the database was lost) are kept at
    their size, so start-up does not hash the whole cache before listening; a few are hashed."""
    monkeypatch.setattr(store_module, "ROWLESS_HASH_LIMIT", 2)
    root = tmp_path / "cache"
    first = open_store(root, max_size=10**6)
    shas = [put(first, blob(f"b{i}"), name=f"b{i}.whl") for i in range(3)]
    first.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(root / f"state.sqlite{suffix}")
    hashed: list[str] = []
    original = CacheStore._digest_matches

    def counting(self: CacheStore, sha256: str) -> bool:
        hashed.append(sha256)
        return original(self, sha256)

    monkeypatch.setattr(CacheStore, "_digest_matches", counting)
    second = open_store(root, max_size=10**6)
    try:
        assert all(second.has(sha) for sha in shas)
        assert hashed == []
    finally:
        second.close()


# -- invariants (Hypothesis) ----------------------------------------------------------------

BUDGET = 1000


class StoreMachine(RuleBasedStateMachine):
    """Random admit / touch / pin / reserve sequences against a simple LRU model.

    The blobs have records but no files (``reserve`` deletes whatever files there are), so
    each run's store needs only an empty directory for its database.
    """

    reservations = Bundle("reservations")
    pins = Bundle("pins")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="nightproxy-store-"))
        self.store = open_store(self.root, BUDGET)
        self.order: list[str] = []  # model LRU order, least recent first
        self.sizes: dict[str, int] = {}
        self.pinned: dict[str, int] = {}
        self.outstanding = 0
        self.counter = 0
        self.stack = contextlib.ExitStack()
        self.pin_stacks: dict[int, contextlib.ExitStack] = {}
        self.pin_sha: dict[int, str] = {}

    def _expected_victims(self, size: int) -> list[str] | None:
        if size > BUDGET:
            return None
        need = sum(self.sizes.values()) + self.outstanding + size - BUDGET
        victims = []
        for sha in self.order:
            if need <= 0:
                break
            if self.pinned.get(sha):
                continue
            victims.append(sha)
            need -= self.sizes[sha]
        return None if need > 0 else victims

    def _evict(self, victims: list[str]) -> None:
        for sha in victims:
            self.order.remove(sha)
            del self.sizes[sha]

    @rule(size=st.integers(min_value=1, max_value=BUDGET + 100))
    def admit(self, size: int) -> None:
        """A fill of a new blob: reserve, then account it."""
        expected = self._expected_victims(size)
        victims = self.store.reserve(size)
        assert victims == expected
        if victims is None:
            return
        self._evict(victims)
        self.counter += 1
        sha = hashlib.sha256(str(self.counter).encode()).hexdigest()
        self.store.admitted(sha, size, size, "f.whl")
        self.order.append(sha)
        self.sizes[sha] = size

    @precondition(lambda self: bool(self.order))
    @rule(index=st.integers(min_value=0))
    def touch(self, index: int) -> None:
        """A cache hit: the blob becomes the most recently used."""
        sha = self.order[index % len(self.order)]
        self.store.touch(sha)
        self.order.remove(sha)
        self.order.append(sha)

    @rule(target=reservations, size=st.integers(min_value=1, max_value=BUDGET // 2))
    def hold(self, size: int) -> int:
        """A fill in flight holds a reservation (0 when it got no room)."""
        expected = self._expected_victims(size)
        victims = self.store.reserve(size)
        assert victims == expected
        if victims is None:
            return 0
        self._evict(victims)
        self.outstanding += size
        return size

    @rule(size=consumes(reservations))
    def release(self, size: int) -> None:
        """A fill in flight failed and gives its reservation back."""
        self.store.release(size)
        self.outstanding -= size

    @precondition(lambda self: bool(self.order))
    @rule(target=pins, index=st.integers(min_value=0))
    def pin(self, index: int) -> int:
        """A client starts reading a cached blob."""
        sha = self.order[index % len(self.order)]
        stack = contextlib.ExitStack()
        stack.enter_context(self.store.pinned(sha))
        self.counter += 1
        self.pin_stacks[self.counter] = stack
        self.pinned[sha] = self.pinned.get(sha, 0) + 1
        self.pin_sha[self.counter] = sha
        return self.counter

    @rule(handle=consumes(pins))
    def unpin(self, handle: int) -> None:
        """The client finished reading."""
        self.pin_stacks.pop(handle).close()
        sha = self.pin_sha.pop(handle)
        self.pinned[sha] -= 1

    @invariant()
    def never_over_budget(self) -> None:
        assert self.store.used_bytes + self.outstanding <= BUDGET

    @invariant()
    def bytes_match_entries(self) -> None:
        assert self.store.used_bytes == sum(self.sizes.values())
        assert self.store.file_count == len(self.order)

    @invariant()
    def pinned_blobs_are_kept(self) -> None:
        for sha, count in self.pinned.items():
            if count:
                assert self.store.has(sha)

    def teardown(self) -> None:
        for stack in self.pin_stacks.values():
            stack.close()
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreInvariants = StoreMachine.TestCase
