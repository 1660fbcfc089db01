"""``kind: azure``: an Azure Artifacts feed.

HTTP Basic with any username and a PAT as password, sent only to the feed's own origin: files
answer with a 303 to a blob host whose signature is in the query string and which rejects an
``Authorization`` header. Pages are HTML only; the root page lists nothing useful, so the feed
takes no part in ``/simple/``.
"""

from __future__ import annotations

from collections.abc import Collection

import aiohttp
from packaging.utils import NormalizedName

from nightproxy.config import UpstreamConfig
from nightproxy.upstreams.simple import HttpIndexUpstream


class AzureUpstream(HttpIndexUpstream):
    page_accept = "text/html"

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        assert config.url is not None
        super().__init__(config, session, config.url)

    async def fetch_project_list(self) -> Collection[NormalizedName] | None:
        return None
