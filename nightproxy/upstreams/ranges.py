"""Byte-range reads of an upstream file, for reading a wheel's metadata without the wheel."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import aiohttp

from nightproxy.upstreams.base import RangeBody
from nightproxy.upstreams.http import Credentials, UpstreamError, describe_url, request

log = logging.getLogger(__name__)


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes FIRST-LAST/TOTAL`` as ``(first, last, total)``; None for anything else.

    An unknown total (``/*``) is None too: a reader of a zip's end needs the file's size.
    """
    if value is None:
        return None
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.strip().partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    result = int(first), int(last), int(total)
    if not result[0] <= result[1] < result[2]:
        return None
    return result


def _strong(etag: str | None) -> bool:
    return etag is not None and not etag.startswith("W/")


class HttpRangeReader:
    """Range reads of one file that all see the same bytes.

    Later reads go straight to where the first one ended up after redirects (a presigned URL
    stays valid for minutes), carry ``If-Range`` with the first read's strong ETag, and must
    report the same total size and ETag. A file replaced between two reads makes the reader
    answer None, never a mix of two files.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        url: str,
        *,
        credentials: Credentials,
        timeout: aiohttp.ClientTimeout,
        signed_headers: Callable[[str], Mapping[str, str]] | None = None,
        encoded: bool = False,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._url = url
        self._credentials = credentials
        self._timeout = timeout
        self._signed_headers = signed_headers
        self._encoded = encoded
        self._etag: str | None = None
        self._total: int | None = None

    async def __call__(self, start: int | None, length: int) -> RangeBody | None:
        spec = f"bytes=-{length}" if start is None else f"bytes={start}-{start + length - 1}"
        headers = {"Range": spec, "Accept-Encoding": "identity"}
        if self._total is not None and _strong(self._etag):
            assert self._etag is not None
            headers["If-Range"] = self._etag
        if self._signed_headers is not None:
            headers.update(self._signed_headers(self._url))
        async with request(
            self._session,
            self._upstream,
            "GET",
            self._url,
            credentials=self._credentials,
            timeout=self._timeout,
            headers=headers,
            encoded=self._encoded,
        ) as response:
            where = describe_url(str(response.url))
            if response.status != 206:
                # 200 (ranges ignored: the body is left unread and the connection dropped),
                # 405, 416, or an error the full download will report properly.
                log.debug("no range read from %s: HTTP %d", where, response.status)
                return None
            parsed = parse_content_range(response.headers.get("Content-Range"))
            if parsed is None:
                return None
            first, last, total = parsed
            expected = max(total - length, 0) if start is None else start
            if first != expected or last != min(expected + length, total) - 1:
                return None
            etag = response.headers.get("ETag")
            if self._total is not None and (total != self._total or etag != self._etag):
                log.info("%s changed between two range reads", where)
                return None
            want = last - first + 1
            if response.content_length is not None and response.content_length != want:
                return None
            try:
                parts: list[bytes] = []
                got = 0
                # One byte more than asked for tells a server that sent too much.
                while got <= want and (part := await response.content.read(want + 1 - got)):
                    parts.append(part)
                    got += len(part)
            except TimeoutError as exc:
                raise UpstreamError(self._upstream, "timed out reading a byte range") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    self._upstream, f"{type(exc).__name__} reading a byte range"
                ) from exc
            if got != want:
                return None
            data = b"".join(parts)
            self._etag = etag
            self._total = total
            # Redirects are done: the next reads skip them (the URL keeps its exact bytes).
            self._url = str(response.url)
            self._encoded = True
            return RangeBody(start=first, data=data, total=total)
