"""Move a warm cache between machines: ``nightproxy cache export`` / ``import``.

The archive is a plain tar (wheels are compressed already) holding a manifest and the blobs
named by their sha256. Import stages every blob in the cache's temporary directory and checks
its digest before admitting any: a corrupted archive changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from nightproxy.cache.store import CacheStore, is_sha256

MANIFEST = "nightproxy-cache.json"
FORMAT_VERSION = 1
_CHUNK = 1024 * 1024


class TransferError(Exception):
    """The archive cannot be imported; nothing was changed."""


def export_cache(store: CacheStore, out: Path) -> tuple[int, int]:
    """Write every blob and the manifest to ``out``; return (files, bytes)."""
    blobs, aliases = store.snapshot()
    manifest = {
        "format": FORMAT_VERSION,
        "exported_at": time.time(),
        "blobs": blobs,
        "aliases": aliases,
    }
    data = json.dumps(manifest).encode()
    total = 0
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for blob in blobs:
            tar.add(store.path_for(blob["sha256"]), arcname=f"blobs/{blob['sha256']}")
            total += int(blob["size"])
    tmp.replace(out)
    return len(blobs), total


def _staged_copy(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> str:
    source = tar.extractfile(member)
    if source is None:
        raise TransferError(f"{member.name} is not a regular file")
    digest = hashlib.sha256()
    with source, open(dest, "xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def import_cache(store: CacheStore, archive: Path) -> tuple[int, int]:
    """Verify and admit every blob of an exported archive; return (files added, bytes)."""
    staged: dict[str, tuple[Path, int]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest = _read_manifest(tar)
            meta = {b["sha256"]: b for b in manifest["blobs"]}
            for member in tar:
                if member.name == MANIFEST:
                    continue
                name = member.name.removeprefix("blobs/")
                if not member.isfile() or member.name != f"blobs/{name}" or not is_sha256(name):
                    raise TransferError(f"unexpected member {member.name!r} in the archive")
                if name not in meta:
                    raise TransferError(f"blob {name} is not in the manifest")
                if store.has(name):
                    continue
                dest = store.temp_path("import")
                staged[name] = (dest, member.size)
                actual = _staged_copy(tar, member, dest)
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
    for sha, (path, size) in staged.items():
        blob = meta[sha]
        store.admit_file(
            path,
            sha,
            size,
            filename=str(blob.get("filename", "")),
            upstream=str(blob.get("upstream", "")),
        )
        store.admitted(sha, size, 0, str(blob.get("filename", "")))
        store.touch(sha, float(blob.get("last_use", time.time())))
        added += size
    for key, sha in manifest["aliases"].items():
        if isinstance(key, str) and isinstance(sha, str) and store.has(sha):
            store.record_alias(key, sha)
    victims = store.reserve(0) or []
    store.delete_blobs(victims)
    store.flush()
    return len(staged), added


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
