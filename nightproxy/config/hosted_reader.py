"""Validation of a ``hosted`` feed's own keys: its storage, upload limits, publishers, admins.

Upload tokens come either from the environment (``${FEED_TOKEN}``) or as ``sha256:<hex>`` of
the secret, so that a configuration kept in a public repository holds no secret. Both forms
are kept only as the sha256 digest; no error ever quotes a token, whichever form it has.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from packaging.utils import NormalizedName

from nightproxy.config.env import Expanded
from nightproxy.config.errors import describe
from nightproxy.config.kinds import GithubPublisher, HostedOptions, Publisher
from nightproxy.config.reader import (
    Node,
    Section,
    read_bool,
    read_duration,
    read_path,
    read_positive_size,
    read_str,
)
from nightproxy.config.sections import project_entries
from nightproxy.config.storage_reader import S3_KEYS, read_s3_options

__all__ = ["HOSTED_KEYS", "read_hosted_options", "read_token", "read_trash", "token_digest"]

HOSTED_KEYS: Final = ("path", "overwrite", "max_file_size", "publishers", "admins", *S3_KEYS)
#: A secret shorter than this is too easy to guess; ``nightproxy token new`` makes 40 or more.
MIN_TOKEN_LENGTH: Final = 16
_DIGEST_PREFIX: Final = "sha256:"
_HEX: Final = frozenset(string.hexdigits)
# GitHub's own rules: an owner is 1-39 letters, digits or single inner hyphens; a repository
# name is letters, digits, '.', '-' and '_', but not '.' or '..'.
_OWNER_RE: Final = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}")
_REPO_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")


def token_digest(secret: str) -> str:
    """The lowercase hex sha256 of a token, as the feed compares presented tokens with it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def read_token(node: Node) -> str:
    """A token as its sha256 hex digest, from ``${VAR}`` or ``sha256:<64 hex digits>``."""
    value = node.value
    if not isinstance(value, str):
        raise node.error(f"expected a token (a string), got {describe(value)}")
    text = value.strip()
    if not text:
        raise node.error("must not be empty")
    if text.lower().startswith(_DIGEST_PREFIX):
        digest = text[len(_DIGEST_PREFIX) :].strip().lower()
        if len(digest) != 64 or not _HEX.issuperset(digest):
            raise node.error("a sha256: token is followed by the 64 hex digits of the digest")
        return digest
    if not isinstance(value, Expanded):
        raise node.error(
            "write a token as ${VAR} (read from the environment) or as sha256:<hex> of it "
            "(`nightproxy token new` prints both): a token written in the file can be read "
            "by anyone who can read the file"
        )
    if len(text) < MIN_TOKEN_LENGTH:
        raise node.error(f"a token must be at least {MIN_TOKEN_LENGTH} characters long")
    return token_digest(str(value))


def _read_tokens(node: Node) -> tuple[str, ...]:
    if not isinstance(node.value, list):
        raise node.error(f"expected a list of tokens, got {describe(node.value)}")
    # dict.fromkeys: the same token twice grants nothing more, in the order written.
    return tuple(dict.fromkeys(read_token(item) for item in node.items()))


def _read_repository(node: Node) -> str:
    text = read_str(node).strip()
    owner, slash, repo = text.partition("/")
    if (
        not slash
        or _OWNER_RE.fullmatch(owner) is None
        or _REPO_RE.fullmatch(repo) is None
        or repo in (".", "..")
    ):
        raise node.error("expected owner/repo, such as scikit-learn/scikit-learn")
    return text


def _read_workflow(node: Node) -> str:
    text = read_str(node).strip()
    if "/" in text or "\\" in text or not text.endswith((".yml", ".yaml")):
        raise node.error(
            "expected the workflow's file name under .github/workflows/, such as wheels.yml"
        )
    return text


def _read_owner_id(node: Node) -> str:
    # GitHub's ids are numbers; YAML reads them as int unless quoted, and the token carries
    # them as strings.
    value = node.value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str):
        text = value.strip()
    if text is None or not text.isdigit() or not text.isascii():
        raise node.error(
            f"expected the owner's numeric GitHub id, such as 365630, got {describe(value)}"
        )
    return text


def _read_github(node: Node) -> tuple[GithubPublisher, ...]:
    if not isinstance(node.value, list):
        raise node.error(
            "expected a list of {repository, workflow, environment} entries, "
            f"got {describe(node.value)}"
        )
    publishers: list[GithubPublisher] = []
    for item in node.items():
        entry = Section(item)
        entry.only(("repository", "workflow", "environment", "repository_owner_id"))
        publishers.append(
            GithubPublisher(
                repository=_read_repository(entry.require("repository")),
                workflow=_read_workflow(entry.require("workflow")),
                environment=entry.read("environment", lambda n: read_str(n).strip(), None),
                repository_owner_id=entry.read("repository_owner_id", _read_owner_id, None),
            )
        )
    return tuple(publishers)


def _read_publishers(section: Section) -> Mapping[NormalizedName, Publisher]:
    publishers: dict[NormalizedName, Publisher] = {}
    for name, node in project_entries(section):
        entry = Section(node)
        entry.only(("tokens", "github"))
        publisher = Publisher(
            tokens=entry.read("tokens", _read_tokens, ()),
            github=entry.read("github", _read_github, ()),
        )
        if not publisher.tokens and not publisher.github:
            raise node.error("names no tokens and no github publisher: nobody could publish it")
        publishers[name] = publisher
    return MappingProxyType(publishers)


def read_hosted_options(
    section: Section, name: str, url: str | None, base: Path, trash: float | None
) -> HostedOptions:
    """The options of hosted feed ``name``, stored in a bucket when ``url`` is set.

    ``trash`` is the feed's ``retention.trash`` in seconds, if given.
    """
    if url is not None and section.has("path"):
        raise section.error_at(
            "path", "give path (a local folder) or url (s3://bucket/prefix/), not both"
        )
    if url is None:
        for key in ("proxy", *S3_KEYS):
            if section.has(key):
                raise section.error_at(
                    key, "is only used with url: s3://... (this feed is in a local folder)"
                )
    defaults = HostedOptions()
    return HostedOptions(
        path=None
        if url is not None
        else section.read("path", lambda n: read_path(n, base), base / "feeds" / name),
        s3=None if url is None else read_s3_options(section),
        overwrite=section.read("overwrite", read_bool, defaults.overwrite),
        max_file_size=section.read("max_file_size", read_positive_size, defaults.max_file_size),
        trash=defaults.trash if trash is None else trash,
        publishers=_read_publishers(section.section("publishers")),
        admins=section.read("admins", _read_tokens, ()),
    )


def read_trash(section: Section) -> float | None:
    """``retention.trash`` of a hosted feed, in seconds (0: deleted files go at once)."""
    return section.read("trash", read_duration, None)
