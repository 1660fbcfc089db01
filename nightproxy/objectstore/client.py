"""An asyncio client for S3-compatible object stores (AWS S3, R2, GCS XML, MinIO, SeaweedFS).

Only what nightproxy's shared tier, leases and hosted feeds need: GET (ranges, streamed), HEAD,
PUT with ``If-None-Match: *`` or ``If-Match: <etag>``, DELETE, ListObjectsV2 (paginated) and
multipart uploads, signed with SigV4 by botocore. Every request has explicit timeouts; 5xx,
SlowDown, 429 and transport failures are retried with jittered exponential backoff (a streamed
GET only before its first byte); what remains is raised as a classified ``StoreError``.

Retrying a conditional PUT whose first answer was lost can report ``PreconditionFailedError``
for a write that in fact succeeded: callers that care (leases) put a nonce in the body and
read it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TypedDict, Unpack
from urllib.parse import quote

import aiohttp
from yarl import URL

from nightproxy.objectstore import wire
from nightproxy.objectstore.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreDeniedError,
    StoreDownError,
    StoreError,
    StoreThrottledError,
)
from nightproxy.objectstore.reader import SMALL_BODY_MAX, ObjectReader
from nightproxy.objectstore.settings import StoreSettings
from nightproxy.objectstore.wire import ObjectInfo, UploadInfo
from nightproxy.upstreams.http import proxy_authorization, split_userinfo
from nightproxy.upstreams.sigv4 import EMPTY_SHA256, sign_s3

#: Bodies above this are hashed for the signature in a thread, off the event loop.
_HASH_INLINE_MAX = 256 * 1024
_SAFE = "-_.~"
_RETRIED_STATUSES = frozenset({500, 502, 503, 504})


class _Parts(TypedDict, total=False):
    query: Mapping[str, str | None] | None
    headers: Mapping[str, str] | None
    body: bytes


#: Told of every request's outcome: None for an answer, the error for a failure of the store.
HealthHook = Callable[[StoreError | None], None]


def _with_metadata(headers: dict[str, str], metadata: Mapping[str, str] | None) -> dict[str, str]:
    for name, value in (metadata or {}).items():
        headers[wire.META + name] = value
    return headers


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class ObjectStore:
    """One bucket and prefix of an S3-compatible store, over the app's ``ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: StoreSettings,
        *,
        on_result: HealthHook | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.on_result = on_result
        self._base = settings.base_url
        self._proxy: str | None = None
        self._proxy_auth: str | None = None
        if settings.proxy is not None:
            self._proxy, self._proxy_auth = split_userinfo(settings.proxy)
        # Small requests end within read_timeout; bodies may take long but never stall.
        self._small_timeout = aiohttp.ClientTimeout(
            total=settings.read_timeout, sock_connect=settings.connect_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )

    # -- plumbing -------------------------------------------------------------------------

    def url(self, key: str | None, query: Mapping[str, str | None] | None = None) -> str:
        """The object's URL (the bucket's for None), percent-encoded as it is signed and sent
        (``+`` as ``%2B``)."""
        url = self._base + "/"
        if key is not None:
            url += quote(self.settings.prefix + key, safe="/" + _SAFE)
        if query:
            url += "?" + "&".join(
                quote(k, safe=_SAFE)
                if v is None
                else f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}"
                for k, v in sorted(query.items())
            )
        return url

    def _report(self, error: StoreError | None) -> None:
        if self.on_result is not None:
            # "Not found" and "precondition failed" are answers: the store is working.
            self.on_result(error if error is not None and error.degrades else None)

    def _backoff(self, attempt: int, error: StoreError | None) -> float:
        base = self.settings.backoff * (4 if isinstance(error, StoreThrottledError) else 1)
        delay = min(self.settings.max_backoff, base * 2 ** (attempt - 1))
        # Jitter so that replicas told to slow down at once do not come back at once.
        return float(delay * random.uniform(0.5, 1.0))  # noqa: S311

    async def _classify(self, response: aiohttp.ClientResponse, what: str) -> StoreError:
        status = response.status
        try:
            body = await response.content.read(64 * 1024) if response.method != "HEAD" else b""
        except (TimeoutError, aiohttp.ClientError) as exc:
            return StoreDownError(
                f"{what}: HTTP {status}, then {type(exc).__name__}", status=status
            )
        code, _message = wire.error_code(body)
        reason = f"{what}: HTTP {status}" + (f" {code}" if code else "")
        if status == 404 and code not in {"NoSuchBucket"}:
            return ObjectNotFoundError(reason, status=status, code=code)
        if status == 412 or (status == 409 and code == "ConditionalRequestConflict"):
            return PreconditionFailedError(reason, status=status, code=code)
        if status in {401, 403}:
            return StoreDeniedError(reason, status=status, code=code)
        if status == 429 or code in {"SlowDown", "Throttling", "RequestLimitExceeded"}:
            return StoreThrottledError(reason, status=status, code=code)
        return StoreError(reason, status=status, code=code)

    @staticmethod
    def _retryable(error: StoreError) -> bool:
        return (
            isinstance(error, StoreDownError | StoreThrottledError)
            or error.status in _RETRIED_STATUSES
        )

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        key: str | None,
        what: str,
        *,
        query: Mapping[str, str | None] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        streaming: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The store's 2xx answer to one request, after retries; anything else raised."""
        url = self.url(key, query)
        if not body:
            payload_hash = EMPTY_SHA256
        elif len(body) > _HASH_INLINE_MAX:
            payload_hash = await asyncio.to_thread(_hash, body)
        else:
            payload_hash = _hash(body)
        timeout = self._stream_timeout if streaming else self._small_timeout
        error: StoreError | None = None
        for attempt in range(max(1, self.settings.attempts)):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, error))
            send = dict(headers or {})
            if self.settings.signed:
                assert self.settings.access_key_id is not None
                assert self.settings.secret_access_key is not None
                send = sign_s3(
                    method,
                    url,
                    access_key_id=self.settings.access_key_id,
                    secret_access_key=self.settings.secret_access_key,
                    region=self.settings.region,
                    headers=send,
                    payload_sha256=payload_hash,
                )
            # After signing: the proxy's credentials are no part of the signed request.
            to_proxy, tunnel_headers = proxy_authorization(self._proxy_auth, url)
            send.update(to_proxy)
            try:
                response = await self.session.request(
                    method,
                    URL(url, encoded=True),
                    headers=send,
                    # aiohttp copies a large bytes body on the loop (and warns): a file-like
                    # object is sent in pieces.
                    data=(io.BytesIO(body) if len(body) > _HASH_INLINE_MAX else body) or None,
                    timeout=timeout,
                    allow_redirects=False,
                    auto_decompress=False,
                    proxy=self._proxy,
                    proxy_headers=tunnel_headers,
                )
            except TimeoutError:
                error = StoreDownError(f"{what}: timed out")
                continue
            except aiohttp.ClientError as exc:
                error = StoreDownError(f"{what}: {type(exc).__name__}")
                continue
            try:
                if 200 <= response.status < 300:
                    self._report(None)
                    yield response
                    return
                error = await self._classify(response, what)
            finally:
                response.release()
            if not self._retryable(error):
                break
        assert error is not None
        self._report(error)
        raise error

    async def _small(
        self, method: str, key: str | None, what: str, **parts: Unpack[_Parts]
    ) -> tuple[bytes, Mapping[str, str]]:
        """A request whose whole answer is small: its body and headers."""
        async with self._exchange(method, key, what, **parts) as response:
            try:
                answer = await ObjectReader(response, wire.info_from_headers("", {}), what).read()
            except StoreError as error:
                self._report(error)
                raise
            return answer, response.headers

    # -- objects --------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        """The object's size and ETag; ``ObjectNotFoundError`` when there is none."""
        _, headers = await self._small("HEAD", key, f"HEAD {key}")
        return wire.info_from_headers(key, headers)

    @asynccontextmanager
    async def open(
        self, key: str, *, start: int = 0, end: int | None = None, if_match: str | None = None
    ) -> AsyncIterator[ObjectReader]:
        """Stream the object, or bytes ``start..end`` (inclusive) of it."""
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
        if if_match is not None:
            headers["If-Match"] = if_match
        what = f"GET {key}"
        async with self._exchange("GET", key, what, headers=headers, streaming=True) as response:
            yield ObjectReader(response, wire.info_from_headers(key, response.headers), what)

    async def get(self, key: str, *, limit: int = SMALL_BODY_MAX) -> tuple[bytes, ObjectInfo]:
        """A small object's bytes and metadata."""
        async with self.open(key) as reader:
            return await reader.read(limit), reader.info

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write the object whole; its new ETag. ``metadata``: user metadata to store with it
        (``ObjectInfo.metadata`` of a later HEAD or GET).

        ``PreconditionFailedError`` when a condition lost: the key exists, or changed.
        """
        headers = _with_metadata({"Content-Type": content_type}, metadata)
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = if_match
        _, answer = await self._small("PUT", key, f"PUT {key}", headers=headers, body=body)
        return answer.get("ETag", "")

    async def copy(
        self,
        source: str,
        key: str,
        *,
        if_match: str | None = None,
        target_if_none_match: bool = False,
        target_if_match: str | None = None,
    ) -> str:
        """Copy object ``source`` to ``key`` inside the store, no bytes through this client;
        the copy's ETag. ``ObjectNotFoundError`` when there is no ``source``;
        ``PreconditionFailedError`` when ``if_match`` is not the source's ETag (any more), or
        a condition on the target (none there yet; still that ETag) does not hold."""
        what = f"CopyObject {source} to {key}"
        headers = {
            "x-amz-copy-source": quote(
                f"/{self.settings.bucket}/{self.settings.prefix}{source}", safe="/" + _SAFE
            )
        }
        if if_match is not None:
            headers["x-amz-copy-source-if-match"] = if_match
        if target_if_none_match:
            headers["If-None-Match"] = "*"
        if target_if_match is not None:
            headers["If-Match"] = target_if_match
        body, _ = await self._small("PUT", key, what, headers=headers)
        # As for CompleteMultipartUpload, S3 may answer 200 and report an error in the body.
        root = await self._parse(body, what)
        if wire.local_name(root) == "Error":
            code = wire.find_text(root, "Code")
            error = StoreError(f"{what}: {code}", status=200, code=code)
            self._report(error)
            raise error
        return wire.find_text(root, "ETag") or ""

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the object (a missing one is not an error, as in S3 itself)."""
        headers = {"If-Match": if_match} if if_match is not None else None
        try:
            await self._small("DELETE", key, f"DELETE {key}", headers=headers)
        except ObjectNotFoundError:
            return

    async def list_objects(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` (relative to the client's), page by page."""
        token: str | None = None
        while True:
            query: dict[str, str | None] = {
                "list-type": "2",
                "prefix": self.settings.prefix + prefix,
                "max-keys": str(page_size),
            }
            if token:
                query["continuation-token"] = token
            elif start_after:
                query["start-after"] = self.settings.prefix + start_after
            body, _ = await self._small("GET", None, f"LIST {prefix}", query=query)
            root = await self._parse(body, f"LIST {prefix}")
            for info in wire.listed_objects(root, self.settings.prefix):
                yield info
            truncated = (wire.find_text(root, "IsTruncated") or "false").lower() == "true"
            token = wire.find_text(root, "NextContinuationToken")
            if not truncated or not token:
                return

    async def _parse(self, body: bytes, what: str) -> ET.Element:
        root = await asyncio.to_thread(wire.parse_xml, body) if len(body) > 65536 else None
        if root is None:
            root = wire.parse_xml(body)
        if root is None:
            error = StoreError(f"{what}: the answer is not XML")
            self._report(error)
            raise error
        return root

    # -- multipart uploads ----------------------------------------------------------------

    async def create_multipart(
        self,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Start a multipart upload (the object gets ``metadata`` when completed); its id."""
        what = f"CreateMultipartUpload {key}"
        headers = _with_metadata({"Content-Type": content_type}, metadata)
        body, _ = await self._small("POST", key, what, query={"uploads": None}, headers=headers)
        root = await self._parse(body, what)
        upload_id = wire.find_text(root, "UploadId")
        if not upload_id:
            raise StoreError(f"{what}: no UploadId in the answer")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (1-based); its ETag, needed to complete."""
        _, headers = await self._small(
            "PUT",
            key,
            f"UploadPart {key} #{number}",
            query={"partNumber": str(number), "uploadId": upload_id},
            body=data,
        )
        etag = headers.get("ETag")
        if not etag:
            raise StoreError(f"UploadPart {key} #{number}: no ETag in the answer")
        return etag

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        etags: Iterable[str],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Make the object appear, whole; its ETag. The conditions are those of ``put``."""
        what = f"CompleteMultipartUpload {key}"
        headers = {"Content-Type": "application/xml"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = if_match
        body, _ = await self._small(
            "POST",
            key,
            what,
            query={"uploadId": upload_id},
            headers=headers,
            body=wire.complete_body(list(etags)),
        )
        # S3 may answer 200 and still report an error in the body, after a long wait.
        root = await self._parse(body, what)
        if wire.local_name(root) == "Error":
            code = wire.find_text(root, "Code")
            error: StoreError = StoreError(f"{what}: {code}", status=200, code=code)
            if code == "PreconditionFailed":
                error = PreconditionFailedError(f"{what}: {code}", status=200, code=code)
            self._report(error)
            raise error
        return wire.find_text(root, "ETag") or ""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts (gone already is fine)."""
        try:
            await self._small(
                "DELETE", key, f"AbortMultipartUpload {key}", query={"uploadId": upload_id}
            )
        except ObjectNotFoundError:
            return

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[UploadInfo]:
        """Multipart uploads under ``prefix`` never completed nor aborted (first page only)."""
        query: dict[str, str | None] = {"uploads": None, "prefix": self.settings.prefix + prefix}
        body, _ = await self._small("GET", None, f"ListMultipartUploads {prefix}", query=query)
        root = await self._parse(body, f"ListMultipartUploads {prefix}")
        for upload in wire.listed_uploads(root, self.settings.prefix):
            yield upload
