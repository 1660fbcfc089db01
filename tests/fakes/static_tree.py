"""Fake static PEP 503 tree regenerated from a bucket (CDN-style), plus a second CDN host.

Layout (``prefix`` defaults to ``/whl/nightly``)::

    <prefix>/                      project list (hrefs ``_``→``-`` only, names lower-cased)
    <prefix>/<project>/            project page (also ``.../index.html``)
    <prefix>/<filename>            the files (``+`` in a raw path decodes to a space, as S3 does)
    <prefix>/<filename>.metadata   only for files added ``with_metadata=True``

Pages: ``text/html``, ``Cache-Control: no-cache,no-store,must-revalidate``; no
``#sha256``; ``data-dist-info-metadata``/``data-core-metadata`` only where a
``.metadata`` object exists; ``data-upload-time``; a non-distribution anchor; a
``<!--TIMESTAMP n-->`` comment after ``</html>``. Files: ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import html
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from aiohttp import web
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from ._base import FakeServer, extract_metadata, parse_range, stream_file

__all__ = ["FakeCdnHost", "FakeStaticTree", "LinkStyle", "StaticFile", "tree_project_name"]

LinkStyle = Literal["absolute", "root", "relative"]
PAGE_CACHE_CONTROL = "no-cache,no-store,must-revalidate"


def tree_project_name(name: str) -> str:
    """The bucket's partial normalisation: lower-case, ``_`` → ``-`` (dots kept)."""
    return name.lower().replace("_", "-")


def _version_of(filename: str) -> Version:
    if filename.endswith(".whl"):
        return parse_wheel_filename(filename)[1]
    return parse_sdist_filename(filename)[1]


@dataclass
class StaticFile:
    filename: str
    path: Path
    upload_time: datetime
    link: LinkStyle
    metadata: bytes | None = None

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata else None


@dataclass
class _Bucket:
    """Objects shared by the tree host and the CDN host."""

    files: dict[str, StaticFile] = field(default_factory=dict)


def _object_name(request: web.Request, prefix: str) -> str | None:
    """Object name from the RAW path, decoding ``+`` as a space like S3."""
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith(prefix + "/"):
        return None
    return unquote(raw[len(prefix) + 1 :].replace("+", " "))


def _missing(status: int) -> web.HTTPException:
    """S3 behind a CDN: a missing key is 403 AccessDenied unless listing is allowed (404)."""
    if status == 404:
        return web.HTTPNotFound(text="NoSuchKey")
    return web.HTTPForbidden(text="AccessDenied")


