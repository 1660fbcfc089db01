"""Pure (de)serialisation of upstream pages, for persisting last good pages across restarts.

Pages are saved packed (``packed_page``): their records as they are held, compressed, with
the page's validators in a small header. The JSON form is what nightproxy 0.x saved, and what
a fleet's shared store holds.
"""

from __future__ import annotations

import json
import zlib
from array import array
from types import MappingProxyType
from typing import Any

from packaging.utils import canonicalize_name

from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.packed import SEGMENT, PackedFiles, Records
from nightproxy.simple_api.parse import parse_upload_time
from nightproxy.simple_api.render import format_upload_time


def _file_to_dict(f: DistFile) -> dict[str, Any]:
    return {
        "filename": f.filename,
        "url": f.url,
        "upstream": f.upstream,
        "hashes": dict(f.hashes),
        "requires_python": f.requires_python,
        "yanked": f.yanked,
        "size": f.size,
        "upload_time": format_upload_time(f.upload_time) if f.upload_time else None,
        "core_metadata": (
            dict(f.core_metadata) if not isinstance(f.core_metadata, bool) else f.core_metadata
        ),
        "change_marker": f.change_marker,
    }


def _file_from_dict(d: dict[str, Any]) -> DistFile:
    meta = d.get("core_metadata", False)
    return DistFile(
        filename=str(d["filename"]),
        url=str(d["url"]),
        upstream=str(d["upstream"]),
        hashes=MappingProxyType(dict(d.get("hashes") or {})),
        requires_python=d.get("requires_python"),
        yanked=d.get("yanked", False),
        size=d.get("size"),
        upload_time=parse_upload_time(d.get("upload_time")),
        core_metadata=MappingProxyType(dict(meta)) if isinstance(meta, dict) else bool(meta),
        change_marker=d.get("change_marker"),
    )


def page_to_json(page: ProjectPage) -> str:
    return json.dumps(
        {
            "name": page.name,
            "etag": page.etag,
            "last_modified": page.last_modified,
            "files": [_file_to_dict(f) for f in page.files],
        },
        separators=(",", ":"),
    )


def page_from_json(text: str) -> ProjectPage:
    data = json.loads(text)
    return ProjectPage(
        name=canonicalize_name(data["name"]),
        files=tuple(_file_from_dict(f) for f in data["files"]),
        etag=data.get("etag"),
        last_modified=data.get("last_modified"),
    )


def gone_to_json(gone: dict[str, tuple[DistFile, float]]) -> str:
    """Files an upstream stopped listing, with when it did: the keep_missing state."""
    return json.dumps(
        [{"since": since, "file": _file_to_dict(file)} for file, since in gone.values()],
        separators=(",", ":"),
    )


def gone_from_json(text: str) -> dict[str, tuple[DistFile, float]]:
    out: dict[str, tuple[DistFile, float]] = {}
    for entry in json.loads(text):
        file = _file_from_dict(entry["file"])
        out[file.filename] = (file, float(entry["since"]))
    return out


def packed_page(page: ProjectPage) -> bytes:
    """A page, compressed: a JSON header line, the records' ends, the records' text."""
    records = PackedFiles.of(page.files).records
    segments = [segment.encode() for segment in records.segments()]
    header = {
        "name": page.name,
        "etag": page.etag,
        "last_modified": page.last_modified,
        "count": len(records),
        "segments": [len(s) for s in segments],
    }
    packer = zlib.compressobj(1)
    out = [packer.compress(json.dumps(header).encode() + b"\n" + records.ends.tobytes())]
    out.extend(packer.compress(segment) for segment in segments)
    out.append(packer.flush())
    return b"".join(out)


def page_from_packed(body: bytes) -> ProjectPage:
    data = zlib.decompress(body)
    line = data.index(b"\n")
    header = json.loads(data[:line])
    count = int(header["count"])
    ends: array[int] = array("L")
    start = line + 1 + count * ends.itemsize
    ends.frombytes(data[line + 1 : start])
    segments = []
    for size in header["segments"]:
        segments.append(data[start : start + size].decode())
        start += size
    if len(ends) != count or len(segments) != -(-count // SEGMENT):
        raise ValueError("a saved page does not add up")
    return ProjectPage(
        name=canonicalize_name(header["name"]),
        files=PackedFiles(Records(tuple(segments), ends, count)),
        etag=header.get("etag"),
        last_modified=header.get("last_modified"),
    )
