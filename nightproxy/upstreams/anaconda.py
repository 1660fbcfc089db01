"""``kind: anaconda``: an anaconda.org channel's PyPI-style index.

The channel serves HTML only, with root-relative links, non-file anchors and no upload times;
files answer with a 302 to a presigned object-store URL that expires within minutes (followed at
download time by ``request``, never cached or published). Upload times come from the channel's
JSON API, asked once per page fetch (so at most once per ``ttl``) and optional: a failing API
falls back to the last answer it gave, or to no upload time, never to a failed page. The channel
overwrites filenames in place (``--force`` uploads), so the API's upload time also serves as each
file's change marker, giving a re-uploaded file a new content address; that is why the answer is
never reused beyond the page's own freshness. The API also gives each file's size and sha256,
which the pages lack: they are published, and downloads are verified against the sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from cachetools import LRUCache
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.model import ProjectPage
from nightproxy.simple_api.parse import parse_upload_time
from nightproxy.upstreams.base import FetchResult, NotModified, run_parser
from nightproxy.upstreams.http import (
    Credentials,
    UpstreamError,
    origin_of,
    read_page_body,
    request,
)
from nightproxy.upstreams.simple import HttpIndexUpstream

log = logging.getLogger(__name__)


def channel_index_url(url: str, label: str | None) -> tuple[str, str]:
    """(index URL to read, channel owner) for a channel URL and optional label."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    # A private channel's URL starts with its token: /t/<token>/<channel>/simple/.
    prefix = ""
    if len(segments) >= 3 and segments[0] == "t":
        prefix, segments = f"/t/{segments[1]}", segments[2:]
    if not segments:
        raise ValueError("anaconda url must name a channel: https://<host>/<channel>/simple/")
    owner = segments[0]
    path = f"/{owner}/label/{quote(label, safe='')}/simple/" if label else f"/{owner}/simple/"
    return urlunsplit((parts.scheme, parts.netloc, prefix + path, "", "")), owner


class AnacondaUpstream(HttpIndexUpstream):
    page_accept = "text/html"

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        assert config.url is not None
        index_url, self.owner = channel_index_url(config.url, config.label)
        super().__init__(config, session, index_url)
        self.api_url = config.api_url.rstrip("/")
        self.api_credentials = Credentials.for_upstream(
            frozenset({origin_of(self.api_url + "/")}), auth=None, headers={}, proxy=config.proxy
        )
        # Last good API answer per project: only a fallback for when the API fails. It must not
        # be served while the API works, or an overwritten file would keep its old change marker
        # (and so its old content address) until it expired.
        self._times: LRUCache[NormalizedName, dict[str, _ApiFile]] = LRUCache(maxsize=4096)

    async def fetch_project(
        self, project: NormalizedName, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        previous = self._times.get(project)
        page_task = asyncio.ensure_future(
            super().fetch_project(project, etag=etag, last_modified=last_modified)
        )
        try:
            times = await self._upload_times(project)
            result = await page_task
        except BaseException:
            # Cancelled, or an error we did not foresee: the page fetch must not outlive us.
            page_task.cancel()
            with contextlib.suppress(BaseException):
                await page_task
            raise
        if isinstance(result, NotModified) and times != (previous or {}):
            # The page's bytes did not change but a file was re-uploaded under the same name:
            # the page we hold carries the old change marker, so rebuild it.
            result = await super().fetch_project(project)
        if not isinstance(result, ProjectPage) or not times:
            return result
        files = []
        for file in result.files:
            known = times.get(file.filename)
            if known is None:
                files.append(file)
                continue
            # The channel's pages give no sizes; the API's lets pages carry PEP 700 sizes and
            # lets byte-range reads check they read the file that was listed.
            size = file.size if file.size is not None else known.size
            # Likewise its sha256: downloads are then verified against the channel's own hash
            # instead of being taken as they come.
            hashes = file.hashes
            if "sha256" not in hashes and known.sha256 is not None:
                hashes = MappingProxyType({**hashes, "sha256": known.sha256})
            files.append(
                file.replace(
                    upload_time=known.when,
                    change_marker=known.when.isoformat(),
                    size=size,
                    hashes=hashes,
                )
            )
        return ProjectPage(
            name=result.name,
            files=tuple(files),
            etag=result.etag,
            last_modified=result.last_modified,
        )

    async def _upload_times(self, project: NormalizedName) -> dict[str, _ApiFile]:
        url = f"{self.api_url}/package/{quote(self.owner, safe='')}/{project}"
        try:
            async with request(
                self.session,
                self.name,
                "GET",
                url,
                credentials=self.api_credentials,
                timeout=self.page_timeout,
                headers={"Accept": "application/json"},
                retry_budget=self.page_retry_budget,
            ) as response:
                if response.status != 200:
                    raise UpstreamError(self.name, f"API answered HTTP {response.status}")
                body = await read_page_body(response, self.name, "the channel API's answer")
            times = await run_parser(len(body), lambda: _times_from_package(_load_json(body)))
        except (UpstreamError, ValueError) as exc:
            log.warning(
                "%s: no upload times for %s from the channel API: %s", self.name, project, exc
            )
            return self._times.get(project, {})
        self._times[project] = times
        return times


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except RecursionError as exc:
        # Nested a few hundred thousand deep: hostile, not an API answer.
        raise ValueError("JSON nested too deeply") from exc


def _is_hex_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class _ApiFile:
    """What the channel API says of one file."""

    when: datetime
    size: int | None
    sha256: str | None


def _times_from_package(data: object) -> dict[str, _ApiFile]:
    """filename -> upload time, size and sha256 from the API's ``/package`` document."""
    times: dict[str, _ApiFile] = {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return times
    for entry in files:
        if not isinstance(entry, dict):
            continue
        basename = entry.get("basename") or entry.get("filename")
        when = parse_upload_time(entry.get("upload_time"))
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            size = None
        sha256 = entry.get("sha256")
        if not isinstance(sha256, str) or not _is_hex_sha256(sha256.lower()):
            sha256 = None
        if isinstance(basename, str) and when is not None:
            times[basename.rsplit("/", 1)[-1]] = _ApiFile(
                when, size, sha256.lower() if sha256 else None
            )
    return times
