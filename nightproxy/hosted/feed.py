"""The hosted feed service: uploads, deletions, the trash and retention over one storage.

One ``HostedFeed`` per hosted upstream and process. Several processes may serve one feed:
the storage's records are their common truth, and each process's listing follows them
(``snapshot``). Retention runs after each upload and periodically (``maintain``, a task its
owner starts); a plan is applied only to the listing it was made from, so a concurrent change
makes it plan again rather than empty a group it did not see.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from nightproxy.hosted.auth import FeedAuth, Identity
from nightproxy.hosted.prune import Deletion, PruneRules, plan_prune
from nightproxy.hosted.records import FileRecord, NewFile
from nightproxy.hosted.snapshot import Snapshot
from nightproxy.hosted.storage import (
    REASON_MANUAL,
    REASON_RETENTION,
    CommitResult,
    Outcome,
    Staged,
    StaleError,
    Storage,
)
from nightproxy.hosted.upload import (
    BodyDigest,
    UploadForm,
    check_digests,
    check_form,
    inspect_file,
)
from nightproxy.simple_api.filenames import parse_dist_filename

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Attempts at applying a retention plan while other processes keep changing the feed.
PRUNE_ATTEMPTS = 5


def utc_now() -> datetime:
    return datetime.now(UTC)


class ForbiddenError(Exception):
    """A valid token asked for something it may not do (a 403 with this message)."""


class NotFoundError(LookupError):
    """No file of the feed matches (a 404 with this message)."""


@dataclass(frozen=True, slots=True)
class FeedSettings:
    name: str
    #: Retention of each project of the feed (global, feed and project settings resolved).
    rules: Callable[[NormalizedName], PruneRules]
    overwrite: bool = False
    max_file_size: int = 2 * 1024**3
    #: Seconds a deleted file stays restorable before its bytes go.
    trash: float = 7 * 86400
    #: Seconds between retention runs besides the one after each upload.
    prune_interval: float = 3600
    #: Seconds at least between two retention runs.
    prune_spacing: float = 10
    #: Seconds a process's listing may lag behind changes made by other processes.
    recheck: float = 1.0


class HostedFeed:
    def __init__(
        self, settings: FeedSettings, storage: Storage, auth: FeedAuth, *, clock: Clock = utc_now
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.storage = storage
        self.auth = auth
        self.clock = clock
        self._snapshot: Snapshot | None = None
        self._checked_at = 0.0
        self._snapshot_lock = asyncio.Lock()
        #: Changes made through this process, and how many of them the listing has read: a
        #: change stays unread until a read that began after it ends.
        self._changes = 0
        self._changes_read = 0
        self._serving: Counter[str] = Counter()
        self._wake = asyncio.Event()
        #: Called with the projects whose listing changed through this process.
        self.on_change: list[Callable[[frozenset[NormalizedName]], None]] = []

    async def open(self) -> None:
        await self.storage.open(self.clock())

    async def close(self) -> None:
        await self.storage.close()

    # -- the listing ------------------------------------------------------------------------

    async def snapshot(self, *, fresh: bool = False, max_age: float | None = None) -> Snapshot:
        """The live files; at most ``recheck`` (or ``max_age``) seconds behind other
        processes' changes, or checked now with ``fresh``."""
        snapshot = self._snapshot
        window = self.settings.recheck if max_age is None else max_age
        recent = time.monotonic() - self._checked_at < window
        # A change through this process is read before anything is answered from memory.
        unread = self._changes_read != self._changes
        if snapshot is not None and not fresh and recent and not unread:
            return snapshot
        if (
            snapshot is not None
            and not fresh
            and max_age is None
            and not unread
            and self._snapshot_lock.locked()
        ):
            # Another task is reading the listing again for other processes' changes, which
            # may take seconds for a big feed: pages meanwhile get the listing as it was
            # rather than queue behind it. Not after a change through this process, which its
            # own uploader may be about to install, until a read that saw it has ended.
            return snapshot
        async with self._snapshot_lock:
            changes = self._changes
            generation = await self.storage.generation()
            self._checked_at = time.monotonic()
            if self._snapshot is None or self._snapshot.generation != generation:
                records = await self.storage.live()
                deletions = await self.storage.deletions()
                # Dicts over every file of the feed: off the event loop for a big feed.
                self._snapshot = await asyncio.to_thread(
                    Snapshot.of, generation, records, deletions
                )
            self._changes_read = changes
            return self._snapshot

    @property
    def last_snapshot(self) -> Snapshot | None:
        """The listing as last read, without waiting (for metrics)."""
        return self._snapshot

    def _changed(self, records: list[FileRecord]) -> None:
        self._checked_at = 0.0  # the next listing reads the records again
        self._changes += 1
        projects = frozenset(record.project for record in records)
        if projects:
            for listener in list(self.on_change):
                listener(projects)

    # -- uploads -------------------------------------------------------------------------------

    def new_body(self) -> BodyDigest:
        return BodyDigest(self.settings.max_file_size)

    async def accept(
        self,
        identity: Identity,
        form: UploadForm,
        filename: str | None,
        staged: Staged,
        body: BodyDigest,
    ) -> CommitResult:
        """Check a received upload and make it part of the feed (or say why not)."""
        dist = check_form(form, filename)
        assert filename is not None
        self.check_may_publish(identity, dist.project)
        check_digests(form, body)
        metadata = await asyncio.to_thread(inspect_file, staged.path, filename, dist)
        new = NewFile(
            project=dist.project,
            filename=filename,
            sha256=body.sha256,
            blake2_256=body.blake2_256,
            size=body.size,
            uploader=identity.label,
            requires_python=form.requires_python,
            metadata_sha256=None if metadata is None else hashlib.sha256(metadata).hexdigest(),
            upload_time=self.clock(),
        )
        result = await self.storage.commit(
            Staged(staged.path, metadata), new, overwrite=self.settings.overwrite
        )
        if result.outcome in {Outcome.CREATED, Outcome.REPLACED}:
            log.info(
                "%s: %s %s/%s (%d bytes) from %s",
                self.name,
                result.outcome.value,
                dist.project,
                filename,
                new.size,
                identity.label,
            )
            self._changed([result.record])
            self._wake.set()
        return result

    @staticmethod
    def check_may_publish(identity: Identity, project: NormalizedName) -> None:
        if not identity.may_publish(project):
            raise ForbiddenError(
                f"This token may publish {identity.describe_rights()}, not {project}"
            )

    # -- serving ---------------------------------------------------------------------------------

    @contextmanager
    def serving(self, digest: str) -> Iterator[None]:
        """Mark bytes as being downloaded: the trash keeps them until the download ends."""
        self._serving[digest] += 1
        try:
            yield
        finally:
            self._serving[digest] -= 1
            if not self._serving[digest]:
                del self._serving[digest]

    # -- deleting and restoring ------------------------------------------------------------

    async def delete(
        self,
        actor: Identity,
        project: NormalizedName,
        *,
        filename: str | None = None,
        version: str | None = None,
    ) -> list[FileRecord]:
        """Move a project's files (all, one version's, or one file) to the trash."""
        self.check_may_publish(actor, project)
        snapshot = await self.snapshot(fresh=True)
        chosen = _select(snapshot.projects.get(project, ()), filename, version)
        if not chosen:
            raise NotFoundError(_nothing(project, filename, version, "listed"))
        deleted = await self._trash(chosen, REASON_MANUAL, f"deleted by {actor.label}")
        self._changed(deleted)
        return deleted

    async def _trash(
        self,
        chosen: list[FileRecord],
        reason: str,
        detail: str | Mapping[int, str],
        *,
        if_generation: int | None = None,
    ) -> list[FileRecord]:
        try:
            return await self.storage.trash(
                chosen, reason, detail, self.clock(), if_generation=if_generation
            )
        except StaleError:
            raise
        except BaseException:
            # Some of them may be in the trash already (a bucket's projects go one by one):
            # the listing is read again rather than left naming them.
            self._changed(chosen)
            raise

    async def restore(
        self, project: NormalizedName, *, filename: str | None = None, version: str | None = None
    ) -> list[FileRecord]:
        """List trashed files again: per filename, the one trashed last."""
        newest: dict[str, FileRecord] = {}
        for record in _select(await self.storage.trashed(project), filename, version):
            held = newest.get(record.filename)
            if held is None or (record.trashed_at or record.upload_time) > (
                held.trashed_at or held.upload_time
            ):
                newest[record.filename] = record
        if not newest:
            raise NotFoundError(_nothing(project, filename, version, "in the trash"))
        restored = await self.storage.restore(list(newest.values()), self.clock())
        self._changed(restored)
        return restored

    async def expire_trash(self) -> int:
        """Remove the bytes of files trashed longer than ``trash`` ago (not while served)."""
        horizon = self.clock() - timedelta(seconds=self.settings.trash)
        expired = [
            r
            for r in await self.storage.trashed()
            if r.trashed_at is not None and r.trashed_at <= horizon
        ]
        if not expired:
            return 0
        return await self.storage.purge(expired, protect=frozenset(self._serving))

    # -- retention ----------------------------------------------------------------------------

    async def plan(self) -> tuple[Snapshot, list[Deletion[FileRecord]]]:
        """What retention would delete now, from a fresh listing."""
        snapshot = await self.snapshot(fresh=True)
        deletions = await asyncio.to_thread(
            plan_prune, snapshot.files(), self.settings.rules, now=self.clock()
        )
        return snapshot, deletions

    async def prune(self, *, dry_run: bool = False) -> list[Deletion[FileRecord]]:
        """Apply retention (or, ``dry_run``, only say what it would delete).

        A run that fails part way leaves each file listed or in the trash (restorable), never
        listed without its bytes; the next run finishes it, starting with what the failed one
        left undone (``Storage.settle``).
        """
        if not dry_run:
            await self.storage.settle()
        for _attempt in range(PRUNE_ATTEMPTS):
            snapshot, deletions = await self.plan()
            if dry_run or not deletions:
                return deletions
            try:
                trashed = await self._trash(
                    [d.file for d in deletions],
                    REASON_RETENTION,
                    {d.file.id: d.reason for d in deletions},
                    if_generation=snapshot.generation,
                )
            except StaleError:
                continue
            for deletion in deletions:
                log.info(
                    "%s: retention deleted %s/%s (%s)",
                    self.name,
                    deletion.file.project,
                    deletion.file.filename,
                    deletion.reason,
                )
            self._changed(trashed)
            return deletions
        log.warning("%s: retention skipped, the feed kept changing while it planned", self.name)
        return []

    def prune_soon(self) -> None:
        self._wake.set()

    async def maintain(self) -> None:
        """Retention and trash expiry, after uploads and every ``prune_interval``.

        A burst of uploads (a CI matrix publishing) makes one run, not one per file: runs
        are at least ``prune_spacing`` apart, and a plan reads the whole feed.
        """
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.prune_interval)
            self._wake.clear()
            try:
                await self.prune()
                await self.expire_trash()
            except Exception:
                log.exception(
                    "%s: retention failed; what it did not get to stays listed until the next run",
                    self.name,
                )
            await asyncio.sleep(self.settings.prune_spacing)


def _select(
    records: tuple[FileRecord, ...] | list[FileRecord], filename: str | None, version: str | None
) -> list[FileRecord]:
    wanted: Version | None = None
    if version is not None:
        try:
            wanted = Version(version)
        except InvalidVersion:
            return []
    chosen = []
    for record in records:
        if filename is not None and record.filename != filename:
            continue
        if wanted is not None:
            dist = parse_dist_filename(record.filename)
            if dist is None or dist.version != wanted:
                continue
        chosen.append(record)
    return chosen


def _nothing(project: str, filename: str | None, version: str | None, where: str) -> str:
    if filename is not None:
        return f"{project}/{filename} is not {where}"
    if version is not None:
        return f"{project} has no file of version {version} {where}"
    return f"{project} has no file {where}"
