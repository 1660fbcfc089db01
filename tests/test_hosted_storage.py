"""The local storage of a hosted feed: atomic commits, trash, restore, purge, crash repair."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from nightproxy.hosted.local import LocalStorage
from nightproxy.hosted.records import NewFile
from nightproxy.hosted.storage import (
    REASON_MANUAL,
    Outcome,
    RestoreConflictError,
    Staged,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PROJECT = canonicalize_name("demo")
NAME = "demo-1.0.dev0-py3-none-any.whl"


def new_file(data: bytes, *, filename: str = NAME, metadata: bytes | None = None) -> NewFile:
    return NewFile(
        project=PROJECT,
        filename=filename,
        sha256=hashlib.sha256(data).hexdigest(),
        blake2_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
        size=len(data),
        uploader="demo token 1",
        requires_python=">=3.11",
        metadata_sha256=None if metadata is None else hashlib.sha256(metadata).hexdigest(),
        upload_time=NOW,
    )


async def upload(
    storage: LocalStorage, data: bytes, *, overwrite: bool = False, filename: str = NAME
) -> tuple[Outcome, int]:
    metadata = b"Name: demo\nVersion: 1.0.dev0\n" + data[:4]
    async with storage.staging() as staged:
        staged.path.write_bytes(data)
        result = await storage.commit(
            Staged(staged.path, metadata),
            new_file(data, filename=filename, metadata=metadata),
            overwrite=overwrite,
        )
    return result.outcome, result.record.id


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    store = LocalStorage(tmp_path / "feed")
    await store.open(NOW)
    yield store
    await store.close()


async def test_commit_lists_and_links_the_file(storage: LocalStorage) -> None:
    """A committed upload is listed, its bytes are its blob and <project>/<filename> links it."""
    assert (await upload(storage, b"one"))[0] is Outcome.CREATED
    [record] = await storage.live()
    assert (record.project, record.filename, record.size) == (PROJECT, NAME, 3)
    blob = storage.local_path(record.sha256)
    assert blob is not None
    assert blob.read_bytes() == b"one"
    assert os.path.samefile(blob, storage.root / "demo" / NAME)
    assert record.metadata_sha256 is not None
    assert await storage.read_blob(record.metadata_sha256) == b"Name: demo\nVersion: 1.0.dev0\none"
    assert list(storage.staging_dir.iterdir()) == []


async def test_same_bytes_change_nothing_other_bytes_exist(storage: LocalStorage) -> None:
    """The same filename with the same bytes is unchanged; with other bytes it is refused."""
    _, first = await upload(storage, b"one")
    assert await upload(storage, b"one") == (Outcome.UNCHANGED, first)
    assert await upload(storage, b"two") == (Outcome.EXISTS, first)
    [record] = await storage.live()
    assert record.id == first
    assert (storage.root / "demo" / NAME).read_bytes() == b"one"


async def test_overwrite_keeps_old_bytes_under_their_digest(storage: LocalStorage) -> None:
    """An overwrite lists the new bytes; the old digest still means the old bytes, in the trash."""
    await upload(storage, b"one")
    old_sha = hashlib.sha256(b"one").hexdigest()
    outcome, _ = await upload(storage, b"two", overwrite=True)
    assert outcome is Outcome.REPLACED
    [record] = await storage.live()
    assert record.sha256 == hashlib.sha256(b"two").hexdigest()
    assert (storage.root / "demo" / NAME).read_bytes() == b"two"
    old_blob = storage.local_path(old_sha)
    assert old_blob is not None
    assert old_blob.read_bytes() == b"one"
    [trashed] = await storage.trashed()
    assert (trashed.sha256, trashed.trash_reason) == (old_sha, "replaced")


async def test_trash_restore_purge(storage: LocalStorage) -> None:
    """Trash unlists and unlinks, restore brings back (aging anew), purge removes the bytes."""
    await upload(storage, b"one")
    [record] = await storage.live()
    later = NOW + timedelta(days=3)
    assert [r.id for r in await storage.trash([record], REASON_MANUAL, "by admin", later)] == [
        record.id
    ]
    assert await storage.live() == []
    assert not (storage.root / "demo").exists()
    [restored] = await storage.restore(await storage.trashed(), later)
    assert restored.aged_from == later
    assert restored.upload_time == NOW
    assert (storage.root / "demo" / NAME).read_bytes() == b"one"
    await storage.trash([restored], REASON_MANUAL, "by admin", later)
    blob = storage.local_path(record.sha256)
    assert blob is not None
    assert await storage.purge(await storage.trashed(), protect={record.sha256}) == 0
    assert blob.exists()
    assert await storage.purge(await storage.trashed(), protect=()) == 2
    assert not blob.exists()
    assert await storage.trashed() == []
    assert await storage.deletions() == {"manual": 2}


async def test_restore_refuses_a_taken_name(storage: LocalStorage) -> None:
    """A trashed file whose name is listed again cannot be restored, and nothing changes."""
    await upload(storage, b"one")
    await upload(storage, b"two", overwrite=True)
    with pytest.raises(RestoreConflictError, match="a file of that name is listed"):
        await storage.restore(await storage.trashed(), NOW)
    [live] = await storage.live()
    assert live.sha256 == hashlib.sha256(b"two").hexdigest()


async def test_generation_changes_with_every_change(storage: LocalStorage) -> None:
    """Any change, by this or another process, moves the generation on."""
    before = await storage.generation()
    await upload(storage, b"one")
    other = LocalStorage(storage.root)
    await other.open(NOW)
    middle = await storage.generation()
    await upload(other, b"two", filename="demo-1.0.dev1-py3-none-any.whl")
    assert before < middle < await storage.generation()
    assert len(await storage.live()) == 2
    await other.close()


async def test_open_repairs_what_a_crash_left(tmp_path: Path) -> None:
    """Reopening drops uncommitted blobs and unlocked staging files, relinks listed files and
    unlinks trashed ones that a change left unsettled, and keeps a staging file another
    upload still holds."""
    storage = LocalStorage(tmp_path / "feed")
    await storage.open(NOW)
    await upload(storage, b"one")
    await upload(storage, b"gone", filename="demo-0.9.dev0-py3-none-any.whl")
    [kept, gone] = await storage.live()
    await storage.trash([gone], REASON_MANUAL, "x", NOW)
    # A crash right after two changes' transactions, before their links were made: the
    # records say which files those were.
    with storage.db.write(change=False) as writer:
        writer.unsettled([kept.id, gone.id])
    await storage.close()
    # The links as that crash left them: the named file still other bytes, a trashed file's
    # link still there; and an orphan blob, a stale staging file, one another process holds.
    named = storage.root / "demo" / NAME
    named.unlink()
    named.write_bytes(b"torn")
    os.link(storage.blob(gone.sha256), storage.root / "demo" / gone.filename)
    orphan = storage.blob("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    (storage.staging_dir / "stale.part").write_bytes(b"partial")
    held = os.open(storage.staging_dir / "held.part", os.O_CREAT | os.O_WRONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        reopened = LocalStorage(storage.root)
        await reopened.open(NOW)
        assert [r.id for r in await reopened.live()] == [kept.id]
        assert named.read_bytes() == b"one"
        assert not (storage.root / "demo" / gone.filename).exists()
        assert not orphan.exists()
        assert sorted(p.name for p in storage.staging_dir.iterdir()) == ["held.part"]
        await reopened.close()
    finally:
        os.close(held)


async def test_missing_bytes_are_never_listed(tmp_path: Path) -> None:
    """A listed file whose blob vanished is moved to the trash on open, not served."""
    storage = LocalStorage(tmp_path / "feed")
    await storage.open(NOW)
    await upload(storage, b"one")
    [record] = await storage.live()
    await storage.close()
    storage.blob(record.sha256).unlink()
    reopened = LocalStorage(storage.root)
    await reopened.open(NOW)
    assert await reopened.live() == []
    [trashed] = await reopened.trashed()
    assert trashed.trash_reason == "missing"
    await reopened.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A feed database written by a newer nightproxy is not opened (and not changed)."""
    state = tmp_path / "feed" / ".nightproxy"
    state.mkdir(parents=True)
    with sqlite3.connect(state / "feed.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="upgrade nightproxy"):
        await LocalStorage(tmp_path / "feed").open(NOW)


async def test_a_version_1_database_is_migrated_and_every_link_checked(tmp_path: Path) -> None:
    """Records from before unsettled files were kept: every link is checked once, on upgrade."""
    storage = LocalStorage(tmp_path / "feed")
    await storage.open(NOW)
    await upload(storage, b"one")
    await storage.close()
    with sqlite3.connect(storage.state_dir / "feed.sqlite") as db:
        db.execute("DROP TABLE pending")
        db.execute("PRAGMA user_version = 1")
    named = storage.root / "demo" / NAME
    named.unlink()
    reopened = LocalStorage(storage.root)
    await reopened.open(NOW)
    assert named.read_bytes() == b"one"
    with sqlite3.connect(storage.state_dir / "feed.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    await reopened.close()
