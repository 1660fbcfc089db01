"""Where an object store is and how to talk to it: the client's own record.

Kept apart from the YAML configuration's records so that the client, the leases and the hosted
feeds' storage can be built from any of them (``cache.shared``, a feed's ``s3://`` storage) and
in tests without a configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

Addressing = Literal["path", "virtual"]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    bucket: str
    #: Every key the client reads or writes lives under this prefix ("" or ending in "/").
    prefix: str = ""
    #: ``http(s)://host[:port]``; AWS's regional endpoint when None.
    endpoint: str | None = None
    region: str = "us-east-1"
    addressing: Addressing = "path"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    #: The outbound HTTP proxy to reach the store through (``user:password@`` sent as
    #: ``Proxy-Authorization``); None leaves it to the environment (``HTTPS_PROXY``,
    #: ``NO_PROXY``), as for every upstream.
    proxy: str | None = field(default=None, repr=False)
    #: Seconds to open a connection; a store that takes longer is down.
    connect_timeout: float = 5.0
    #: Seconds between two reads of a body, and for a whole small request (HEAD, PUT of a
    #: lease, one listing page).
    read_timeout: float = 30.0
    #: Tries of one request when the store answers 5xx, SlowDown or nothing (1 = no retry).
    attempts: int = 4
    #: First backoff between tries, doubled per try (with jitter) up to ``max_backoff``.
    backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")

    @classmethod
    def from_url(cls, url: str, **options: object) -> StoreSettings:
        """Settings for ``s3://bucket/prefix/`` plus keyword ``options``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("expected s3://bucket/prefix/")
        return cls(bucket=parts.netloc, prefix=parts.path.lstrip("/"), **options)  # type: ignore[arg-type]

    @property
    def signed(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    @property
    def base_url(self) -> str:
        """The bucket's URL, without a trailing slash."""
        endpoint = (self.endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        if self.addressing == "virtual":
            ep = urlsplit(endpoint)
            return f"{ep.scheme}://{self.bucket}.{ep.netloc}{ep.path}"
        return f"{endpoint}/{quote(self.bucket, safe='')}"
