"""Fake Azure-Artifacts-style PyPI feed plus the blob host its downloads redirect to.

* ``FakeAzureFeed``: Basic auth (any username, PAT as password), HTML only, absolute
  hrefs on GUID download paths with shortened version segments, ``#sha256`` and
  HTML-escaped ``data-requires-python``; empty root page; HEAD download → 405,
  GET → 303 to the blob host with a SAS query; optional 429 rate limiting.
* ``FakeBlobHost``: SAS-signed GETs only; 401 if any ``Authorization`` header
  arrives; ``Accept-Ranges: bytes``, ETag, Range → 206; optional truncation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from ._base import FakeServer, file_sha256, parse_range, stream_file

__all__ = ["AzureFile", "FakeAzureFeed", "FakeBlobHost", "shorten_version"]

_SAS_SECRET = b"fake-blob-sas-secret"
_blob_ids = itertools.count(0x4F2C11)


def shorten_version(version: str) -> str:
    """Azure's download path segment: trailing ``.0`` release parts dropped.

    ``2.31.0`` → ``2.31``, ``4.0.0`` → ``4``, ``1.20.0.dev2024`` → ``1.20.dev2024``.
    """
    v = Version(version)
    release = list(v.release)
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    out = ""
    if v.epoch:
        out += f"{v.epoch}!"
    out += ".".join(str(p) for p in release)
    if v.pre is not None:
        out += f"{v.pre[0]}{v.pre[1]}"
    if v.post is not None:
        out += f".post{v.post}"
    if v.dev is not None:
        out += f".dev{v.dev}"
    if v.local is not None:
        out += f"+{v.local}"
    return out


def _version_of(filename: str) -> str:
    if filename.endswith(".whl"):
        return str(parse_wheel_filename(filename)[1])
    return str(parse_sdist_filename(filename)[1])


def _sas_sig(blob: str, se: str) -> str:
    mac = hmac.new(_SAS_SECRET, f"{blob}\n{se}\nr".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


@dataclass
class _Blob:
    path: Path
    filename: str
    etag: str


class FakeBlobHost(FakeServer):
    """Blob storage behind SAS URLs.

    Switches: ``truncate_body`` (full Content-Length, connection closed after
    half), ``reject_status`` (status for requests carrying Authorization, 401).
    """

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, _Blob] = {}
        self.truncate_body: bool = False
        self.reject_status: int = 401
        self.now = time.time

    def put(self, path: Path, filename: str) -> str:
        blob_id = f"{next(_blob_ids):08X}{uuid.uuid4().hex[:24].upper()}"
        etag = f'"0x8DDB{hashlib.sha256(path.read_bytes()).hexdigest()[:11].upper()}"'
        self.blobs[blob_id] = _Blob(path=path, filename=filename, etag=etag)
        return blob_id

    def sas_url(self, blob_id: str) -> str:
        blob = self.blobs[blob_id]
        se = (datetime.fromtimestamp(self.now(), UTC) + timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        query = urlencode(
            {
                "sv": "2019-07-07",
                "sr": "b",
                "sig": _sas_sig(blob_id, se),
                "se": se,
                "sp": "r",
                "rscd": f'attachment; filename="{blob.filename}"',
                "P1": str(int(self.now()) + 3600),
                "P4": "fakeP4",
            },
            quote_via=quote,
        )
        return f"{self.origin}/{blob_id}?{query}"

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/{blob}", self._get)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        return web.Response(status=status, text=body, content_type="application/xml")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return self._error(
                self.reject_status,
                "InvalidAuthenticationInfo",
                "Authentication information is not given in the correct format.",
            )
        blob_id = request.match_info["blob"]
        q = request.query
        se = q.get("se", "")
        if not hmac.compare_digest(q.get("sig", ""), _sas_sig(blob_id, se)):
            return self._error(403, "AuthenticationFailed", "Signature did not match.")
        try:
            expiry = datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return self._error(403, "AuthenticationFailed", "Invalid se.")
        if self.now() > expiry.timestamp():
            return self._error(403, "AuthenticationFailed", "Signed expiry time has passed.")
        blob = self.blobs.get(blob_id)
        if blob is None:
            return self._error(404, "BlobNotFound", "The specified blob does not exist.")
        size = blob.path.stat().st_size
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": blob.etag,
            "Content-Disposition": q.get("rscd", "attachment"),
            "Last-Modified": datetime.fromtimestamp(blob.path.stat().st_mtime, UTC).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            ),
            "x-ms-blob-type": "BlockBlob",
        }
        rng = parse_range(request.headers.get("Range"), size)
        if_range = request.headers.get("If-Range")
        if rng is not None and (if_range is None or if_range == blob.etag):
            start, stop = rng
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            return await stream_file(
                request,
                blob.path,
                headers=headers,
                status=206,
                start=start,
                end=stop,
                truncate=self.truncate_body,
            )
        return await stream_file(request, blob.path, headers=headers, truncate=self.truncate_body)


@dataclass
class AzureFile:
    filename: str
    version: str
    path: Path
    sha256: str
    blob_id: str
    requires_python: str | None = None


@dataclass
class _AzurePackage:
    name: str
    files: dict[str, AzureFile] = field(default_factory=dict)


class FakeAzureFeed(FakeServer):
    """Index at ``/<org>[/<project>]/_packaging/<feed>/pypi/simple/``."""

    def __init__(
        self,
        username_ignored: str,
        pat: str,
        blob_host: FakeBlobHost | None = None,
        *,
        org: str = "my-organization",
        project: str | None = None,
        feed: str = "Nightly",
        feed_guid: str = "69bbb63b-ee6d-49c6-9931-58e60e787a3f",
        project_guid: str = "0b4b5c7e-2f4d-4a3b-9a61-7f0f3c1d2e55",
        allow_anonymous: bool = False,
    ) -> None:
        super().__init__()
        del username_ignored  # any username is accepted
        self.pat = pat
        self.blob_host = blob_host if blob_host is not None else FakeBlobHost()
        self.org = org
        self.project = project
        self.feed = feed
        self.feed_guid = feed_guid
        self.project_guid = project_guid
        self.allow_anonymous = allow_anonymous
        self.packages: dict[str, _AzurePackage] = {}
        self._rate_limited = 0
        self._retry_after = 1

    # -- urls ------------------------------------------------------------
    @property
    def index_path(self) -> str:
        scope = f"/{self.org}" + (f"/{self.project}" if self.project else "")
        return f"{scope}/_packaging/{self.feed}/pypi/simple/"

    @property
    def index_url(self) -> str:
        return self.url(self.index_path)

    def _download_prefix(self) -> str:
        scope = f"/{self.org}" + (f"/{self.project_guid}" if self.project else "")
        return f"{scope}/_packaging/{self.feed_guid}/pypi/download"

    def download_url(self, project: str, filename: str) -> str:
        entry = self.packages[canonicalize_name(project)].files[filename]
        return self.url(
            f"{self._download_prefix()}/{canonicalize_name(project)}/"
            f"{quote(shorten_version(entry.version), safe='')}/{quote(filename, safe='')}"
        )

    # -- state -----------------------------------------------------------
    def add_file(
        self, project: str, path: Path, *, requires_python: str | None = None
    ) -> AzureFile:
        """Publish a file. Feeds are immutable: a same-named upload raises (409)."""
        pkg = self.packages.setdefault(canonicalize_name(project), _AzurePackage(name=project))
        if path.name in pkg.files:
            raise ValueError(f"409 Conflict: {path.name} already exists in the feed")
        entry = AzureFile(
            filename=path.name,
            version=_version_of(path.name),
            path=path,
            sha256=file_sha256(path),
            blob_id=self.blob_host.put(path, path.name),
            requires_python=requires_python,
        )
        pkg.files[path.name] = entry
        return entry

    def remove_file(self, project: str, filename: str) -> None:
        del self.packages[canonicalize_name(project)].files[filename]

    def rate_limit_next(self, n: int, retry_after: int = 1) -> None:
        """The next ``n`` feed requests get 429 with Retry-After / X-RateLimit-*."""
        self._rate_limited = n
        self._retry_after = retry_after

    # -- app -------------------------------------------------------------
    def _setup_routes(self, app: web.Application) -> None:
        idx = self.index_path
        app.router.add_get(idx, self._root)
        app.router.add_get(idx + "{project}/", self._project)
        app.router.add_get(idx + "{project}", self._project_noslash)
        app.router.add_route(
            "*", self._download_prefix() + "/{project}/{version}/{filename}", self._download
        )

    def _gate(self, request: web.Request) -> None:
        if self._rate_limited > 0:
            self._rate_limited -= 1
            reset = int(time.time()) + self._retry_after
            raise web.HTTPTooManyRequests(
                headers={
                    "Retry-After": str(self._retry_after),
                    "X-RateLimit-Resource": "ArtifactsPackaging",
                    "X-RateLimit-Delay": "30.000",
                    "X-RateLimit-Limit": "200",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                },
                text="TF400733: The request has been canceled: Request was blocked due to "
                "exceeding usage of resource 'ArtifactsPackaging'.",
            )
        if self.allow_anonymous and "Authorization" not in request.headers:
            return
        if not self._authorized(request.headers.get("Authorization", "")):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="https://feeds.example.invalid/"'},
                text="",
            )

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, sep, password = decoded.partition(":")
        return bool(sep) and hmac.compare_digest(password, self.pat)

    def _html(self, body: str) -> web.Response:
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        self._gate(request)
        return self._html(
            "<!DOCTYPE html><html><head><title>Simple Index</title></head><body>"
            "<h1>Simple Index</h1></body></html>"
        )

    async def _project_noslash(self, request: web.Request) -> web.StreamResponse:
        self._gate(request)
        raise web.HTTPMovedPermanently(request.path + "/")

    async def _project(self, request: web.Request) -> web.StreamResponse:
        self._gate(request)
        key = canonicalize_name(request.match_info["project"])
        pkg = self.packages.get(key)
        if pkg is None or not pkg.files:
            raise web.HTTPNotFound(text="")
        links: list[str] = []
        for f in sorted(pkg.files.values(), key=lambda f: f.filename):
            attrs = f'href="{self.download_url(key, f.filename)}#sha256={f.sha256}"'
            if f.requires_python is not None:
                attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
            links.append(f"<a {attrs}>{html.escape(f.filename)}</a><br>")
        return self._html(
            f"<!DOCTYPE html><html><head><title>Links for {key}</title></head><body>"
            f"<h1>Links for {key}</h1>" + "".join(links) + "</body></html>"
        )

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self._gate(request)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        key = canonicalize_name(request.match_info["project"])
        pkg = self.packages.get(key)
        entry = None if pkg is None else pkg.files.get(request.match_info["filename"])
        if entry is None or request.match_info["version"] != shorten_version(entry.version):
            raise web.HTTPNotFound(text="")
        raise web.HTTPSeeOther(self.blob_host.sas_url(entry.blob_id), text="")
