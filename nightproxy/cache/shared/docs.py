"""The index's state in the shared store, so that a replica with an empty disk has it too.

- ``pages/<upstream>/<project>.json``: the last good page of an upstream's project and when it
  was fetched (stale-if-error on any replica, also while the upstream is down);
- ``retained/<upstream>/<project>.json``: files the upstream deleted that keep_missing serves;
- ``firstseen/<key>``: when the fleet first saw a file, written once (``If-None-Match: *``), so
  every replica dates a build the same way.

Pages and retained files are whole documents each replica overwrites (any replica's last good
copy is as good as another's); first-seen times are first-writer-wins.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from nightproxy.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
)

PAGES = "pages/"
RETAINED = "retained/"
FIRST_SEEN = "firstseen/"
_MAX_DOC = 64 * 1024 * 1024
#: First-seen lookups of one page run this many at a time.
_PARALLEL = 16


def _name(upstream: str, project: str) -> str:
    return f"{quote(upstream, safe='')}/{quote(project, safe='')}.json"


class SharedDocs:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def _get_json(self, key: str) -> dict[str, object] | None:
        try:
            body, _ = await self.store.get(key, limit=_MAX_DOC)
        except ObjectNotFoundError:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def put_page(self, upstream: str, project: str, fetched_at: float, body: str) -> None:
        doc = json.dumps({"fetched_at": fetched_at, "page": body})
        await self.store.put(
            PAGES + _name(upstream, project), doc.encode(), content_type="application/json"
        )

    async def get_page(self, upstream: str, project: str) -> tuple[float, str] | None:
        data = await self._get_json(PAGES + _name(upstream, project))
        if data is None:
            return None
        fetched_at, page = data.get("fetched_at"), data.get("page")
        if isinstance(fetched_at, int | float) and isinstance(page, str):
            return float(fetched_at), page
        return None

    async def put_retained(self, upstream: str, project: str, body: str) -> None:
        doc = json.dumps({"gone": body})
        await self.store.put(
            RETAINED + _name(upstream, project), doc.encode(), content_type="application/json"
        )

    async def get_retained(self, upstream: str, project: str) -> str | None:
        data = await self._get_json(RETAINED + _name(upstream, project))
        gone = data.get("gone") if data is not None else None
        return gone if isinstance(gone, str) else None

    async def first_seen(self, keys: list[str], now: float) -> dict[str, float]:
        """The fleet's first sighting of each key, recording ``now`` where there is none."""
        limit = asyncio.Semaphore(_PARALLEL)

        async def one(key: str) -> tuple[str, float]:
            async with limit:
                try:
                    await self.store.put(
                        FIRST_SEEN + key,
                        repr(now).encode(),
                        if_none_match=True,
                        content_type="text/plain",
                    )
                    return key, now
                except PreconditionFailedError:
                    body, _ = await self.store.get(FIRST_SEEN + key, limit=64)
                    try:
                        return key, min(float(body), now)
                    except ValueError:
                        return key, now

        return dict(await asyncio.gather(*(one(k) for k in keys)))
