"""The proxy's vocabulary for the layers above the simple API.

What a page says about a file (``DistFile``, ``ProjectPage``, ...) is defined by the simple API
itself (``nightproxy.model``); this module is where upstreams, the cache, the
index and the server take those names from, and where records of the proxy's own domain live.
"""

from __future__ import annotations

from nightproxy.simple_api.records import (
    BuildTimeSource,
    DistFile,
    ProjectList,
    ProjectPage,
    PublishedFile,
)

__all__ = ["BuildTimeSource", "DistFile", "ProjectList", "ProjectPage", "PublishedFile"]
