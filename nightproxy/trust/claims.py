"""Which trusted publisher a verified GitHub Actions token speaks for: pure rules, no I/O.

The signature, issuer, audience and times are checked before these rules run (``verify``);
here only the job's identity claims are compared with the configured publishers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

#: The event GitHub lets run with the base repository's secrets on a fork's code.
FORBIDDEN_EVENT: Final = "pull_request_target"

#: Claims worth showing when a token is refused: enough to see why, and none of them secret.
REPORTED_CLAIMS: Final = (
    "iss",
    "aud",
    "repository",
    "repository_owner",
    "repository_owner_id",
    "job_workflow_ref",
    "ref",
    "event_name",
    "environment",
    "jti",
    "iat",
    "nbf",
    "exp",
)
#: Untrusted claim values are cut to this length before they reach a log line or a client.
MAX_REPORTED_LENGTH: Final = 200


@dataclass(frozen=True, slots=True)
class TrustedPublisher:
    """A GitHub Actions workflow trusted to publish one project of one hosted feed (a
    ``publishers.<project>.github`` entry, with the feed and project it stands under)."""

    feed: str
    project: str
    repository: str  # owner/name
    workflow: str  # the workflow's file name under .github/workflows/
    environment: str | None = None
    #: The owner's numeric GitHub id, when the configuration pins it.
    repository_owner_id: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """What a minted token may do: upload to and delete from one project of one feed."""

    feed: str
    project: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a token was refused: a short ``reason`` (a metrics label), a ``description`` for the
    client and the log, and the claims that decided it."""

    reason: str
    description: str
    claims: Mapping[str, object] = field(default_factory=dict)
    #: The error code in the ``errors`` list the public index answers with.
    code: str = "invalid-publisher"


class TokenRefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.description)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class Match:
    grants: tuple[Grant, ...]
    #: Who publishes, for the uploader column: repository, workflow, environment.
    publisher: str


def reported(
    claims: Mapping[str, object], names: Iterable[str] = REPORTED_CLAIMS
) -> dict[str, object]:
    """The claims among ``names`` that are present, with long or odd values made safe to log."""
    out: dict[str, object] = {}
    for name in names:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            value = type(value).__name__
        elif isinstance(value, str) and len(value) > MAX_REPORTED_LENGTH:
            value = value[:MAX_REPORTED_LENGTH] + "..."
        out[name] = value
    return out


def _owner(repository: str) -> str:
    return repository.partition("/")[0]


def _workflow_matches(job_workflow_ref: str, publisher: TrustedPublisher, refs: set[str]) -> bool:
    # OWNER/REPO/.github/workflows/FILE@REF, with REF the job's ref or commit: GitHub treats
    # owner and repository names without regard to case, file names and refs with it.
    size = len(publisher.repository)
    head, rest = job_workflow_ref[:size], job_workflow_ref[size:]
    if head.casefold() != publisher.repository.casefold():
        return False
    return any(rest == f"/.github/workflows/{publisher.workflow}@{ref}" for ref in refs)


def _environment_matches(environment: str | None, publisher: TrustedPublisher) -> bool:
    if publisher.environment is None:
        return True
    return environment is not None and environment.casefold() == publisher.environment.casefold()


def match_publishers(
    claims: Mapping[str, object], publishers: Iterable[TrustedPublisher]
) -> Match | Refusal:
    """The projects whose publishers this job's claims satisfy, or why there are none.

    A refusal names the furthest rule any publisher of the token's repository passed, so that
    "wrong workflow" is reported rather than "no such repository".
    """
    texts: dict[str, str] = {}
    for name in ("repository", "repository_owner", "job_workflow_ref", "event_name"):
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            return Refusal(
                "missing-claim",
                f"the token's {name!r} claim is missing or not a string",
                reported(claims, (name,)),
            )
        texts[name] = value
    repository, owner = texts["repository"], texts["repository_owner"]
    job_workflow_ref, event = texts["job_workflow_ref"], texts["event_name"]
    stated_environment = claims.get("environment")
    environment = stated_environment if isinstance(stated_environment, str) else None
    refs = {ref for name in ("ref", "sha") if isinstance(ref := claims.get(name), str) and ref}

    if event == FORBIDDEN_EVENT:
        return Refusal(
            "event",
            f"tokens of {FORBIDDEN_EVENT} workflows are refused: they run a fork's code "
            "with the base repository's rights",
            reported(claims, ("repository", "event_name")),
        )
    if _owner(repository).casefold() != owner.casefold():
        return Refusal(
            "owner",
            "the token's repository_owner is not the owner of its repository",
            reported(claims, ("repository", "repository_owner")),
        )
    same_repository = [
        p
        for p in publishers
        if p.repository.casefold() == repository.casefold()
        and _owner(p.repository).casefold() == owner.casefold()
    ]
    if not same_repository:
        return Refusal(
            "repository",
            f"no trusted publisher is configured for repository {repository[:MAX_REPORTED_LENGTH]}",
            reported(claims, ("repository", "repository_owner")),
        )
    owner_id = claims.get("repository_owner_id")
    owner_id = str(owner_id) if isinstance(owner_id, (str, int)) else None
    same_repository = [
        p
        for p in same_repository
        if p.repository_owner_id is None or p.repository_owner_id == owner_id
    ]
    if not same_repository:
        return Refusal(
            "owner-id",
            f"the owner of {repository[:MAX_REPORTED_LENGTH]} is not the account its trusted "
            "publisher was pinned to (repository_owner_id differs)",
            reported(claims, ("repository", "repository_owner", "repository_owner_id")),
        )
    same_workflow = [p for p in same_repository if _workflow_matches(job_workflow_ref, p, refs)]
    if not same_workflow:
        expected = sorted({p.workflow for p in same_repository})
        return Refusal(
            "workflow",
            f"the job's workflow is not a trusted publisher of {repository}: "
            f"expected {' or '.join(expected)} at the job's ref",
            reported(claims, ("repository", "job_workflow_ref", "ref")),
        )
    matched = [p for p in same_workflow if _environment_matches(environment, p)]
    if not matched:
        expected = sorted({p.environment or "" for p in same_workflow})
        return Refusal(
            "environment",
            f"the job's environment is not the one its publisher names ({' or '.join(expected)})",
            reported(claims, ("repository", "job_workflow_ref", "environment")),
        )
    label = f"github:{repository}:{matched[0].workflow}" + (
        f":{environment}" if environment else ""
    )
    return Match(tuple(sorted({Grant(p.feed, p.project) for p in matched})), label)
