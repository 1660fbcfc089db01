"""Credentials kept out of every string a person may read: logs, errors, ``repr``, ``check``.

These strings end up in terminals, CI logs and bug reports, so the rules live in one place:
user-info and token-like query values of a URL, an anaconda-style ``/t/<token>/`` path segment,
and the fields that hold a secret.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["MASK", "mask_path", "mask_url", "safe_repr", "safe_value"]

MASK: Final = "***"

#: Fields whose values are secrets, or digests of secrets that are no one's business either.
_SECRET_FIELDS: Final = frozenset({"password", "token", "secret_access_key", "tokens", "admins"})
_URL_FIELDS: Final = frozenset({"url", "api_url", "endpoint", "proxy", "issuer"})
_SECRET_QUERY_NAMES: Final = frozenset(
    {
        "sig",
        "signature",
        "token",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "password",
        "secret",
    }
)
# Suffixes catch the vendor variants (access_token, X-Goog-Signature, X-Goog-Credential).
_SECRET_QUERY_SUFFIXES: Final = ("token", "signature", "credential", "secret", "password")


def _is_secret_query_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return lowered in _SECRET_QUERY_NAMES or lowered.endswith(_SECRET_QUERY_SUFFIXES)


def mask_path(path: str) -> str:
    """A URL path with the token of an anaconda.org-style ``/t/<token>/`` prefix masked.

    Private channels carry their token as a path segment, not in the query or the user-info,
    so the rest of the path stays readable (it says which page or file failed).
    """
    segments = path.split("/")
    for i in range(len(segments) - 1):
        if segments[i] == "t" and segments[i + 1]:
            segments[i + 1] = MASK
    return "/".join(segments)


def mask_url(url: str) -> str:
    """``url`` with user-info, a ``/t/<token>/`` path segment and signature/token query values
    replaced by ``***``.

    Meant for logs, so it never raises: a URL too broken to parse is masked entirely.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        # Rewrite pair by pair rather than re-encoding, so the rest of the URL reads as sent.
        pairs = []
        for pair in query.split("&"):
            name, sep, _ = pair.partition("=")
            pairs.append(f"{name}={MASK}" if sep and _is_secret_query_name(name) else pair)
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, mask_path(parts.path), query, parts.fragment))


def safe_value(name: str, value: object) -> object:
    """A field's value fit for display: credentials masked, URLs stripped of user-info."""
    if value is None:
        return None
    if name in _SECRET_FIELDS:
        return MASK
    if name == "headers" and isinstance(value, Mapping):
        return dict.fromkeys(value, MASK)
    if name in _URL_FIELDS and isinstance(value, str):
        return mask_url(value)
    return value


def safe_repr(record: DataclassInstance) -> str:
    """``repr`` of a record holding credentials, each field shown through :func:`safe_value`.

    The generated ``repr`` would print passwords and header tokens.
    """
    shown = ", ".join(
        f"{f.name}={safe_value(f.name, getattr(record, f.name))!r}"
        for f in dataclasses.fields(record)
    )
    return f"{type(record).__name__}({shown})"
