"""A PyPI-like PEP 503/691 index (API 1.1) with negotiation, ETags and failure switches."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from ._base import FakeServer, SlowControl, extract_metadata, file_sha256, iso_z, stream_file

__all__ = ["HTML_V1", "JSON_V1", "TEXT_HTML", "FakeSimpleIndex", "SimpleFile", "negotiate"]

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
_LATEST = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}
# Server preference for ties (PyPI offers text/html first).
_OFFERS = (TEXT_HTML, HTML_V1, JSON_V1)


def negotiate(accept: str | None, fmt: str | None = None) -> str | None:
    """Pick the response content type; None means 406.

    ``?format=`` wins over Accept. No Accept header → ``text/html``.
    """
    if fmt is not None:
        fmt = _LATEST.get(fmt, fmt)
        return fmt if fmt in _OFFERS else None
    if not accept or not accept.strip():
        return TEXT_HTML
    best: tuple[float, int, str] | None = None
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        q = 1.0
        for param in pieces[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        media = _LATEST.get(media, media)
        candidates: list[str]
        if media in ("*/*", "application/*"):
            candidates = [o for o in _OFFERS if media == "*/*" or o.startswith("application/")]
        elif media == "text/*":
            candidates = [TEXT_HTML]
        elif media in _OFFERS:
            candidates = [media]
        else:
            continue
        for cand in candidates:
            rank = (q, -_OFFERS.index(cand), cand)
            if best is None or rank[:2] > best[:2]:
                best = rank
    return None if best is None else best[2]


@dataclass
class SimpleFile:
    filename: str
    path: Path
    version: str
    sha256: str
    size: int
    upload_time: datetime
    requires_python: str | None = None
    yanked: bool | str = False
    metadata: bytes | None = None
    metadata_sha256: str | None = None


@dataclass
class _Project:
    name: str
    files: dict[str, SimpleFile] = field(default_factory=dict)
    serial: int = 1


def _version_of(filename: str) -> str:
    if filename.endswith(".whl"):
        return str(parse_wheel_filename(filename)[1])
    return str(parse_sdist_filename(filename)[1])


class FakeSimpleIndex(FakeServer):
    """PyPI-like index: ``/simple/``, ``/simple/<project>/``, ``/files/<filename>``."""

    def __init__(self) -> None:
        super().__init__()
        self.projects: dict[str, _Project] = {}
        # failure switches
        self.down: bool = False
        self.garbage: bool = False
        self.delay: float = 0.0
        self.wrong_hash: set[str] = set()
        self.slow_file: set[str] = set()
        #: Filenames answered with chunked transfer encoding (no Content-Length).
        self.chunked: set[str] = set()
        self.slow = SlowControl()
        self.truncate: set[str] = set()
        self.cache_control: str = "max-age=600"
        self.emit_upload_time_html: bool = True
        self._serial = 0

    # -- state -----------------------------------------------------------
    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def add_file(
        self,
        project: str,
        path: Path,
        *,
        upload_time: datetime | None = None,
        requires_python: str | None = None,
        yanked: bool | str = False,
        with_metadata: bool = True,
        filename: str | None = None,
    ) -> SimpleFile:
        """Publish ``path`` under ``project`` (served under ``filename`` or its own name)."""
        key = canonicalize_name(project)
        proj = self.projects.setdefault(key, _Project(name=project))
        name = filename or path.name
        metadata = extract_metadata(path) if with_metadata else None
        entry = SimpleFile(
            filename=name,
            path=path,
            version=_version_of(name),
            sha256=file_sha256(path),
            size=path.stat().st_size,
            upload_time=upload_time or datetime.now(UTC),
            requires_python=requires_python,
            yanked=yanked,
            metadata=metadata,
            metadata_sha256=hashlib.sha256(metadata).hexdigest() if metadata else None,
        )
        proj.files[name] = entry
        proj.serial = self._next_serial()
        return entry

    def remove_file(self, project: str, filename: str) -> None:
        proj = self.projects[canonicalize_name(project)]
        del proj.files[filename]
        proj.serial = self._next_serial()

    def replace_file(self, project: str, filename: str, new_path: Path) -> SimpleFile:
        """Same filename, new bytes (and a new upload time)."""
        old = self.projects[canonicalize_name(project)].files[filename]
        return self.add_file(
            project,
            new_path,
            requires_python=old.requires_python,
            yanked=old.yanked,
            with_metadata=old.metadata is not None,
            filename=filename,
        )

    def file_url(self, filename: str) -> str:
        return self.url("/files/" + quote(filename))

    # -- app -------------------------------------------------------------
    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/simple", self._redirect_slash)
        app.router.add_get("/simple/", self._root)
        app.router.add_get("/simple/{project}", self._redirect_slash)
        app.router.add_get("/simple/{project}/", self._project)
        app.router.add_get("/files/{filename}", self._file)

    async def _redirect_slash(self, request: web.Request) -> web.StreamResponse:
        project = request.match_info.get("project")
        target = "/simple/" if project is None else f"/simple/{canonicalize_name(project)}/"
        if request.query_string:
            target += "?" + request.query_string
        raise web.HTTPMovedPermanently(target)

    async def _gate(self, request: web.Request) -> str:
        """Common page preamble: down/delay switches and negotiation."""
        if self.down:
            raise web.HTTPServiceUnavailable(text="upstream down")
        if self.delay:
            await asyncio.sleep(self.delay)
        ctype = negotiate(request.headers.get("Accept"), request.query.get("format"))
        if ctype is None:
            raise web.HTTPNotAcceptable(headers={"Vary": "Accept"})
        return ctype

    def _respond(self, request: web.Request, body: bytes, ctype: str) -> web.Response:
        if self.garbage:
            bad = b'{"meta": {"api-version": ' if ctype == JSON_V1 else b"\xff\xfe<a href=\x00\x81"
            return web.Response(body=bad, headers={"Content-Type": ctype, "Vary": "Accept"})
        etag = '"' + hashlib.sha256(body + ctype.encode()).hexdigest()[:32] + '"'
        headers = {
            "Content-Type": ctype if ctype == JSON_V1 else f"{ctype}; charset=utf-8",
            "Vary": "Accept",
            "ETag": etag,
            "Cache-Control": self.cache_control,
        }
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
            if "*" in tags or etag in tags:
                return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    async def _root(self, request: web.Request) -> web.StreamResponse:
        ctype = await self._gate(request)
        names = sorted(self.projects.values(), key=lambda p: canonicalize_name(p.name))
        if ctype == JSON_V1:
            doc = {
                "meta": {"api-version": "1.1", "_last-serial": self._serial},
                "projects": [{"name": p.name, "_last-serial": p.serial} for p in names],
            }
            body = json.dumps(doc).encode()
        else:
            links = "\n".join(
                f'    <a href="/simple/{canonicalize_name(p.name)}/">{html.escape(p.name)}</a>'
                for p in names
            )
            body = (
                "<!DOCTYPE html>\n<html>\n  <head>\n"
                '    <meta name="pypi:repository-version" content="1.1">\n'
                "    <title>Simple index</title>\n  </head>\n  <body>\n"
                f"{links}\n  </body>\n</html>\n"
            ).encode()
        return self._respond(request, body, ctype)

    async def _project(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["project"]
        norm = canonicalize_name(raw)
        if raw != norm:
            target = f"/simple/{norm}/"
            if request.query_string:
                target += "?" + request.query_string
            raise web.HTTPMovedPermanently(target)
        ctype = await self._gate(request)
        proj = self.projects.get(norm)
        if proj is None:
            raise web.HTTPNotFound(text="404 Not Found")
        files = sorted(proj.files.values(), key=lambda f: f.filename)
        if ctype == JSON_V1:
            body = json.dumps(self._project_json(proj, files)).encode()
        else:
            body = self._project_html(proj, files).encode()
        return self._respond(request, body, ctype)

    def _advertised_sha(self, f: SimpleFile) -> str:
        if f.filename in self.wrong_hash:
            return hashlib.sha256(b"wrong:" + f.sha256.encode()).hexdigest()
        return f.sha256

    def _project_json(self, proj: _Project, files: list[SimpleFile]) -> dict[str, object]:
        out: list[dict[str, object]] = []
        for f in files:
            meta: dict[str, str] | bool = (
                {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
            )
            out.append(
                {
                    "filename": f.filename,
                    "url": self.file_url(f.filename),
                    "hashes": {"sha256": self._advertised_sha(f)},
                    "requires-python": f.requires_python,
                    "core-metadata": meta,
                    "data-dist-info-metadata": meta,
                    "yanked": f.yanked,
                    "size": f.size,
                    "upload-time": iso_z(f.upload_time),
                }
            )
        versions = sorted({f.version for f in files})
        return {
            "meta": {"api-version": "1.1", "_last-serial": proj.serial},
            "name": canonicalize_name(proj.name),
            "versions": versions,
            "files": out,
        }

    def _project_html(self, proj: _Project, files: list[SimpleFile]) -> str:
        lines: list[str] = []
        for f in files:
            attrs = [f'href="{self.file_url(f.filename)}#sha256={self._advertised_sha(f)}"']
            if f.requires_python is not None:
                attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
            if f.yanked is not False:
                reason = "" if f.yanked is True else str(f.yanked)
                attrs.append(f'data-yanked="{html.escape(reason)}"')
            if f.metadata_sha256:
                attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
                attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
            if self.emit_upload_time_html:
                attrs.append(f'data-upload-time="{iso_z(f.upload_time)}"')
            lines.append(f"    <a {' '.join(attrs)}>{html.escape(f.filename)}</a><br />")
        title = html.escape(canonicalize_name(proj.name))
        body = "\n".join(lines)
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            '    <meta name="pypi:repository-version" content="1.1">\n'
            f"    <title>Links for {title}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {title}</h1>\n{body}\n  </body>\n</html>\n"
        )

    def _find(self, filename: str) -> SimpleFile | None:
        for proj in self.projects.values():
            if filename in proj.files:
                return proj.files[filename]
        return None

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            raise web.HTTPServiceUnavailable(text="upstream down")
        filename = request.match_info["filename"]
        if filename.endswith(".metadata"):
            entry = self._find(filename.removesuffix(".metadata"))
            if entry is None or entry.metadata is None:
                raise web.HTTPNotFound()
            return web.Response(
                body=entry.metadata,
                content_type="application/octet-stream",
                headers={"ETag": f'"{entry.metadata_sha256}"'},
            )
        entry = self._find(filename)
        if entry is None:
            raise web.HTTPNotFound()
        headers = {
            "ETag": f'"{entry.sha256[:32]}"',
            "Cache-Control": "max-age=365000000, immutable, public",
            "Last-Modified": entry.upload_time.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        return await stream_file(
            request,
            entry.path,
            headers=headers,
            truncate=filename in self.truncate,
            slow=self.slow if filename in self.slow_file else None,
            chunked=filename in self.chunked,
        )
