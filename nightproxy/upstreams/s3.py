"""``kind: s3``: an S3-compatible bucket of wheels (AWS, MinIO, R2, GCS's XML API, ...).

The bucket is listed with ListObjectsV2 (following ``NextContinuationToken``) once per ttl and
the listing serves every project: files directly under the prefix or under
``<prefix>/<project>/``, with project names parsed from the filenames by ``packaging``. Each
object's ``LastModified`` is its upload time and its ETag its change marker (multipart ETags are
not MD5s, so no ETag is ever used as a hash). Keys are percent-encoded on the wire, ``+`` as
``%2B``, because S3 decodes a raw ``+`` in a path as a space.

Signed requests use botocore's SigV4 signer: request signing is subtle (canonical URIs, the
payload hash header, clock skew) and botocore is the reference implementation.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.model import DistFile, ProjectPage
from nightproxy.simple_api.filenames import parse_dist_filename
from nightproxy.simple_api.parse import parse_upload_time
from nightproxy.upstreams.base import (
    FILE_READ_BUFFER,
    Download,
    FetchResult,
    HttpDownload,
    NotFound,
    RangeFetch,
    Upstream,
    run_parser,
)
from nightproxy.upstreams.http import (
    Credentials,
    UpstreamError,
    origin_of,
    read_page_body,
    request,
)
from nightproxy.upstreams.ranges import HttpRangeReader
from nightproxy.upstreams.sigv4 import sign_s3

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: A listing is read page by page; a runaway continuation loop must still end.
MAX_LIST_PAGES = 10_000
#: Object sizes fit in 20 decimal digits; int() of a longer string is slow or refused.
_MAX_SIZE_DIGITS = 20


@dataclass(frozen=True, slots=True)
class _Listing:
    projects: dict[NormalizedName, tuple[DistFile, ...]]
    fetched_at: float


def _find(element: ET.Element, name: str) -> str | None:
    found = element.find(_NS + name)
    if found is None:
        found = element.find(name)
    return found.text if found is not None else None


def _etag_of(file: DistFile) -> str | None:
    """The listed ETag (the change marker falls back to LastModified when there is none)."""
    marker = file.change_marker
    return marker if marker is not None and marker.startswith(('"', 'W/"')) else None


class S3Upstream(Upstream):
    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config)
        assert config.url is not None
        self.session = session
        parts = urlsplit(config.url)
        self.bucket = parts.netloc
        self.prefix = parts.path.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        endpoint = (config.endpoint or f"https://s3.{config.region}.amazonaws.com").rstrip("/")
        ep = urlsplit(endpoint)
        if config.addressing == "virtual":
            self.base = f"{ep.scheme}://{self.bucket}.{ep.netloc}{ep.path}"
        else:
            self.base = f"{endpoint}/{quote(self.bucket, safe='')}"
        self.credentials = Credentials.for_upstream(
            frozenset({origin_of(self.base + "/")}),
            auth=None,
            headers=dict(config.headers),
            proxy=config.proxy,
        )
        self.page_timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout, sock_read=config.timeout
        )
        #: 429 waits of one listing request, all together: no longer than one page may take.
        self.page_retry_budget = config.timeout
        self._listing: _Listing | None = None
        self._lock = asyncio.Lock()

    def _signed_headers(self, method: str, url: str) -> dict[str, str]:
        if not (self.config.access_key_id and self.config.secret_access_key):
            return {}
        return sign_s3(
            method,
            url,
            access_key_id=self.config.access_key_id,
            secret_access_key=self.config.secret_access_key,
            region=self.config.region,
        )

    def _sign_get(self, url: str) -> dict[str, str]:
        return self._signed_headers("GET", url)

    def _object_url(self, key: str) -> str:
        return f"{self.base}/{quote(key, safe='/-_.~')}"

    async def _list_page(self, token: str | None) -> ET.Element:
        params = {"list-type": "2", "prefix": self.prefix}
        if token:
            params["continuation-token"] = token
        query = urlencode(sorted(params.items()), quote_via=quote, safe="-_.~")
        url = f"{self.base}/?{query}"
        async with request(
            self.session,
            self.name,
            "GET",
            url,
            credentials=self.credentials,
            timeout=self.page_timeout,
            signer=self._sign_get,
            encoded=True,
            retry_budget=self.page_retry_budget,
        ) as response:
            if response.status in {401, 403}:
                raise UpstreamError(
                    self.name,
                    f"bucket listing denied (HTTP {response.status}): anonymous listing needs "
                    "s3:ListBucket, or configure access_key_id/secret_access_key",
                    status=response.status,
                )
            if response.status != 200:
                raise UpstreamError(
                    self.name, f"bucket listing: HTTP {response.status}", status=response.status
                )
            body = await read_page_body(response, self.name, "the bucket listing")
        try:
            # Parsed by expat, which refuses entity bombs.
            return await run_parser(len(body), lambda: ET.fromstring(body))  # noqa: S314
        except ET.ParseError as exc:
            raise UpstreamError(self.name, "bucket listing is not XML") from exc

    async def _list(self) -> _Listing:
        async with self._lock:
            listing = self._listing
            if listing is not None and time.monotonic() - listing.fetched_at < min(self.ttl, 60.0):
                return listing
            found: dict[NormalizedName, dict[str, DistFile]] = {}
            token: str | None = None
            for _page in range(MAX_LIST_PAGES):
                root = await self._list_page(token)
                for item in root.iter(_NS + "Contents"):
                    self._add(found, item)
                truncated = (_find(root, "IsTruncated") or "false").lower() == "true"
                token = _find(root, "NextContinuationToken")
                if not truncated or not token:
                    break
            listing = _Listing(
                {name: tuple(files.values()) for name, files in found.items()}, time.monotonic()
            )
            self._listing = listing
            return listing

    def _add(self, found: dict[NormalizedName, dict[str, DistFile]], item: ET.Element) -> None:
        key = _find(item, "Key")
        if not key or not key.startswith(self.prefix):
            return
        relative = key[len(self.prefix) :].split("/")
        if len(relative) > 2:
            return
        filename = relative[-1]
        dist = parse_dist_filename(filename)
        if dist is None:
            return
        size_text = _find(item, "Size")
        etag = _find(item, "ETag")
        modified = _find(item, "LastModified")
        file = DistFile(
            filename=filename,
            url=self._object_url(key),
            upstream=self.name,
            hashes=MappingProxyType({}),
            size=int(size_text)
            if size_text
            and len(size_text) <= _MAX_SIZE_DIGITS
            and size_text.isascii()
            and size_text.isdigit()
            else None,
            upload_time=parse_upload_time(modified),
            change_marker=etag or modified,
        )
        found.setdefault(dist.project, {}).setdefault(filename, file)

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        listing = await self._list()
        files = listing.projects.get(project)
        if not files:
            return NotFound()
        return ProjectPage(name=project, files=files)

    async def fetch_project_list(self) -> Collection[NormalizedName] | None:
        return frozenset((await self._list()).projects)

    async def probe(self) -> None:
        """One page of the bucket's listing, not all of it."""
        await self._list_page(None)

    def open_file(self, file: DistFile) -> AbstractAsyncContextManager[Download]:
        return self._open(file.url)

    def range_reader(self, file: DistFile) -> RangeFetch | None:
        return HttpRangeReader(
            self.session,
            self.name,
            file.url,
            credentials=self.credentials,
            timeout=self.file_timeout,
            signer=self._sign_get,
            encoded=True,
            expected_size=file.size,
            # The listing's ETag is the object's: a replaced object shows a new one.
            expected_etag=_etag_of(file),
        )

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
            signer=self._sign_get,
            encoded=True,
        ) as response:
            if response.status != 200:
                raise UpstreamError(
                    self.name, f"object download: HTTP {response.status}", status=response.status
                )
            yield HttpDownload(response, self.name)
