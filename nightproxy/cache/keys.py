"""How a distribution file is named in the proxy's URLs and in the cache."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from nightproxy.cache.layout import is_sha256
from nightproxy.model import DistFile

_MARKER_PREFIX = "u"


def file_key(file: DistFile) -> str:
    """The file's content address.

    Its sha256 where the upstream published one. Otherwise a digest of the upstream, URL and
    the feed's change marker (ETag, Last-Modified or upload time), so that when a feed
    overwrites a filename with new bytes the new listing gets a new key, while a link on an
    older page keeps meaning the bytes it was published with.
    """
    sha = file.sha256
    if sha is not None and is_sha256(sha):
        return sha
    marker = file.change_marker or (file.upload_time.isoformat() if file.upload_time else "")
    token = hashlib.sha256(f"{file.upstream}\n{file.url}\n{marker}".encode()).hexdigest()
    return _MARKER_PREFIX + token[:40]


def is_file_key(value: str) -> bool:
    if is_sha256(value):
        return True
    return (
        len(value) == 41
        and value.startswith(_MARKER_PREFIX)
        and all(c in "0123456789abcdef" for c in value[1:])
    )


def metadata_key(key: str) -> str:
    """Alias under which a file's extracted or fetched METADATA blob is remembered."""
    return f"m:{key}"


def file_path(project: str, key: str, filename: str) -> str:
    """The path of a file relative to the ``/simple/<project>/`` page that links it."""
    return f"../../files/{project}/{key}/{quote(filename, safe='')}"
