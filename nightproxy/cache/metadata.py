"""Core metadata (PEP 658) from a wheel on disk."""

from __future__ import annotations

import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name

from nightproxy.index.filenames import parse_dist_filename

#: METADATA is a few KiB; a huge one is a hostile archive, not a wheel.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class MetadataError(ValueError):
    pass


def extract_metadata(wheel: Path, filename: str) -> bytes:
    """Blocking. The ``<name>-<version>.dist-info/METADATA`` member of a wheel."""
    dist = parse_dist_filename(filename)
    if dist is None:
        raise MetadataError(f"{filename} is not a wheel filename")
    try:
        with zipfile.ZipFile(wheel) as archive:
            candidates = [
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
            ]
            # Prefer the dist-info directory named after the project; wheels have exactly one.
            for info in candidates:
                dirname = info.filename.split("/", 1)[0][: -len(".dist-info")]
                if canonicalize_name(dirname.rsplit("-", 1)[0]) == dist.project:
                    return _read(archive, info)
            if len(candidates) == 1:
                return _read(archive, candidates[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise MetadataError(f"{filename}: not a readable wheel ({exc})") from exc
    raise MetadataError(f"{filename}: no .dist-info/METADATA")


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_METADATA_BYTES:
        raise MetadataError("METADATA too large")
    return archive.read(info)
