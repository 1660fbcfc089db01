"""``kind: simple``: any PEP 503 HTML / PEP 691 JSON index, including static bucket trees."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.listparse import parse_project_list_page
from nightproxy.simple_api.names import ProjectNames
from nightproxy.simple_api.parse import PageParseError, parse_project_page
from nightproxy.upstreams.base import (
    FILE_READ_BUFFER,
    Download,
    FetchResult,
    HttpDownload,
    NotFound,
    NotModified,
    RangeFetch,
    Upstream,
    run_parser,
)
from nightproxy.upstreams.http import (
    Credentials,
    UpstreamError,
    basic_authorization,
    origin_of,
    read_page_body,
    request,
    split_userinfo,
)
from nightproxy.upstreams.ranges import HttpRangeReader

log = logging.getLogger(__name__)

PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)


class HttpIndexUpstream(Upstream):
    """Shared behaviour of the kinds that speak the simple API over HTTP."""

    #: Ask for JSON where the feed may have it; feeds that only speak HTML override this.
    page_accept = PAGE_ACCEPT

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__(config)
        self.session = session
        clean, auth = split_userinfo(url)
        self.base_url = clean if clean.endswith("/") else clean + "/"
        if auth is None and config.username is not None:
            auth = basic_authorization(config.username, config.password or "")
        self.credentials = Credentials.for_upstream(
            frozenset({origin_of(self.base_url)}),
            auth=auth,
            headers=dict(config.headers),
            proxy=config.proxy,
        )
        self.page_timeout = aiohttp.ClientTimeout(total=config.timeout)
        # A big wheel may take minutes: bound the silence between bytes, not the whole transfer.
        self.file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout, sock_read=config.timeout
        )
        #: 429 waits of one page request, all together: no longer than one page may take.
        self.page_retry_budget = config.timeout
        # Project page URLs the last project list gave that are not ``<base>/<canonical>/``:
        # static trees keep dots (``zope.interface/``) and a bucket never redirects.
        self._page_urls: dict[NormalizedName, str] = {}

    def project_url(self, project: NormalizedName) -> str:
        return self._page_urls.get(project) or f"{self.base_url}{project}/"

    def _page_urls_from(self, links: dict[NormalizedName, str]) -> dict[NormalizedName, str]:
        """The list's links we may follow: under this upstream's own URL, nowhere else.

        The list is untrusted: a link to another host, or elsewhere on this one, would send
        this upstream's credentials (or our requests) where its owner did not point them.
        """
        base = urlsplit(self.base_url)
        origin = origin_of(self.base_url)
        urls: dict[NormalizedName, str] = {}
        for name, link in links.items():
            try:
                parts = urlsplit(link)
                same_origin = origin_of(link) == origin
            except ValueError:
                continue
            if not same_origin or not parts.path.startswith(base.path) or parts.query:
                continue
            path = parts.path if parts.path.endswith("/") else parts.path + "/"
            urls[name] = f"{base.scheme}://{base.netloc}{path}"
        return urls

    def _check_status(self, response: aiohttp.ClientResponse, what: str) -> None:
        if response.status in {401, 403}:
            raise UpstreamError(
                self.name,
                f"{what}: HTTP {response.status} (check this upstream's credentials)",
                status=response.status,
            )
        if response.status >= 400:
            raise UpstreamError(
                self.name, f"{what}: HTTP {response.status}", status=response.status
            )

    async def _is_missing_object(self, response: aiohttp.ClientResponse) -> bool:
        """A 403 that means "no such key": a static tree in a bucket without public listing.

        S3 (and GCS's XML API, and CDNs in front of them) answer a missing object with 403
        ``AccessDenied`` when the caller may not list the bucket. Only for an upstream with no
        credentials: with credentials, a 403 is a credentials problem and must say so.
        """
        if self.credentials.auth is not None or any(
            k.lower() == "authorization" for k in self.credentials.headers
        ):
            return False
        try:
            head = await response.content.read(64 * 1024)
        except (TimeoutError, aiohttp.ClientError):
            return False
        return b"AccessDenied" in head

    def parse_page(
        self, body: bytes, content_type: str, url: str, project: NormalizedName
    ) -> ProjectPage:
        return parse_project_page(body, content_type, url, self.name, project)

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        headers = {"Accept": self.page_accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        url = self.project_url(project)
        async with request(
            self.session,
            self.name,
            "GET",
            url,
            credentials=self.credentials,
            timeout=self.page_timeout,
            headers=headers,
            retry_budget=self.page_retry_budget,
        ) as response:
            if response.status == 304:
                return NotModified()
            if response.status in {404, 410}:
                return NotFound()
            if response.status == 403 and await self._is_missing_object(response):
                return NotFound()
            self._check_status(response, f"project page {project}")
            body = await read_page_body(response, self.name, f"the page of {project}")
            final_url = str(response.url)
            content_type = response.headers.get("Content-Type", "")
            page_etag = response.headers.get("ETag")
            page_modified = response.headers.get("Last-Modified")
        try:
            page = await run_parser(
                len(body), lambda: self.parse_page(body, content_type, final_url, project)
            )
        except PageParseError as exc:
            raise UpstreamError(self.name, f"project page {project}: {exc}", page=True) from exc
        return ProjectPage(
            name=page.name, files=page.files, etag=page_etag, last_modified=page_modified
        )

    async def fetch_project_list(self) -> Collection[NormalizedName] | None:
        return await self._fetch_list(None)

    async def probe(self) -> None:
        """A HEAD of the index's root: the list of a public index is tens of megabytes, and any
        answer but a server error shows the upstream is there."""
        async with request(
            self.session,
            self.name,
            "HEAD",
            self.base_url,
            credentials=self.credentials,
            timeout=self.page_timeout,
            retry_budget=self.page_retry_budget,
        ) as response:
            if response.status >= 500:
                raise UpstreamError(
                    self.name, f"HTTP {response.status} on its root", status=response.status
                )

    async def _fetch_list(self, limit: int | None) -> ProjectNames:
        """The project list, read whole up to ``limit`` bytes (None: the page limit); learns
        the page URLs it links."""
        async with request(
            self.session,
            self.name,
            "GET",
            self.base_url,
            credentials=self.credentials,
            timeout=self.page_timeout,
            headers={"Accept": self.page_accept},
            retry_budget=self.page_retry_budget,
        ) as response:
            self._check_status(response, "project list")
            body = await read_page_body(response, self.name, "the project list", limit=limit)
            final_url = str(response.url)
            content_type = response.headers.get("Content-Type", "")

        def parse_list() -> tuple[ProjectNames, dict[NormalizedName, str]]:
            listed = parse_project_list_page(body, content_type, final_url, self.name)
            return listed.names, self._page_urls_from(listed.links)

        try:
            names, self._page_urls = await run_parser(len(body), parse_list)
        except PageParseError as exc:
            raise UpstreamError(self.name, f"project list: {exc}", page=True) from exc
        return names

    @asynccontextmanager
    async def _open(self, url: str) -> AsyncIterator[Download]:
        async with request(
            self.session,
            self.name,
            "GET",
            url,
            credentials=self.credentials,
            timeout=self.file_timeout,
            read_bufsize=FILE_READ_BUFFER,
            headers={"Accept-Encoding": "identity"},
        ) as response:
            self._check_status(response, "file download")
            yield HttpDownload(response, self.name)

    def open_file(self, file: DistFile) -> AbstractAsyncContextManager[Download]:
        return self._open(file.url)

    def open_metadata(self, file: DistFile) -> AbstractAsyncContextManager[Download] | None:
        if file.core_metadata is False:
            return None
        # PEP 658: the metadata lives at the file URL (without fragment) plus ".metadata".
        return self._open(file.url + ".metadata")

    def range_reader(self, file: DistFile) -> RangeFetch | None:
        return HttpRangeReader(
            self.session,
            self.name,
            file.url,
            credentials=self.credentials,
            timeout=self.file_timeout,
            expected_size=file.size,
        )


#: A project a static tree answers 404 for may sit in a folder spelled otherwise
#: (``zope.interface/``): its project list says where. That list is read for a miss at most
#: this often, and only while it is this small: a tree lists a few hundred projects in well
#: under a MiB, while an index of hundreds of thousands is never read for a miss.
RELIST_INTERVAL = 600.0
RELIST_MAX_BYTES = 4 * 1024 * 1024


class SimpleUpstream(HttpIndexUpstream):
    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        assert config.url is not None  # guaranteed by config validation
        super().__init__(config, session, config.url)
        self._relisted_at: float | None = None
        self._relist_lock = asyncio.Lock()

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        result = await super().fetch_project(project, etag=etag, last_modified=last_modified)
        if isinstance(result, NotFound) and project not in self._page_urls:
            await self._relist()
            if project in self._page_urls:
                # Another URL, so the old page's validators do not apply.
                return await super().fetch_project(project)
        return result

    async def _relist(self) -> None:
        """Read the project list again, to learn folders spelled otherwise (not too often)."""
        async with self._relist_lock:
            now = time.monotonic()
            if self._relisted_at is not None and now - self._relisted_at < RELIST_INTERVAL:
                return  # read lately, maybe just now for a miss that held the lock
            self._relisted_at = now
            try:
                await self._fetch_list(RELIST_MAX_BYTES)
            except UpstreamError as exc:
                log.debug("%s: project list not read for a miss: %s", self.name, exc.reason)
