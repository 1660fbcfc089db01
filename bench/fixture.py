"""The benchmark's upstream: a static PEP 503 / PEP 691 tree that nginx serves.

Layout under ``root`` (cached between runs; files are only written when missing)::

    simple/index.{html,json}                      project list
    simple/<project>/index.{html,json}[.gz]       per-project pages (links carry #sha256=...)
    files/<project>/<filename>                    the distribution files
    files/fatwheel/fatwheel-1.<r>-...whl           real 20 MB wheels, no .metadata files
    m1/simple/..., m2/simple/..., m3/simple/...   three upstreams of bigproj, 2,000 files each
    many/simple/...                               (startup scenario only) n tiny files

Links are relative (``../../files/...``) so the same tree works under any prefix.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import gzip
import hashlib
import html
import io
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MB = 1024 * 1024
#: Fixed so that the fixture is the same on every run (and so page bytes are cacheable).
BASE_DATE = dt.date(2026, 11, 1)
PLATFORMS = (
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64",
    "cp311-cp311-macosx_11_0_arm64",
    "cp311-cp311-win_amd64",
    "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64",
    "cp312-cp312-macosx_11_0_arm64",
    "cp312-cp312-win_amd64",
)
BIG_FILES = 2000
SMALL_PROJECTS = 24


@dataclass
class FileEntry:
    filename: str
    sha256: str
    size: int
    requires_python: str | None = None


@dataclass
class Project:
    name: str
    files: list[FileEntry] = field(default_factory=list)


@dataclass
class Fixture:
    root: Path
    projects: dict[str, Project]
    reps: int

    def file_path(self, project: str, filename: str) -> Path:
        return self.root / "files" / project / filename

    def entry(self, project: str, filename: str) -> FileEntry:
        for f in self.projects[project].files:
            if f.filename == filename:
                return f
        raise KeyError(filename)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MB):
            h.update(chunk)
    return h.hexdigest()


def _cached_entry(path: Path, requires_python: str | None = None) -> FileEntry:
    """sha256 and size of ``path``, memoised in a ``.sha256`` sidecar beside it."""
    side = path.with_name(path.name + ".sha256")
    size = path.stat().st_size
    if side.exists():
        digest, _, s = side.read_text().partition(" ")
        if s.strip() == str(size):
            return FileEntry(path.name, digest, size, requires_python)
    digest = _sha256_file(path)
    side.write_text(f"{digest} {size}")
    return FileEntry(path.name, digest, size, requires_python)


def _write_if_missing(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _random_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 * MB)
            f.write(os.urandom(n))
            left -= n
    tmp.replace(path)
    side = path.with_name(path.name + ".sha256")
    side.unlink(missing_ok=True)


def build_wheel(name: str, version: str, requires: Iterable[str] = ()) -> bytes:
    """A real, installable pure-Python wheel (METADATA, WHEEL, RECORD and one module)."""
    dist = name.replace("-", "_")
    distinfo = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {
        f"{dist}/__init__.py": f'"""bench fixture {name}."""\n__version__ = "{version}"\n'.encode(),
        f"{distinfo}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name}\nVersion: {version}\nSummary: nightproxy bench fixture\n"
            "Requires-Python: >=3.8\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{distinfo}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: nightproxy-bench\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arc, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([arc, f"sha256={digest}", str(len(data))])
    writer.writerow([f"{distinfo}/RECORD", "", ""])
    files[f"{distinfo}/RECORD"] = record.getvalue().encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, data in files.items():
            info = zipfile.ZipInfo(arc, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


FAT_WHEEL_MB = 20


def fat_wheel_metadata(name: str, version: str) -> bytes:
    return (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: nightproxy bench fixture, a big wheel\nRequires-Dist: numpy>=2\n").encode()


def _fat_wheel(path: Path, name: str, version: str, size: int) -> None:
    """A real wheel of about ``size`` bytes: a stored random payload, then the dist-info, in
    the order wheel builders write them (so METADATA sits near the end of the archive)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    dist = name.replace("-", "_")
    distinfo = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(tmp, "w") as zf:
        info = zipfile.ZipInfo(f"{dist}/payload.bin", date_time=(2026, 1, 1, 0, 0, 0))
        with zf.open(info, "w") as out:
            left = size
            while left:
                n = min(left, 8 * MB)
                out.write(os.urandom(n))
                left -= n
        zf.writestr(f"{distinfo}/METADATA", fat_wheel_metadata(name, version),
                    zipfile.ZIP_DEFLATED)
        zf.writestr(f"{distinfo}/WHEEL",
                    b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    tmp.replace(path)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def _add_bytes(root: Path, project: Project, filename: str, data: bytes) -> None:
    path = root / "files" / project.name / filename
    _write_if_missing(path, data)
    project.files.append(FileEntry(filename, hashlib.sha256(data).hexdigest(), len(data)))


def _nightly_files(project: str, n: int, tag_offset: int = 0) -> list[str]:
    """``n`` nightly wheel filenames: versions 1.0.0.devYYYYMMDD x platform tags."""
    names = []
    per_version = len(PLATFORMS)
    for i in range(n):
        day = BASE_DATE - dt.timedelta(days=i // per_version)
        plat = PLATFORMS[(i + tag_offset) % per_version]
        build = f"-{tag_offset}" if tag_offset else ""
        names.append(f"{project}-1.0.0.dev{day:%Y%m%d}{build}-{plat}.whl")
    return names


def write_pages(tree: Path, projects: Iterable[Project], files_rel: str = "../../files") -> None:
    """PEP 503 HTML + PEP 691 JSON pages (plus precompressed ``.gz``) for ``projects``."""
    projects = sorted(projects, key=lambda p: p.name)
    simple = tree / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    root_html = ["<!DOCTYPE html>\n<html><head><title>Simple index</title></head><body>\n"]
    root_html += [f'<a href="{p.name}/">{p.name}</a>\n' for p in projects]
    root_html.append("</body></html>\n")
    root_json = {"meta": {"api-version": "1.0"}, "projects": [{"name": p.name} for p in projects]}
    _write_page(simple / "index.html", "".join(root_html).encode())
    _write_page(simple / "index.json", json.dumps(root_json).encode())
    for p in projects:
        lines = [
            "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>Links for {p.name}</title></head><body>\n<h1>Links for {p.name}</h1>\n"
        ]
        jfiles = []
        for f in p.files:
            url = f"{files_rel}/{p.name}/{f.filename}"
            rp = ""
            if f.requires_python:
                rp = f' data-requires-python="{html.escape(f.requires_python)}"'
            lines.append(f'<a href="{url}#sha256={f.sha256}"{rp}>{f.filename}</a><br/>\n')
            jf: dict[str, object] = {"filename": f.filename, "url": url,
                                     "hashes": {"sha256": f.sha256}}
            if f.requires_python:
                jf["requires-python"] = f.requires_python
            jfiles.append(jf)
        lines.append("</body></html>\n")
        pdir = simple / p.name
        pdir.mkdir(parents=True, exist_ok=True)
        _write_page(pdir / "index.html", "".join(lines).encode())
        doc = {"meta": {"api-version": "1.0"}, "name": p.name, "files": jfiles}
        _write_page(pdir / "index.json", json.dumps(doc).encode())


def _write_page(path: Path, data: bytes) -> None:
    if not (path.exists() and path.read_bytes() == data):
        path.write_bytes(data)
    gz = path.with_name(path.name + ".gz")
    if not gz.exists() or gz.stat().st_mtime < path.stat().st_mtime:
        gz.write_bytes(gzip.compress(data, 6, mtime=0))


def build(root: Path, reps: int, big: bool, herd_mb: int) -> Fixture:
    """Create (or reuse) the fixture for ``reps`` repetitions."""
    root.mkdir(parents=True, exist_ok=True)
    projects: dict[str, Project] = {}

    def proj(name: str) -> Project:
        return projects.setdefault(name, Project(name))

    # bigproj: 2,000 tiny placeholder files, valid wheel filenames.
    big_p = proj("bigproj")
    for fn in _nightly_files("bigproj", BIG_FILES):
        _add_bytes(root, big_p, fn, f"placeholder {fn}\n".encode())
    for f in big_p.files:
        f.requires_python = ">=3.11"
    # small projects, one with a single file (the "small page").
    _add_bytes(root, proj("onefile"), "onefile-1.0-py3-none-any.whl", build_wheel("onefile", "1.0"))
    for i in range(SMALL_PROJECTS):
        p = proj(f"proj{i:02d}")
        for v in range(1 + i % 3):
            _add_bytes(root, p, f"{p.name}-0.{v}-py3-none-any.whl", build_wheel(p.name, f"0.{v}"))
    # real installable wheels: a warm set, and a cold set per tool and repetition.
    sets = ["warm"] + [f"{tool}cold{r}" for tool in ("pip", "uv") for r in range(reps)]
    for s in sets:
        _add_bytes(root, proj(f"{s}-a"), f"{s}_a-1.0-py3-none-any.whl",
                   build_wheel(f"{s}-a", "1.0"))
        _add_bytes(root, proj(f"{s}-b"), f"{s}_b-1.0-py3-none-any.whl",
                   build_wheel(f"{s}-b", "1.0", [f"{s}-a>=1.0"]))
    # blobs: warm downloads, cold downloads (one per repetition), herds, and 1 GB.
    blobs: list[tuple[str, str, int]] = [
        ("blob", "blob-1.0-py3-none-any.whl", 1 * MB),
        ("blob", "blob-50.0-py3-none-any.whl", 50 * MB),
    ]
    blobs += [("coldblob", f"coldblob-{r}.0-py3-none-any.whl", 50 * MB) for r in range(reps)]
    blobs += [("herdblob", f"herdblob-{herd_mb}.{r}-py3-none-any.whl", herd_mb * MB)
              for r in range(reps)]
    if big:
        blobs.append(("gigablob", "gigablob-1.0-py3-none-any.whl", 1024 * MB))
    for pname, fn, size in blobs:
        path = root / "files" / pname / fn
        _random_file(path, size)
        proj(pname).files.append(_cached_entry(path))
    # real big wheels without .metadata files (one per repetition: each read is cold).
    for r in range(reps):
        path = root / "files" / "fatwheel" / f"fatwheel-1.{r}-py3-none-any.whl"
        _fat_wheel(path, "fatwheel", f"1.{r}", FAT_WHEEL_MB * MB)
        proj("fatwheel").files.append(_cached_entry(path))
    write_pages(root, projects.values())

    # three upstreams of bigproj for the merge scenario (distinct build tags per upstream).
    for u in (1, 2, 3):
        mp = Project("bigproj")
        for fn in _nightly_files("bigproj", BIG_FILES, tag_offset=u):
            data = f"placeholder m{u} {fn}\n".encode()
            _write_if_missing(root / "files" / "bigproj" / fn, data)
            mp.files.append(FileEntry(fn, hashlib.sha256(data).hexdigest(), len(data), ">=3.11"))
        write_pages(root / f"m{u}", [mp], files_rel="../../../files")
    return Fixture(root, projects, reps)


def build_many(root: Path, n: int, per_project: int = 100) -> Path:
    """An upstream at ``<root>/many/simple/`` of ``n`` distinct tiny files (start-up scenario)."""
    tree = root / "many"
    stamp = tree / f".built-{n}"
    if stamp.exists():
        return tree
    projects = []
    for j in range((n + per_project - 1) // per_project):
        p = Project(f"many{j:05d}")
        for k in range(min(per_project, n - j * per_project)):
            fn = f"{p.name}-0.0.{k}-py3-none-any.whl"
            data = f"many {j} {k}\n".encode()
            _write_if_missing(tree / "files" / p.name / fn, data)
            p.files.append(FileEntry(fn, hashlib.sha256(data).hexdigest(), len(data)))
        projects.append(p)
    write_pages(tree, projects)
    stamp.write_text("ok")
    return tree
