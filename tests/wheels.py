"""Build real, installable wheels and sdists for tests.

Everything is deterministic: the same arguments give byte-identical files (zip
timestamps are fixed), so tests can compare hashes across runs.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import random
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = [
    "build_sdist",
    "build_wheel",
    "dist_filename_name",
    "sha256_file",
    "wheel_filename",
    "wheel_metadata",
]

_ZIP_DATE = (2025, 1, 2, 3, 4, 6)
_CHUNK = 1 << 20


def dist_filename_name(name: str) -> str:
    """The distribution name as it appears in wheel/sdist filenames."""
    return canonicalize_name(name).replace("-", "_")


def _version_str(version: str) -> str:
    return str(Version(version))


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{dist_filename_name(name)}-{_version_str(version)}-{tag}.whl"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _metadata_text(
    name: str, version: str, requires_python: str | None, requires_dist: Sequence[str]
) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    lines.append("Summary: nightproxy test fixture")
    return "\n".join(lines) + "\n\n"


def _zinfo(arcname: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def _random_chunks(size: int) -> list[int]:
    """Chunk sizes covering ``size`` bytes."""
    full, rest = divmod(size, _CHUNK)
    return [_CHUNK] * full + ([rest] if rest else [])


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    requires_dist: Sequence[str] = (),
    payload_size: int = 0,
    seed: int = 0,
) -> Path:
    """Write a real wheel into directory ``dest`` and return its path.

    The wheel contains ``<pkg>/__init__.py`` (``__version__``), the dist-info
    (METADATA, WHEEL, RECORD with correct hashes) and, if ``payload_size`` > 0,
    ``<pkg>/payload.bin`` with that many deterministic pseudo-random bytes
    (stored uncompressed, generated chunk by chunk).
    """
    dest.mkdir(parents=True, exist_ok=True)
    ver = _version_str(version)
    dist = dist_filename_name(name)
    pkg = dist
    path = dest / wheel_filename(name, version, tag)
    dist_info = f"{dist}-{ver}.dist-info"
    records: list[tuple[str, str, str]] = []

    files: list[tuple[str, bytes]] = [
        (f"{pkg}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        (
            f"{dist_info}/METADATA",
            _metadata_text(name, version, requires_python, requires_dist).encode(),
        ),
        (
            f"{dist_info}/WHEEL",
            (
                "Wheel-Version: 1.0\nGenerator: nightproxy-tests\nRoot-Is-Purelib: true\n"
                f"Tag: {tag}\n\n"
            ).encode(),
        ),
    ]
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files:
            zf.writestr(_zinfo(arcname, zipfile.ZIP_DEFLATED), data)
            records.append((arcname, _record_hash(data), str(len(data))))
        if payload_size > 0:
            arcname = f"{pkg}/payload.bin"
            rng = random.Random(seed)
            digest = hashlib.sha256()
            with zf.open(_zinfo(arcname, zipfile.ZIP_STORED), "w", force_zip64=True) as fh:
                for chunk_size in _random_chunks(payload_size):
                    chunk = rng.randbytes(chunk_size)
                    digest.update(chunk)
                    fh.write(chunk)
            b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
            records.append((arcname, "sha256=" + b64, str(payload_size)))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(records)
        writer.writerow((f"{dist_info}/RECORD", "", ""))
        zf.writestr(_zinfo(f"{dist_info}/RECORD", zipfile.ZIP_DEFLATED), buf.getvalue())
    return path


def build_sdist(dest: Path, name: str, version: str) -> Path:
    """Write ``<dist>-<ver>.tar.gz`` containing PKG-INFO and a tiny pyproject."""
    dest.mkdir(parents=True, exist_ok=True)
    ver = _version_str(version)
    base = f"{dist_filename_name(name)}-{ver}"
    path = dest / f"{base}.tar.gz"
    members = {
        f"{base}/PKG-INFO": _metadata_text(name, version, None, ()).encode(),
        f"{base}/pyproject.toml": (f'[project]\nname = "{name}"\nversion = "{ver}"\n').encode(),
    }
    with tarfile.open(path, "w:gz") as tf:
        for arcname, data in members.items():
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mtime = 1735787046
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def wheel_metadata(path: Path) -> bytes:
    """The METADATA bytes of a wheel (or PKG-INFO of an sdist)."""
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as tf:
            for member in tf.getmembers():
                if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                    fh = tf.extractfile(member)
                    if fh is not None:
                        return fh.read()
        raise FileNotFoundError(f"no PKG-INFO in {path}")
    with zipfile.ZipFile(path) as zf:
        for entry in zf.namelist():
            parts = entry.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                return zf.read(entry)
    raise FileNotFoundError(f"no METADATA in {path}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
