"""An upstream's record: the settings every kind shares, and one options record per kind.

A kind's own options live in their own record (``AnacondaOptions``, ``S3Options``, ...) so that
what a kind takes is read in one place. ``UpstreamConfig`` keeps read-only shortcuts to them
(``config.label``, ``config.region``) for the upstream modules, which read them that way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Final, Literal, get_args

from packaging.utils import NormalizedName

from nightproxy.config.masking import safe_repr
from nightproxy.config.retention import RetentionOverride

__all__ = [
    "Addressing",
    "AnacondaOptions",
    "AzureOptions",
    "DirectoryOptions",
    "GithubPublisher",
    "HostedOptions",
    "Publisher",
    "S3Options",
    "SimpleOptions",
    "UpstreamConfig",
    "UpstreamKind",
    "UpstreamOptions",
]

UpstreamKind = Literal["simple", "anaconda", "azure", "s3", "directory", "hosted"]
Addressing = Literal["path", "virtual"]

KINDS: Final[tuple[UpstreamKind, ...]] = get_args(UpstreamKind)
ADDRESSING: Final[tuple[Addressing, ...]] = get_args(Addressing)


@dataclass(frozen=True, slots=True)
class SimpleOptions:
    """``kind: simple`` takes no options of its own."""

    KIND: ClassVar[UpstreamKind] = "simple"


@dataclass(frozen=True, slots=True)
class AnacondaOptions:
    KIND: ClassVar[UpstreamKind] = "anaconda"
    label: str | None = None
    api_url: str = "https://api.anaconda.org"


@dataclass(frozen=True, slots=True, repr=False)
class AzureOptions:
    KIND: ClassVar[UpstreamKind] = "azure"
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return safe_repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class S3Options:
    """Where and how to reach a bucket; the bucket and prefix are the ``s3://`` URL."""

    KIND: ClassVar[UpstreamKind] = "s3"
    endpoint: str | None = None
    addressing: Addressing = "virtual"
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def __repr__(self) -> str:
        return safe_repr(self)


@dataclass(frozen=True, slots=True)
class DirectoryOptions:
    KIND: ClassVar[UpstreamKind] = "directory"
    path: Path


def _empty() -> Mapping[str, str]:
    # A factory, not a shared default: Python 3.11 dataclasses reject unhashable defaults.
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GithubPublisher:
    """A GitHub Actions workflow trusted to publish a project (trusted publishing)."""

    #: ``owner/repo``, as written in the configuration.
    repository: str
    #: The workflow's file name under ``.github/workflows/``, such as ``wheels.yml``.
    workflow: str
    #: The deployment environment the job must run in; None: any.
    environment: str | None = None
    #: GitHub's numeric id of the repository's owner; None: not checked. Pins the publisher
    #: to the account, so that an owner name deleted and registered again by someone else
    #: does not inherit it.
    repository_owner_id: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Publisher:
    """Who may publish one project of a hosted feed."""

    #: The lowercase hex sha256 of each upload token. The tokens themselves are never kept.
    tokens: tuple[str, ...] = ()
    github: tuple[GithubPublisher, ...] = ()

    def __repr__(self) -> str:
        return safe_repr(self)


def _no_publishers() -> Mapping[NormalizedName, Publisher]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, repr=False)
class HostedOptions:
    """A feed this server stores itself and accepts uploads to.

    It lives in a local folder (``path``) or, when the upstream's ``url`` is ``s3://``, in a
    bucket reached as ``s3`` says.
    """

    KIND: ClassVar[UpstreamKind] = "hosted"
    path: Path | None = None
    s3: S3Options | None = None
    #: Whether an upload of an existing filename with other bytes replaces it.
    overwrite: bool = False
    max_file_size: int = 2 * 1024**3
    #: Seconds a deleted file stays restorable before its bytes are removed.
    trash: float = 7 * 86400
    #: By normalized project name.
    publishers: Mapping[NormalizedName, Publisher] = field(default_factory=_no_publishers)
    #: sha256 hex digests of the tokens that may publish and delete any project of the feed.
    admins: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return safe_repr(self)


UpstreamOptions = (
    SimpleOptions | AnacondaOptions | AzureOptions | S3Options | DirectoryOptions | HostedOptions
)


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamConfig:
    name: str
    kind: UpstreamKind
    #: http(s) URL, or ``s3://bucket/prefix/`` (normalized to end in ``/``); None for directory.
    url: str | None = None
    timeout: float = 30.0
    #: Overrides ``index.ttl`` when set.
    ttl: float | None = None
    headers: Mapping[str, str] = field(default_factory=_empty)
    dev_only: bool = False
    retention: RetentionOverride = field(default_factory=RetentionOverride)
    #: An http(s) URL of the outbound HTTP proxy to reach this upstream through, which may
    #: carry credentials; None: the environment's ``HTTPS_PROXY``/``NO_PROXY``.
    proxy: str | None = None
    #: The options of this upstream's kind; its type always matches ``kind``.
    options: UpstreamOptions = SimpleOptions()

    def __post_init__(self) -> None:
        if self.kind != self.options.KIND:
            raise ValueError(
                f"kind {self.kind!r} takes {self.kind.capitalize()}Options, "
                f"not {type(self.options).__name__}"
            )

    def __repr__(self) -> str:
        return safe_repr(self)

    # Shortcuts to the options of the kinds that have them; other kinds read as unset.

    @property
    def label(self) -> str | None:
        return self.options.label if isinstance(self.options, AnacondaOptions) else None

    @property
    def api_url(self) -> str:
        options = self.options
        return (options if isinstance(options, AnacondaOptions) else AnacondaOptions()).api_url

    @property
    def username(self) -> str | None:
        return self.options.username if isinstance(self.options, AzureOptions) else None

    @property
    def password(self) -> str | None:
        return self.options.password if isinstance(self.options, AzureOptions) else None

    @property
    def s3(self) -> S3Options | None:
        """How to reach the bucket of an upstream stored in one (``s3``, or ``hosted`` with an
        ``s3://`` url)."""
        if isinstance(self.options, HostedOptions):
            return self.options.s3
        return self.options if isinstance(self.options, S3Options) else None

    @property
    def endpoint(self) -> str | None:
        return None if self.s3 is None else self.s3.endpoint

    @property
    def addressing(self) -> Addressing:
        return (self.s3 or S3Options()).addressing

    @property
    def region(self) -> str:
        return (self.s3 or S3Options()).region

    @property
    def access_key_id(self) -> str | None:
        return None if self.s3 is None else self.s3.access_key_id

    @property
    def secret_access_key(self) -> str | None:
        return None if self.s3 is None else self.s3.secret_access_key

    @property
    def path(self) -> Path | None:
        """The local folder of an upstream kept on this machine."""
        if isinstance(self.options, DirectoryOptions | HostedOptions):
            return self.options.path
        return None
