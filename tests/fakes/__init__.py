"""Faithful fake upstreams (real aiohttp servers on loopback) for nightproxy tests.

Usage with pytest-aiohttp::

    fake = FakeSimpleIndex()
    fake.bind(await aiohttp_server(fake.make_app()))
"""

from ._base import FakeServer, RequestRecord, SlowControl
from .anaconda import AnacondaFile, FakeAnacondaAPI, FakeAnacondaChannel, FakeObjectStore
from .simple import FakeSimpleIndex, SimpleFile, negotiate

__all__ = [
    "AnacondaFile",
    "FakeAnacondaAPI",
    "FakeAnacondaChannel",
    "FakeObjectStore",
    "FakeServer",
    "FakeSimpleIndex",
    "RequestRecord",
    "SimpleFile",
    "SlowControl",
    "negotiate",
]
