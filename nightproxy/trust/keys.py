"""The issuer's signing keys, fetched with the app's HTTP client and cached.

PyJWT's own ``PyJWKClient`` fetches with blocking urllib; here the discovery document and the
key set come over the app's aiohttp session and only the parsing is PyJWT's (``PyJWKSet``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
import jwt

from nightproxy.trust.claims import Refusal, TokenRefusedError

log = logging.getLogger(__name__)

#: The only signature algorithm accepted, as on the public index.
ALGORITHM = "RS256"
#: Keys are fetched again after this long even if every kid is known (issuers rotate keys).
MAX_AGE = 3600.0
#: An unknown kid forces a refresh, but never more often than this: anyone may send a token,
#: and a made-up kid must not make the issuer a target of our requests.
MIN_REFRESH_INTERVAL = 10.0
#: Discovery documents and key sets are small; anything bigger is not one.
MAX_DOCUMENT_BYTES = 1024**2
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)


class KeysUnavailableError(Exception):
    """The issuer's keys could not be fetched and none are cached."""


class IssuerKeys:
    """The RS256 keys of one issuer by ``kid``, from its ``/.well-known/openid-configuration``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        issuer: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
    ) -> None:
        self.session = session
        self.issuer = issuer
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.monotonic = monotonic
        self.max_age = max_age
        self.min_refresh_interval = min_refresh_interval
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        #: Completed fetches of the key set (for tests and logs).
        self.fetches = 0
        self._lock = asyncio.Lock()

    def _age(self) -> float:
        return float("inf") if self.fetched_at is None else self.monotonic() - self.fetched_at

    async def key_for(self, kid: str) -> jwt.PyJWK:
        """The key ``kid`` names, from the cache or after one refresh; else refused."""
        if self._age() >= self.max_age:
            await self._refresh(min_age=self.max_age)
        key = self.keys.get(kid)
        if key is None:
            await self._refresh(min_age=self.min_refresh_interval)
            key = self.keys.get(kid)
        if key is None:
            raise TokenRefusedError(
                Refusal(
                    "unknown-key",
                    "the token is signed with a key the issuer does not publish",
                    {"kid": kid[:200]},
                    code="invalid-token",
                )
            )
        return key

    async def _refresh(self, *, min_age: float) -> None:
        async with self._lock:
            # Whoever waited for the lock may find the keys fetched meanwhile.
            if self._age() < min_age:
                return
            try:
                keys = await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if not self.keys:
                    raise KeysUnavailableError(
                        f"cannot fetch the keys of {self.issuer}: {exc}"
                    ) from exc
                log.warning("keeping the cached keys of %s: refresh failed: %s", self.issuer, exc)
                # Retry no sooner than a forced refresh would; the old keys still verify.
                self.fetched_at = self.monotonic() - self.max_age + self.min_refresh_interval
                return
            self.keys = keys
            self.fetched_at = self.monotonic()
            self.fetches += 1
            log.info("fetched %d signing keys of %s", len(keys), self.issuer)

    async def _get_json(self, url: str) -> object:
        async with self.session.get(
            url,
            ssl=self.ssl,
            timeout=FETCH_TIMEOUT,
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"{url} answered {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{url} is not JSON: {exc}") from None

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = await self._get_json(discovery_url)
        if not isinstance(discovery, dict):
            raise ValueError(f"{discovery_url} is not a JSON object")  # noqa: TRY004
        if discovery.get("issuer") != self.issuer:
            # OpenID Connect Discovery requires the document to name its issuer exactly.
            raise ValueError(f"{discovery_url} names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _same_scheme(jwks_uri, self.issuer):
            raise ValueError(f"{discovery_url} has no usable jwks_uri")
        return parse_key_set(await self._get_json(jwks_uri))


def _same_scheme(url: str, issuer: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and urlsplit(issuer).scheme == "http")


def parse_key_set(document: object) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document usable for RS256, by ``kid``."""
    if not isinstance(document, Mapping):
        raise ValueError("the key set is not a JSON object")  # noqa: TRY004
    try:
        key_set = jwt.PyJWKSet.from_dict(dict(document))
    except jwt.PyJWKSetError as exc:
        raise ValueError(f"the key set has no usable keys: {exc}") from None
    return {
        key.key_id: key
        for key in key_set.keys
        if key.key_id
        and key.key_type == "RSA"
        and key.algorithm_name == ALGORITHM
        and key.public_key_use in (None, "sig")
    }