async def _serve_object(
    request: web.Request, bucket: _Bucket, prefix: str, missing_status: int = 403
) -> web.StreamResponse:
    name = _object_name(request, prefix)
    if name is None:
        raise web.HTTPNotFound()
    if name.endswith(".metadata"):
        entry = bucket.files.get(name.removesuffix(".metadata"))
        if entry is None or entry.metadata is None:
            raise _missing(missing_status)
        return web.Response(
            body=entry.metadata,
            content_type="binary/octet-stream",
            headers={"Cache-Control": "no-store"},
        )
    entry = bucket.files.get(name)
    if entry is None:
        raise _missing(missing_status)
    size = entry.path.stat().st_size
    etag = '"' + hashlib.md5(entry.path.read_bytes(), usedforsecurity=False).hexdigest() + '"'
    headers = {
        "Cache-Control": "no-store",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": entry.upload_time.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    rng = parse_range(request.headers.get("Range"), size)
    if rng is not None:
        start, stop = rng
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return await stream_file(
            request,
            entry.path,
            headers=headers,
            status=206,
            start=start,
            end=stop,
            content_type="binary/octet-stream",
        )
    return await stream_file(
        request, entry.path, headers=headers, content_type="binary/octet-stream"
    )


class FakeCdnHost(FakeServer):
    """The second ("R2") host: serves the same objects under the same prefix."""

    def __init__(self, prefix: str = "/whl/nightly") -> None:
        super().__init__()
        self.prefix = prefix.rstrip("/")
        self.bucket = _Bucket()
        self.missing_status: int = 403

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get(self.prefix + "/{tail:.+}", self._file)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return await _serve_object(request, self.bucket, self.prefix, self.missing_status)


class FakeStaticTree(FakeServer):
    """The static index host (and origin for root-relative/relative links)."""

    def __init__(
        self,
        cdn: FakeCdnHost | None = None,
        *,
        prefix: str = "/whl/nightly",
        keep_threshold: int = 60,
        timestamp: int | None = None,
    ) -> None:
        super().__init__()
        self.prefix = prefix.rstrip("/")
        self.cdn = cdn if cdn is not None else FakeCdnHost(self.prefix)
        self.cdn.prefix = self.prefix
        self.bucket = self.cdn.bucket  # one bucket, two hosts
        self.keep_threshold = keep_threshold
        self.timestamp = timestamp
        self.projects: dict[str, list[str]] = {}  # tree name -> filenames
        self.xml_root: bool = False
        self.missing_status: int = 403

    # -- state -----------------------------------------------------------
    def add_file(
        self,
        project: str,
        path: Path,
        *,
        link: LinkStyle = "root",
        with_metadata: bool = False,
        upload_time: datetime | None = None,
        filename: str | None = None,
    ) -> StaticFile:
        """Put an object in the bucket and list it on the project page.

        ``link``: ``absolute`` (to the CDN host), ``root`` (``/whl/nightly/...``) or
        ``relative`` (``../<file>``). Re-adding a filename replaces its bytes.
        """
        name = filename or path.name
        entry = StaticFile(
            filename=name,
            path=path,
            upload_time=(upload_time or datetime.now(UTC)).replace(microsecond=0),
            link=link,
            metadata=extract_metadata(path) if with_metadata else None,
        )
        self.bucket.files[name] = entry
        names = self.projects.setdefault(tree_project_name(project), [])
        if name not in names:
            names.append(name)
        return entry

    def replace_file(self, filename: str, new_path: Path) -> None:
        """Stale-CDN style: same filename, new bytes, page unchanged except upload time."""
        old = self.bucket.files[filename]
        old.path = new_path
        old.upload_time = datetime.now(UTC).replace(microsecond=0)
        if old.metadata is not None:
            old.metadata = extract_metadata(new_path)

    def remove_file(self, project: str, filename: str, *, keep_object: bool = False) -> None:
        self.projects[tree_project_name(project)].remove(filename)
        if not keep_object:
            self.bucket.files.pop(filename, None)

    def file_href(self, entry: StaticFile) -> str:
        quoted = quote(entry.filename, safe="")
        if entry.link == "absolute":
            return f"{self.cdn.origin}{self.prefix}/{quoted}"
        if entry.link == "root":
            return f"{self.prefix}/{quoted}"
        return f"../{quoted}"

    # -- app -------------------------------------------------------------
    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get(self.prefix + "/", self._root)
        app.router.add_get(self.prefix + "/index.html", self._root)
        app.router.add_get(self.prefix + "/{project}/", self._project)
        app.router.add_get(self.prefix + "/{project}/index.html", self._project)
        app.router.add_get(self.prefix + "/{tail:.+}", self._file)

    def _page(self, body: str) -> web.Response:
        return web.Response(
            text=body,
            content_type="text/html",
            headers={"Cache-Control": PAGE_CACHE_CONTROL},
        )

    def _trailer(self) -> str:
        ts = self.timestamp if self.timestamp is not None else int(time.time())
        return f"<!--TIMESTAMP {ts}-->\n"

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if self.xml_root:
            return web.Response(
                text=self._xml_listing(), content_type="application/xml", charset="utf-8"
            )
        links = "".join(
            f'    <a href="{quote(n)}/">{html.escape(n)}</a><br/>\n' for n in sorted(self.projects)
        )
        return self._page(
            f"<!DOCTYPE html>\n<html>\n  <body>\n{links}  </body>\n</html>\n" + self._trailer()
        )

    def _xml_listing(self) -> str:
        contents = "".join(
            f"<Contents><Key>{html.escape(self.prefix.lstrip('/') + '/' + f.filename)}</Key>"
            f"<LastModified>{f.upload_time.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
            f"<ETag>&quot;{hashlib.md5(f.path.read_bytes(), usedforsecurity=False).hexdigest()}"
            f"&quot;</ETag><Size>{f.path.stat().st_size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for f in sorted(self.bucket.files.values(), key=lambda f: f.filename)
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>fake-wheels</Name><Prefix></Prefix><Marker></Marker><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        )

    async def _project(self, request: web.Request) -> web.StreamResponse:
        project = request.match_info["project"]
        names = self.projects.get(project)
        if names is None:
            raise _missing(self.missing_status)
        entries = [self.bucket.files[n] for n in names if n in self.bucket.files]
        entries.sort(key=lambda e: (_version_of(e.filename), e.filename), reverse=True)
        entries = sorted(entries[: self.keep_threshold], key=lambda e: e.filename)
        lines: list[str] = []
        for e in entries:
            attrs = f'href="{self.file_href(e)}"'
            if e.metadata_sha256:
                attrs += (
                    f' data-dist-info-metadata="sha256={e.metadata_sha256}"'
                    f' data-core-metadata="sha256={e.metadata_sha256}"'
                )
            attrs += f' data-upload-time="{e.upload_time.strftime("%Y-%m-%dT%H:%M:%SZ")}"'
            lines.append(f"    <a {attrs}>{html.escape(e.filename)}</a><br/>\n")
        lines.append('    <a href="https://example.invalid/docs/">Documentation</a><br/>\n')
        return self._page(
            "<!DOCTYPE html>\n<html>\n  <body>\n"
            f"    <h1>Links for {html.escape(project)}</h1>\n"
            + "".join(lines)
            + "  </body>\n</html>\n"
            + self._trailer()
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return await _serve_object(request, self.bucket, self.prefix, self.missing_status)
