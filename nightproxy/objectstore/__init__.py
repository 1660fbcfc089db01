"""A client for S3-compatible object stores, and the coordination built on conditional writes.

Sits above ``upstreams`` (it signs with the same SigV4 code) and below ``cache`` and the hosted
feeds, which keep their shared state in a store through it.
"""

from nightproxy.objectstore.client import ObjectStore
from nightproxy.objectstore.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreDeniedError,
    StoreDownError,
    StoreError,
    StoreThrottledError,
)
from nightproxy.objectstore.reader import ObjectReader
from nightproxy.objectstore.settings import StoreSettings
from nightproxy.objectstore.wire import ObjectInfo, UploadInfo

__all__ = [
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectReader",
    "ObjectStore",
    "PreconditionFailedError",
    "StoreDeniedError",
    "StoreDownError",
    "StoreError",
    "StoreSettings",
    "StoreThrottledError",
    "UploadInfo",
]
