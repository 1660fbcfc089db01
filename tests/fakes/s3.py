"""S3 upstream: moto's ThreadedMotoServer plus an aiohttp front that fixes what moto
does not emulate.

What moto 5.2 does (checked):

* ListObjectsV2 with ``max-keys``, ``IsTruncated``, opaque ``NextContinuationToken``
  (1000 keys per page max), quoted ETags, ``"<md5>-N"`` ETags for multipart uploads,
  Range → 206, path-style and ``<bucket>.s3.amazonaws.com`` virtual-host requests.
* Anonymous GET of an object in a private bucket → 403 (with an EMPTY body).

What moto does NOT do, hence :class:`AnonymousDenyingS3Proxy`:

* Anonymous ``ListBucket`` on a private bucket is ALLOWED by moto (real S3: 403
  ``AccessDenied`` XML). The proxy returns 403 AccessDenied XML for any unsigned
  request (no ``Authorization`` header, no ``X-Amz-Signature`` query) to a bucket
  not created with ``public_read=True``.
* moto does not decode a raw ``+`` in the path as a space (real S3 does). The
  proxy rewrites raw ``+`` in the path to ``%20`` before forwarding, so a key with
  ``+`` is only reachable as ``%2B``.
* Virtual-host requests with any ``Host: <bucket>.<anything>`` (for a known bucket)
  are rewritten to path style.

Point clients that must see real S3 semantics at ``proxy.base_url``; boto3 set-up
code can talk to ``moto.endpoint`` directly.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import boto3  # type: ignore[import-untyped]
from aiohttp import web
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
from yarl import URL

from ._base import FakeServer

__all__ = ["AnonymousDenyingS3Proxy", "MotoS3", "moto_s3"]

Body = Path | bytes
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _read(body: Body) -> bytes:
    return body.read_bytes() if isinstance(body, Path) else body


class MotoS3:
    """A moto S3 server on loopback with a boto3 client (creds ``testing``/``testing``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.public_buckets: set[str] = set()
        self.buckets: set[str] = set()
        self._server: ThreadedMotoServer | None = None
        self._client: Any = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> MotoS3:
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def client(self) -> Any:
        """The boto3 S3 client (``Any``: boto3 has no inline types)."""
        if self._client is None:
            raise RuntimeError("MotoS3 not started")
        return self._client

    # -- data ------------------------------------------------------------
    def create_bucket(self, name: str, *, public_read: bool) -> None:
        """Create a bucket; ``public_read`` grants anonymous list + get (ACL public-read)."""
        if public_read:
            self.client.create_bucket(Bucket=name, ACL="public-read")
            self.public_buckets.add(name)
        else:
            self.client.create_bucket(Bucket=name)
            self.public_buckets.discard(name)
        self.buckets.add(name)

    def set_public_read(self, name: str, public_read: bool) -> None:
        self.client.put_bucket_acl(Bucket=name, ACL="public-read" if public_read else "private")
        if public_read:
            self.public_buckets.add(name)
        else:
            self.public_buckets.discard(name)

    def put(self, bucket: str, key: str, body: Body, *, content_type: str | None = None) -> str:
        """Upload one object; returns its (quoted) ETag."""
        extra: dict[str, str] = {}
        if content_type:
            extra["ContentType"] = content_type
        resp = self.client.put_object(Bucket=bucket, Key=key, Body=_read(body), **extra)
        etag: str = resp["ETag"]
        return etag

    def put_many(
        self,
        bucket: str,
        items: Mapping[str, Body] | Iterable[tuple[str, Body]],
        *,
        direct: bool = True,
        workers: int = 8,
    ) -> None:
        """Upload many objects fast.

        ``direct=True`` (default) writes into moto's in-process backend (the server
        thread shares it), ~1000 keys in well under a second; otherwise parallel
        ``PutObject`` calls (slow: moto shares the GIL with the test, ~5-10 ms/key).
        """
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        if direct:
            try:
                backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
                for key, body in pairs:
                    backend.put_object(bucket, key, _read(body))
            except (KeyError, AttributeError, TypeError):
                pass  # moto internals moved: fall back to the HTTP API
            else:
                return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda kv: self.put(bucket, kv[0], kv[1]), pairs):
                pass

    def put_multipart(self, bucket: str, key: str, body: Body, *, part_size: int = 5 << 20) -> str:
        """Multipart upload; ETag is ``"<md5-of-part-md5s>-N"``. Parts except the last
        must be >= 5 MiB (moto enforces the real minimum)."""
        data = _read(body)
        mpu = self.client.create_multipart_upload(Bucket=bucket, Key=key)
        parts = []
        chunks = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
        for number, chunk in enumerate(chunks, start=1):
            resp = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=number, Body=chunk
            )
            parts.append({"ETag": resp["ETag"], "PartNumber": number})
        resp = self.client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts}
        )
        etag: str = resp["ETag"]
        return etag

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return out


@contextmanager
def moto_s3(host: str = "127.0.0.1") -> Iterator[MotoS3]:
    """``with moto_s3() as s3: ...`` (also usable from a pytest fixture via ``yield``)."""
    server = MotoS3(host).start()
    try:
        yield server
    finally:
        server.stop()


def _access_denied(resource: str) -> web.Response:
    request_id = hashlib.sha1(resource.encode(), usedforsecurity=False).hexdigest()[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
        f"<Resource>{resource}</Resource>"
        f"<RequestId>{request_id}"
        "</RequestId><HostId>ZmFrZS1ob3N0LWlk</HostId></Error>"
    )
    return web.Response(status=403, text=body, content_type="application/xml")


class AnonymousDenyingS3Proxy(FakeServer):
    """aiohttp front for a :class:`MotoS3` giving real-S3 anonymous/``+`` semantics.

    Switch ``deny_all_anonymous``: deny unsigned requests even for public buckets.
    """

    def __init__(self, moto: MotoS3) -> None:
        super().__init__()
        self.moto = moto
        self.deny_all_anonymous: bool = False
        self._session: aiohttp.ClientSession | None = None

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._forward)

    def bucket_url(self, bucket: str) -> str:
        return f"{self.origin}/{bucket}"

    def _split(self, request: web.Request) -> tuple[str | None, str]:
        """(bucket, raw path in path-style form)."""
        raw_path, _, _ = request.raw_path.partition("?")
        host = request.host.split(":", 1)[0]
        first = host.split(".", 1)[0]
        if "." in host and first in self.moto.buckets:
            return first, f"/{first}{raw_path}"
        seg = raw_path.lstrip("/").split("/", 1)[0]
        return (seg or None), raw_path

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        bucket, path = self._split(request)
        signed = "Authorization" in request.headers or "X-Amz-Signature" in request.query
        if (
            not signed
            and bucket is not None
            and (self.deny_all_anonymous or bucket not in self.moto.public_buckets)
        ):
            return _access_denied(path)
        # S3 decodes a raw '+' in the path as a space; moto does not.
        path = path.replace("+", "%20")
        qs = request.raw_path.partition("?")[2]
        url = self.moto.endpoint + path + (f"?{qs}" if qs else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.setdefault("Accept-Encoding", "identity")
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        body = await request.read()
        async with self._session.request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    resp.headers.add(k, v)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
