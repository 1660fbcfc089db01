"""Faithful fake upstreams (real aiohttp servers on loopback) for nightproxy tests.

Usage with pytest-aiohttp::

    fake = FakeSimpleIndex()
    fake.bind(await aiohttp_server(fake.make_app()))
"""

from typing import TYPE_CHECKING, Any

from ._base import FakeServer, RequestRecord, SlowControl
from .anaconda import AnacondaFile, FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore
from .azure import AzureFile, FakeAzureFeed, FakeBlobHost, shorten_version
from .simple import FakeSimpleIndex, SimpleFile, negotiate
from .static_tree import FakeCdnHost, FakeStaticTree, StaticFile, tree_project_name

if TYPE_CHECKING:
    from .s3 import AnonymousDenyingS3Proxy, MotoS3, moto_s3

_LAZY_S3 = {"AnonymousDenyingS3Proxy", "MotoS3", "moto_s3"}


def __getattr__(name: str) -> Any:
    """Import the moto/boto3-backed helpers only when asked for (they are slow to import)."""
    if name in _LAZY_S3:
        from . import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnacondaFile",
    "AnonymousDenyingS3Proxy",
    "AzureFile",
    "FakeAnacondaAPI",
    "FakeAnacondaChannel",
    "FakeAzureFeed",
    "FakeBlobHost",
    "FakeCdnHost",
    "FakeObjectStore",
    "FakeServer",
    "FakeSimpleIndex",
    "FakeStaticTree",
    "MotoS3",
    "RequestRecord",
    "SimpleFile",
    "SlowControl",
    "StaticFile",
    "moto_s3",
    "negotiate",
    "shorten_version",
    "tree_project_name",
]
