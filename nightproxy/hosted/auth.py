"""Who may publish what on a hosted feed: upload tokens, per-project rights, admins.

The configuration holds each token only as the sha256 of its secret. A presented token is
hashed and compared with every configured digest in constant time, so neither the answer's
timing nor any record here reveals a secret; an identity is named by a label (the project and
the token's position in the config), which is what pages and logs show as the uploader.

Other token sources (trusted publishing's short-lived minted tokens) plug in with
``add_source``: a token one of them accepts is treated exactly like a configured token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from packaging.utils import NormalizedName

from nightproxy.config import token_digest

#: What ``nightproxy token new`` puts before the random part, so a leaked token is recognisable
#: to secret scanners and people alike.
TOKEN_PREFIX = "npf_"  # noqa: S105 - a prefix, not a secret
#: Bytes of randomness in a new token (256 bits).
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Identity:
    """The holder of a valid token: what it may publish, and how it is named (never the secret)."""

    label: str
    projects: frozenset[NormalizedName] = frozenset()
    admin: bool = False

    def may_publish(self, project: NormalizedName) -> bool:
        """Upload to, and delete from, ``project``."""
        return self.admin or project in self.projects

    def describe_rights(self) -> str:
        """For a 403: which projects this token may publish."""
        if self.admin:
            return "every project of this feed"
        return ", ".join(sorted(self.projects)) or "no project"


class TokenSource(Protocol):
    """Another way to accept a token, such as trusted publishing's minted tokens."""

    async def identify(self, token: str) -> Identity | None:
        """The identity ``token`` stands for, or None when this source does not know it."""


def new_token() -> tuple[str, str]:
    """A fresh random token and the ``sha256:<hex>`` line to paste into the configuration."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return token, f"sha256:{token_digest(token)}"


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    identity: Identity


class FeedAuth:
    """The tokens of one hosted feed."""

    def __init__(
        self,
        publishers: Mapping[NormalizedName, Sequence[str]],
        admins: Sequence[str] = (),
        *,
        sources: Iterable[TokenSource] = (),
    ) -> None:
        entries: list[_Entry] = []
        for project, digests in sorted(publishers.items()):
            for number, digest in enumerate(digests, start=1):
                identity = Identity(
                    label=f"{project} token {number}", projects=frozenset({project})
                )
                entries.append(_Entry(_digest_bytes(digest), identity))
        for number, digest in enumerate(admins, start=1):
            entries.append(
                _Entry(_digest_bytes(digest), Identity(f"admin token {number}", admin=True))
            )
        self._entries = tuple(entries)
        self._sources: list[TokenSource] = list(sources)

    def add_source(self, source: TokenSource) -> None:
        """Accept the tokens ``source`` knows, exactly like configured ones."""
        self._sources.append(source)

    def identify_configured(self, token: str) -> Identity | None:
        """The configured identity of ``token``, compared with every digest whatever matches."""
        presented = bytes.fromhex(token_digest(token))
        matched: list[Identity] = []
        for entry in self._entries:
            # No early exit: the time taken does not depend on which digest matched.
            if hmac.compare_digest(presented, entry.digest):
                matched.append(entry.identity)
        if not matched:
            return None
        # One token listed for several projects, or also as an admin, has all those rights.
        admin = next((i for i in matched if i.admin), None)
        if admin is not None:
            return admin
        projects = frozenset().union(*(i.projects for i in matched))
        return Identity(label=matched[0].label, projects=projects)

    async def identify(self, token: str) -> Identity | None:
        """Who ``token`` is: a configured token first, then each added source."""
        if not token:
            return None
        found = self.identify_configured(token)
        if found is not None:
            return found
        for source in self._sources:
            identity = await source.identify(token)
            if identity is not None:
                return identity
        return None


def _digest_bytes(digest: str) -> bytes:
    """A configured digest as bytes; the config layer has checked it is 64 hex digits."""
    text = digest.removeprefix("sha256:").strip().lower()
    raw = bytes.fromhex(text)
    if len(raw) != hashlib.sha256().digest_size:
        raise ValueError("a token digest is the 64 hex digits of a sha256")
    return raw
