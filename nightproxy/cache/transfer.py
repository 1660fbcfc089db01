"""Move a warm cache between machines: ``nightproxy cache export`` / ``import``.

The archive is a plain tar (wheels are compressed already) holding the blobs named by their
sha256 and, last, a manifest of exactly those blobs. Import stages every blob in the cache's
temporary directory and checks its digest before admitting any: a corrupted archive changes
nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

from nightproxy.cache.keys import metadata_key
from nightproxy.cache.store import BlobRecord, CacheStore, is_sha256

MANIFEST = "nightproxy-cache.json"
FORMAT_VERSION = 1
_CHUNK = 1024 * 1024


#: Told (bytes of blobs done, bytes of blobs in all) after each chunk: how the command line
#: draws a progress bar. The total is known before the first call.
Progress = Callable[[int, int], None]


class TransferError(Exception):
    """The archive cannot be imported; nothing was changed."""


class SkippedAliases(NamedTuple):
    """The aliases an import left out (without ``trust_aliases``), by what they claim."""

    #: Which download of a feed that publishes no sha256 a blob is.
    files: int = 0
    #: Which wheel a METADATA blob was read from or fetched for.
    metadata: int = 0


class _Counted:
    """A blob being archived, reporting each read to ``progress``."""

    def __init__(self, handle: IO[bytes], progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress(len(data))
        return data


def export_cache(store: CacheStore, out: Path, progress: Progress | None = None) -> tuple[int, int]:
    """Write every blob and the manifest to ``out``; return (files, bytes).

    Runs beside a live server, whose eviction may delete any blob meanwhile: a blob gone by
    the time it is opened is left out (of the manifest too). Other I/O errors propagate as
    ``OSError``, and no partial archive is left behind.
    """
    blobs, aliases = store.snapshot()
    tmp = out.with_name(out.name + ".part")
    try:
        exported, total = _write_archive(store, tmp, blobs, aliases, progress)
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return exported, total


def _write_archive(
    store: CacheStore,
    tmp: Path,
    blobs: list[BlobRecord],
    aliases: dict[str, str],
    progress: Progress | None,
) -> tuple[int, int]:
    exported: list[BlobRecord] = []
    total = 0
    done, expected = 0, sum(blob["size"] for blob in blobs)

    def advance(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            # A blob evicted meanwhile never arrives: the bar still ends full.
            progress(done, max(done, expected))

    with tarfile.open(tmp, "w") as tar:
        for blob in blobs:
            sha = blob["sha256"]
            try:
                handle = open(store.path_for(sha), "rb")  # noqa: SIM115 - closed just below
            except FileNotFoundError:
                expected -= blob["size"]
                continue
            with handle:
                # Sized from the open file: once open, a deletion cannot change what is read.
                info = tar.gettarinfo(arcname=f"blobs/{sha}", fileobj=handle)
                tar.addfile(info, _Counted(handle, advance))
            exported.append(blob)
            total += info.size
        # Last, so that it lists exactly the blobs that made it into the archive.
        live = {blob["sha256"] for blob in exported}
        manifest = {
            "format": FORMAT_VERSION,
            "exported_at": time.time(),
            "blobs": exported,
            "aliases": {key: sha for key, sha in aliases.items() if sha in live},
        }
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    if progress is not None:
        progress(done, done)
    return len(exported), total


def _staged_copy(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, advance: Callable[[int], None]
) -> str:
    source = tar.extractfile(member)
    if source is None:
        raise TransferError(f"{member.name} is not a regular file")
    digest = hashlib.sha256()
    with source, open(dest, "xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def import_cache(
    store: CacheStore,
    archive: Path,
    *,
    trust_aliases: bool = False,
    progress: Progress | None = None,
) -> tuple[int, int, SkippedAliases]:
    """Verify and admit every blob of an exported archive; return (files added, bytes, the
    aliases left out).

    A blob's bytes are checked against its name, but nothing in an archive can vouch for which
    upstream file a blob stands for where the feed publishes no hash: that is the alias (file
    key to sha256), and the upstream recorded for the blob. Both are taken only with
    ``trust_aliases`` (an archive you made yourself): otherwise such files are downloaded and
    verified again on first use, and an archive cannot swap the bytes behind a file. The same
    holds for which wheel a METADATA blob belongs to (``m:`` aliases): untrusted, that metadata
    is fetched or read from its wheel again on first use.
    """
    staged: dict[str, tuple[Path, int]] = {}
    done = 0

    def advance(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress(done, expected)

    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest = _read_manifest(tar)
            meta = {b["sha256"]: b for b in manifest["blobs"]}
            # Reading the manifest indexed every member; the total is what will be read.
            expected = sum(m.size for m in tar.getmembers() if m.name != MANIFEST)
            for member in tar:
                if member.name == MANIFEST:
                    continue
                name = member.name.removeprefix("blobs/")
                if not member.isfile() or member.name != f"blobs/{name}" or not is_sha256(name):
                    raise TransferError(f"unexpected member {member.name!r} in the archive")
                if name not in meta:
                    raise TransferError(f"blob {name} is not in the manifest")
                if store.has(name) or name in staged:
                    # Already here, or listed twice in the archive (``tar -r``): one copy.
                    advance(member.size)
                    continue
                dest = store.temp_path("import")
                staged[name] = (dest, member.size)
                actual = _staged_copy(tar, member, dest, advance)
                if actual != name:
                    raise TransferError(
                        f"corrupted archive: blob {name} has sha256 {actual}; nothing imported"
                    )
            missing = [s for s in meta if s not in staged and not store.has(s)]
            if missing:
                raise TransferError(f"archive lacks {len(missing)} blobs its manifest lists")
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as exc:
        _discard(staged)
        raise TransferError(f"cannot read {archive}: {exc}") from exc
    except TransferError:
        _discard(staged)
        raise
    added = 0
    try:
        for sha, (path, size) in staged.items():
            blob = meta[sha]
            store.admit_file(
                path,
                sha,
                size,
                filename=str(blob.get("filename", "")),
                upstream=str(blob.get("upstream", "")) if trust_aliases else "",
            )
            store.admitted(sha, size, 0, str(blob.get("filename", "")))
            store.touch(sha, float(blob.get("last_use", time.time())))
            added += size
    finally:
        # Whatever was not moved into the store (a failure part-way) must not stay in tmp/.
        _discard(staged)
    aliases = [
        (key, sha)
        for key, sha in manifest["aliases"].items()
        if isinstance(key, str) and isinstance(sha, str) and store.has(sha)
    ]
    if trust_aliases:
        for key, sha in aliases:
            store.record_alias(key, sha)
    victims = store.reserve(0) or []
    store.delete_blobs(victims)
    store.flush()
    if trust_aliases:
        return len(staged), added, SkippedAliases()
    metadata = sum(1 for key, _sha in aliases if key.startswith(metadata_key("")))
    return len(staged), added, SkippedAliases(len(aliases) - metadata, metadata)


def _read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST)
    except KeyError as exc:
        raise TransferError("not a nightproxy cache archive (no manifest)") from exc
    handle = tar.extractfile(member)
    if handle is None:
        raise TransferError("manifest is not a file")
    manifest: Any = json.loads(handle.read())
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise TransferError("unsupported cache archive format")
    if not isinstance(manifest.get("blobs"), list) or not isinstance(manifest.get("aliases"), dict):
        raise TransferError("malformed manifest")
    return manifest


def _discard(staged: dict[str, tuple[Path, int]]) -> None:
    for path, _size in staged.values():
        with contextlib.suppress(OSError):
            path.unlink()
