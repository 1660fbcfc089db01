"""Fake anaconda-style channel: HTML-only simple pages, 302s to a presigned object store.

Three apps:

* ``FakeAnacondaChannel`` - ``/<channel>/simple/...`` and ``/<channel>/label/<l>/simple/...``
* ``FakeObjectStore``     - the presigned-URL host the channel redirects file GETs to
* ``FakeAnacondaAPI``     - ``/package/<owner>/<pkg>`` and ``/release/<owner>/<pkg>/<ver>`` JSON
"""

from __future__ import annotations

import hashlib
import hmac
import html
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ._base import FakeServer, file_sha256, stream_file

__all__ = [
    "AnacondaFile",
    "FakeAnacondaAPI",
    "FakeAnacondaChannel",
    "FakeObjectStore",
]

PRESIGN_EXPIRES = 600
_SECRET = b"fake-object-store-secret"
_ids = itertools.count(0x66FE64D51378CA9BE9B3503C)


def _version_of(filename: str) -> str:
    """The version as written in the filename (anaconda keeps uploads verbatim)."""
    if filename.endswith(".whl"):
        parse_wheel_filename(filename)
        return filename.split("-")[1]
    parse_sdist_filename(filename)
    stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
    return stem.rsplit("-", 1)[1]


def _sign(key: str, amz_date: str, expires: str) -> str:
    return hmac.new(_SECRET, f"{key}\n{amz_date}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _s3_error(status: int, code: str, message: str, key: str = "") -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        + (f"<Key>{html.escape(key)}</Key>" if key else "")
        + "<RequestId>FAKE0REQUEST0ID</RequestId><HostId>ZmFrZQ==</HostId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


@dataclass
class _StoredObject:
    path: Path
    filename: str


class FakeObjectStore(FakeServer):
    """S3-like host that serves presigned object URLs.

    * Signature checked (403 ``SignatureDoesNotMatch``), expiry checked against
      ``now()`` (403 ``AccessDenied`` / "Request has expired").
    * ``missing_object``: filenames whose objects answer 404 ``NoSuchKey``.
    * ``accept_ranges`` (default False): never advertises/serves ranges, matching
      what clients observe behind the channel redirect.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.now: Callable[[], float] = now
        self.objects: dict[str, _StoredObject] = {}
        self.missing_object: set[str] = set()
        self.accept_ranges: bool = False
        self.owner_id = "64774d9554a6f0c49626f52d"

    def put(self, path: Path, filename: str) -> str:
        """Store a new object; returns its key (a fresh id each time)."""
        key = f"{self.owner_id}/{next(_ids):024x}"
        self.objects[key] = _StoredObject(path=path, filename=filename)
        return key

    def presign(self, key: str) -> str:
        obj = self.objects.get(key)
        filename = obj.filename if obj else key.rsplit("/", 1)[-1]
        amz_date = datetime.fromtimestamp(self.now(), UTC).strftime("%Y%m%dT%H%M%SZ")
        expires = str(PRESIGN_EXPIRES)
        query = urlencode(
            {
                "response-content-disposition": f'attachment; filename="{filename}"',
                "response-content-type": "application/octet-stream",
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": "ASIAFAKEFAKEFAKE/"
                + amz_date[:8]
                + "/us-east-1/s3/aws4_request",
                "X-Amz-Date": amz_date,
                "X-Amz-Expires": expires,
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Security-Token": "FAKEsessionTOKEN",
                "X-Amz-Signature": _sign(key, amz_date, expires),
            },
            quote_via=quote,
        )
        return f"{self.origin}/{key}?{query}"

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/{owner}/{obj}", self._get)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.match_info['owner']}/{request.match_info['obj']}"
        q = request.query
        amz_date = q.get("X-Amz-Date", "")
        expires = q.get("X-Amz-Expires", "")
        sig = q.get("X-Amz-Signature", "")
        if not sig:
            return _s3_error(403, "AccessDenied", "Access Denied")
        if not hmac.compare_digest(sig, _sign(key, amz_date, expires)):
            return _s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            deadline = signed_at.timestamp() + int(expires)
        except ValueError:
            return _s3_error(403, "AccessDenied", "Invalid date")
        if self.now() > deadline:
            return _s3_error(403, "AccessDenied", "Request has expired")
        obj = self.objects.get(key)
        if obj is None or obj.filename in self.missing_object or not obj.path.exists():
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.", key)
        headers = {
            "ETag": '"'
            + hashlib.md5(obj.path.read_bytes(), usedforsecurity=False).hexdigest()
            + '"',
            "Content-Disposition": q.get(
                "response-content-disposition", f'attachment; filename="{obj.filename}"'
            ),
            "Last-Modified": datetime.fromtimestamp(obj.path.stat().st_mtime, UTC).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            ),
        }
        if self.accept_ranges:
            headers["Accept-Ranges"] = "bytes"
        return await stream_file(
            request,
            obj.path,
            headers=headers,
            content_type=q.get("response-content-type", "application/octet-stream"),
        )


@dataclass
class AnacondaFile:
    filename: str
    version: str
    path: Path
    key: str
    upload_time: datetime
    sha256: str
    size: int
    labels: set[str] = field(default_factory=lambda: {"main"})


@dataclass
class _Package:
    name: str
    files: dict[str, AnacondaFile] = field(default_factory=dict)


class FakeAnacondaChannel(FakeServer):
    """HTML-only channel. Files added to label ``main`` appear in ``/<ch>/simple/``."""

    def __init__(
        self,
        channel: str,
        store: FakeObjectStore | None = None,
        *,
        with_hashes: bool = False,
        homepage: str = "https://example.invalid/",
    ) -> None:
        super().__init__()
        self.channel = channel
        #: Set: a private channel, served only under ``/t/<token>/``.
        self.token: str | None = None
        self.store = store if store is not None else FakeObjectStore()
        self.with_hashes = with_hashes
        self.homepage = homepage
        self.packages: dict[str, _Package] = {}
        self.project_404: set[str] = set()

    # -- convenience -----------------------------------------------------
    @property
    def missing_object(self) -> set[str]:
        """Filenames listed on pages whose objects 404 (shared with the store)."""
        return self.store.missing_object

    @property
    def now(self) -> Callable[[], float]:
        return self.store.now

    def index_url(self, label: str | None = None) -> str:
        t = f"/t/{self.token}" if self.token else ""
        if label is None:
            return self.url(f"{t}/{self.channel}/simple/")
        return self.url(f"{t}/{self.channel}/label/{label}/simple/")

    # -- state -----------------------------------------------------------
    def add_file(
        self,
        project: str,
        path: Path,
        *,
        label: str = "main",
        labels: set[str] | None = None,
        upload_time: datetime | None = None,
        filename: str | None = None,
    ) -> AnacondaFile:
        """Upload (``--force``): same filename replaces the old file and gets a new object."""
        name = filename or path.name
        pkg = self.packages.setdefault(canonicalize_name(project), _Package(name=project))
        entry = AnacondaFile(
            filename=name,
            version=_version_of(name),
            path=path,
            key=self.store.put(path, name),
            upload_time=upload_time or datetime.fromtimestamp(self.store.now(), UTC),
            sha256=file_sha256(path),
            size=path.stat().st_size,
            labels=set(labels) if labels is not None else {label},
        )
        old = pkg.files.get(name)
        if old is not None:
            self.store.objects.pop(old.key, None)
        pkg.files[name] = entry
        return entry

    def overwrite(
        self, project: str, filename: str, new_path: Path, *, upload_time: datetime | None = None
    ) -> AnacondaFile:
        """Same filename, new bytes, new object key and upload_time."""
        old = self.packages[canonicalize_name(project)].files[filename]
        return self.add_file(
            project, new_path, labels=old.labels, upload_time=upload_time, filename=filename
        )

    def remove_file(self, project: str, filename: str) -> None:
        pkg = self.packages[canonicalize_name(project)]
        entry = pkg.files.pop(filename)
        self.store.objects.pop(entry.key, None)
        if not pkg.files:
            del self.packages[canonicalize_name(project)]

    def delete_version(self, project: str, version: str) -> None:
        """``anaconda remove owner/pkg/version``: all files of that version at once."""
        pkg = self.packages[canonicalize_name(project)]
        want = Version(version)
        for name in [n for n, f in pkg.files.items() if Version(f.version) == want]:
            self.remove_file(project, name)

    def apply_retention(self, keep: int = 5, max_age_days: int = 30) -> list[tuple[str, str]]:
        """Retention job: keep a version only if among the last ``keep`` (API order,
        i.e. upload order) and its newest upload is younger than ``max_age_days``.
        Returns the removed (project, version) pairs."""
        removed: list[tuple[str, str]] = []
        now = datetime.fromtimestamp(self.store.now(), UTC)
        for key, pkg in list(self.packages.items()):
            releases = self._releases(pkg)
            doomed = [v for v, _ in releases[: max(len(releases) - keep, 0)]]
            doomed += [
                v
                for v, files in releases
                if v not in doomed
                and now - max(f.upload_time for f in files) > timedelta(days=max_age_days)
            ]
            for v in doomed:
                self.delete_version(key, v)
                removed.append((pkg.name, v))
        return removed

    @staticmethod
    def _releases(pkg: _Package) -> list[tuple[str, list[AnacondaFile]]]:
        """Versions in API order: ordered by first upload time."""
        by_version: dict[str, list[AnacondaFile]] = {}
        for f in sorted(pkg.files.values(), key=lambda f: f.upload_time):
            by_version.setdefault(f.version, []).append(f)
        return list(by_version.items())

    # -- app -------------------------------------------------------------
    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        # A private channel is reached only through its token, as the first two segments.
        for t in ("", "/t/{token}"):
            r.add_get(t + "/{ch}/simple/", self._root)
            r.add_get(t + "/{ch}/label/{label}/simple/", self._root)
            r.add_get(t + "/{ch}/simple/{project}/", self._project)
            r.add_get(t + "/{ch}/simple/{project}", self._project)
            r.add_get(t + "/{ch}/label/{label}/simple/{project}/", self._project)
            r.add_get(t + "/{ch}/label/{label}/simple/{project}", self._project)
            r.add_get(t + "/{ch}/simple/{project}/{version}/{filename}", self._file)
            r.add_get(t + "/{ch}/label/{label}/simple/{project}/{version}/{filename}", self._file)

    def _check_channel(self, request: web.Request) -> str:
        if request.match_info["ch"].lower() != self.channel.lower():
            raise web.HTTPNotFound(text="channel not found")
        if request.match_info.get("token") != self.token:
            # What the service answers for a private channel without (or with a wrong) token.
            raise web.HTTPNotFound(text="channel not found")
        return request.match_info.get("label", "main")

    def _html(self, body: str) -> web.Response:
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        label = self._check_channel(request)
        base = self._prefix(label)
        names = sorted(
            k for k, p in self.packages.items() if any(label in f.labels for f in p.files.values())
        )
        links = "\n".join(f'    <a href="{base}/{n}/">{n}</a><br/>' for n in names)
        return self._html(
            "<!DOCTYPE html>\n<html>\n  <head>\n    <title>Simple Index</title>\n  </head>\n"
            f"  <body>\n{links}\n  </body>\n</html>\n"
        )

    def _prefix(self, label: str) -> str:
        ch = self.channel.lower()
        t = f"/t/{self.token}" if self.token else ""
        return f"{t}/{ch}/simple" if label == "main" else f"{t}/{ch}/label/{label}/simple"

    async def _project(self, request: web.Request) -> web.StreamResponse:
        label = self._check_channel(request)
        key = canonicalize_name(request.match_info["project"])
        pkg = self.packages.get(key)
        files = [] if pkg is None else [f for f in pkg.files.values() if label in f.labels]
        if key in self.project_404 or not files:
            raise web.HTTPNotFound(text="404 Not Found")
        base = self._prefix(label)
        lines: list[str] = []
        for f in sorted(files, key=lambda f: f.filename):
            href = f"{base}/{key}/{quote(f.version, safe='')}/{quote(f.filename, safe='')}"
            if self.with_hashes:
                href += f"#sha256={f.sha256}"
            lines.append(f'    <a href="{href}">{html.escape(f.filename)}</a><br/>')
        lines.append(f'    <a href="{self.homepage}" rel="homepage">homepage</a><br/>')
        body = "\n".join(lines)
        return self._html(
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f"    <title>Links for {key}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {key}</h1>\n{body}\n  </body>\n</html>\n"
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        label = self._check_channel(request)
        key = canonicalize_name(request.match_info["project"])
        pkg = self.packages.get(key)
        filename = request.match_info["filename"]
        entry = None if pkg is None else pkg.files.get(filename)
        if (
            entry is None
            or label not in entry.labels
            or request.match_info["version"] != entry.version
        ):
            raise web.HTTPNotFound(text="404 Not Found")
        # HEAD gets the same 302 (aiohttp routes HEAD to GET handlers); no Accept-Ranges.
        raise web.HTTPFound(self.store.presign(entry.key))


class FakeAnacondaAPI(FakeServer):
    """JSON API reading the channel's state (owner == channel name)."""

    def __init__(self, channel: FakeAnacondaChannel) -> None:
        super().__init__()
        self.channel = channel
        self.fail: bool = False

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/package/{owner}/{pkg}", self._package)
        app.router.add_get("/release/{owner}/{pkg}/{version}", self._release)

    def _lookup(self, request: web.Request) -> _Package:
        if self.fail:
            raise web.HTTPInternalServerError(text='{"error": "internal"}')
        if request.match_info["owner"].lower() != self.channel.channel.lower():
            raise web.HTTPNotFound(
                text='{"error": "user not found"}', content_type="application/json"
            )
        key = canonicalize_name(request.match_info["pkg"])
        pkg = self.channel.packages.get(key)
        if pkg is None or key in self.channel.project_404:
            raise web.HTTPNotFound(
                text=f'{{"error": "Package {key} not found"}}', content_type="application/json"
            )
        return pkg

    def _file_json(self, pkg: _Package, f: AnacondaFile) -> dict[str, object]:
        owner = self.channel.channel
        basename = f"{canonicalize_name(pkg.name)}/{f.version}/{f.filename}"
        return {
            "basename": basename,
            "version": f.version,
            "size": f.size,
            "sha256": f.sha256,
            "md5": hashlib.md5(f.path.read_bytes(), usedforsecurity=False).hexdigest(),
            "upload_time": f.upload_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00"),
            "full_name": f"{owner}/{canonicalize_name(pkg.name)}/{f.version}/{f.filename}",
            "type": "pypi",
            "distribution_type": "pypi",
            "labels": sorted(f.labels),
            "owner": owner,
            "ndownloads": 0,
            "attrs": {},
            "download_url": f"//api.example.invalid/download/{owner}/{basename}",
        }

    async def _package(self, request: web.Request) -> web.StreamResponse:
        pkg = self._lookup(request)
        owner = self.channel.channel
        releases = self.channel._releases(pkg)
        files = sorted(pkg.files.values(), key=lambda f: f.upload_time)
        name = canonicalize_name(pkg.name)

        def sort_key(v: str) -> tuple[int, Version | str]:
            try:
                return (1, Version(v))
            except InvalidVersion:
                return (0, v)

        versions = [v for v, _ in releases]
        doc = {
            "name": name,
            "owner": {"login": owner},
            "full_name": f"{owner}/{name}",
            "package_types": ["pypi"],
            "summary": "",
            "latest_version": max(versions, key=sort_key) if versions else None,
            "versions": versions,
            "releases": [
                {
                    "version": v,
                    "full_name": f"{owner}/{name}/{v}",
                    "distributions": [f"{name}/{v}/{f.filename}" for f in fs],
                }
                for v, fs in releases
            ],
            "files": [self._file_json(pkg, f) for f in files],
        }
        return web.json_response(doc)

    async def _release(self, request: web.Request) -> web.StreamResponse:
        pkg = self._lookup(request)
        version = request.match_info["version"]
        files = [f for f in pkg.files.values() if f.version == version]
        if not files:
            raise web.HTTPNotFound(
                text='{"error": "release not found"}', content_type="application/json"
            )
        name = canonicalize_name(pkg.name)
        doc = {
            "version": version,
            "full_name": f"{self.channel.channel}/{name}/{version}",
            "distributions": [
                self._file_json(pkg, f) for f in sorted(files, key=lambda f: f.upload_time)
            ],
        }
        return web.json_response(doc)
