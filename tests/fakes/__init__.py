"""Faithful fake upstreams (real aiohttp servers on loopback) for nightproxy tests.

Usage with pytest-aiohttp::

    fake = FakeSimpleIndex()
    fake.bind(await aiohttp_server(fake.make_app()))
"""

from ._base import FakeServer, RequestRecord, SlowControl
from .anaconda import AnacondaFile, FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore
from .azure import AzureFile, FakeAzureFeed, FakeBlobHost, shorten_version
from .s3 import AnonymousDenyingS3Proxy, MotoS3, moto_s3
from .simple import FakeSimpleIndex, SimpleFile, negotiate
from .static_tree import FakeCdnHost, FakeStaticTree, StaticFile, tree_project_name

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
