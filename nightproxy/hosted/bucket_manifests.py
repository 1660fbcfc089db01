"""The records of a hosted feed in a bucket: one manifest per project, read and replaced
by conditional writes (``If-Match`` its ETag), so that several servers take turns.

Keys under the feed's prefix: ``<project>/<filename>`` (what the feed lists),
``.nightproxy/projects/<project>.json`` (the manifests), ``.nightproxy/metadata/<sha256>``,
``.nightproxy/trash/<sha256>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from packaging.utils import NormalizedName

from nightproxy.hosted.manifest import Manifest, ManifestError, dumps, loads
from nightproxy.hosted.records import FileRecord
from nightproxy.objectstore import ObjectInfo, ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

STATE = ".nightproxy/"
PROJECTS = STATE + "projects/"
#: Attempts at a manifest change while other servers change the same project.
CAS_ATTEMPTS = 8


def named_key(project: str, filename: str) -> str:
    return f"{project}/{filename}"


#: The user metadata naming the sha256 of a named object's bytes.
SHA_META = "sha256"


def sha_of(info: ObjectInfo) -> str | None:
    """The sha256 a named object's metadata gives its bytes (None: written without one)."""
    return info.metadata.get(SHA_META) or None


def trash_key(digest: str) -> str:
    return f"{STATE}trash/{digest}"


def metadata_key(digest: str) -> str:
    return f"{STATE}metadata/{digest}"


def manifest_key(project: str) -> str:
    return f"{PROJECTS}{project}.json"


class BucketManifests:
    """The manifests of one feed's projects, as last read or written by this server."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        #: project -> (manifest ETag, manifest) as last read.
        self._manifests: dict[NormalizedName, tuple[str, Manifest]] = {}
        self._listed: dict[NormalizedName, str] = {}

    # -- reading ---------------------------------------------------------------------------

    async def _list_manifests(self) -> dict[NormalizedName, str]:
        found: dict[NormalizedName, str] = {}
        async for info in self.store.list_objects(PROJECTS):
            name = info.key[len(PROJECTS) :].removesuffix(".json")
            found[NormalizedName(name)] = info.etag
        self._listed = found
        return found

    async def _read(self, project: NormalizedName) -> tuple[str | None, Manifest]:
        """The project's manifest as stored now (empty with no ETag when there is none)."""
        try:
            data, info = await self.store.get(manifest_key(project))
        except ObjectNotFoundError:
            return None, Manifest(project)
        manifest = await asyncio.to_thread(loads, data, project)
        self._manifests[project] = (info.etag, manifest)
        return info.etag, manifest

    async def _current(self) -> list[Manifest]:
        listed = await self._list_manifests()
        manifests = []
        for project, etag in sorted(listed.items()):
            held = self._manifests.get(project)
            if held is None or held[0] != etag:
                try:
                    _etag, manifest = await self._read(project)
                except ManifestError as exc:
                    log.warning("hosted feed in %s: %s: left out", self.store.url(None), exc)
                    continue
                manifests.append(manifest)
            else:
                manifests.append(held[1])
        return manifests

    async def generation(self) -> int:
        listed = await self._list_manifests()
        text = "\n".join(f"{project} {etag}" for project, etag in sorted(listed.items()))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1

    async def live(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return [
            e.record
            for m in await self._current()
            if project is None or m.project == project
            for e in m.live()
        ]

    async def trashed(self, project: NormalizedName | None = None) -> list[FileRecord]:
        return [
            e.record
            for m in await self._current()
            if project is None or m.project == project
            for e in m.trashed()
        ]

    async def deletions(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for manifest in await self._current():
            for reason, count in manifest.deleted.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    async def _write(self, manifest: Manifest, etag: str | None) -> None:
        """Replace the manifest if it is still ``etag`` (``PreconditionFailedError`` if not)."""
        data = dumps(manifest)
        key = manifest_key(manifest.project)
        if etag is None:
            new_etag = await self.store.put(key, data, if_none_match=True)
        else:
            new_etag = await self.store.put(key, data, if_match=etag)
        self._manifests[manifest.project] = (new_etag, manifest)
