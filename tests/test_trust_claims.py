"""The pure rules that match a verified job token's claims to trusted publishers."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nightproxy.trust.claims import (
    Grant,
    Match,
    Refusal,
    TrustedPublisher,
    match_publishers,
    reported,
)

owners = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,12}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,12}", fullmatch=True)
workflows = st.from_regex(r"[A-Za-z0-9_-]{1,10}\.ya?ml", fullmatch=True)
environments = st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)
refs = st.from_regex(r"refs/(heads|tags)/[A-Za-z0-9._/-]{1,16}", fullmatch=True)


@st.composite
def publishers(draw: st.DrawFn) -> TrustedPublisher:
    repository = f"{draw(owners)}/{draw(names)}"
    environment = draw(st.none() | environments)
    return TrustedPublisher("community", "demo", repository, draw(workflows), environment)


def claims_for(publisher: TrustedPublisher, job_ref: str, **overrides: Any) -> dict[str, Any]:
    """What GitHub signs for a job of ``publisher``'s workflow on ``job_ref``."""
    claims: dict[str, Any] = {
        "repository": publisher.repository,
        "repository_owner": publisher.repository.partition("/")[0],
        "job_workflow_ref": (
            f"{publisher.repository}/.github/workflows/{publisher.workflow}@{job_ref}"
        ),
        "ref": job_ref,
        "sha": "f" * 40,
        "event_name": "push",
    }
    if publisher.environment is not None:
        claims["environment"] = publisher.environment
    claims.update(overrides)
    return claims


def refusal_reason(result: Match | Refusal) -> str | None:
    return result.reason if isinstance(result, Refusal) else None


@given(publishers(), refs)
def test_the_publishers_own_job_is_granted_its_project(
    publisher: TrustedPublisher, ref: str
) -> None:
    """A job of the configured repository, workflow and environment gets that project."""
    result = match_publishers(claims_for(publisher, ref), [publisher])
    assert isinstance(result, Match)
    assert result.grants == (Grant("community", "demo"),)


@given(publishers(), refs)
def test_repository_and_owner_match_without_regard_to_case(
    publisher: TrustedPublisher, ref: str
) -> None:
    """GitHub names are case-insensitive: a token spelling the repository otherwise matches."""
    claims = claims_for(publisher, ref)
    claims["repository"] = publisher.repository.swapcase()
    claims["repository_owner"] = claims["repository_owner"].upper()
    claims["job_workflow_ref"] = claims["job_workflow_ref"].replace(
        publisher.repository, publisher.repository.lower(), 1
    )
    assert isinstance(match_publishers(claims, [publisher]), Match)


@given(publishers(), publishers(), refs)
def test_another_repositorys_job_is_refused(
    publisher: TrustedPublisher, other: TrustedPublisher, ref: str
) -> None:
    """A job of any other repository is refused, naming the repository as the reason."""
    if other.repository.casefold() == publisher.repository.casefold():
        return
    result = match_publishers(claims_for(other, ref), [publisher])
    assert refusal_reason(result) == "repository"


@given(publishers(), workflows, refs)
def test_another_workflow_of_the_repository_is_refused(
    publisher: TrustedPublisher, workflow: str, ref: str
) -> None:
    """Only the named workflow file may publish: another workflow of the same repository not."""
    if workflow == publisher.workflow:
        return
    claims = claims_for(publisher, ref)
    claims["job_workflow_ref"] = f"{publisher.repository}/.github/workflows/{workflow}@{ref}"
    assert refusal_reason(match_publishers(claims, [publisher])) == "workflow"


@given(publishers(), refs, refs)
def test_a_workflow_ref_at_another_ref_than_the_jobs_is_refused(
    publisher: TrustedPublisher, ref: str, other_ref: str
) -> None:
    """``job_workflow_ref`` must end in the job's own ``ref`` (or ``sha``)."""
    if ref == other_ref:
        return
    claims = claims_for(publisher, ref, ref=other_ref)
    assert refusal_reason(match_publishers(claims, [publisher])) == "workflow"


@given(publishers(), refs)
def test_pull_request_target_is_always_refused(publisher: TrustedPublisher, ref: str) -> None:
    """``pull_request_target`` runs a fork's code with the repository's rights: refused."""
    claims = claims_for(publisher, ref, event_name="pull_request_target")
    assert refusal_reason(match_publishers(claims, [publisher])) == "event"


@given(publishers(), environments, refs)
def test_a_named_environment_must_match(
    publisher: TrustedPublisher, environment: str, ref: str
) -> None:
    """When the publisher names an environment, a job in another one (or none) is refused."""
    if publisher.environment is None:
        return
    if environment.casefold() != publisher.environment.casefold():
        claims = claims_for(publisher, ref, environment=environment)
        assert refusal_reason(match_publishers(claims, [publisher])) == "environment"
    without = claims_for(publisher, ref)
    del without["environment"]
    assert refusal_reason(match_publishers(without, [publisher])) == "environment"


@given(publishers(), st.none() | environments, refs)
def test_no_environment_named_means_any(
    publisher: TrustedPublisher, environment: str | None, ref: str
) -> None:
    """A publisher that names no environment accepts jobs in any environment or none."""
    free = TrustedPublisher(
        publisher.feed, publisher.project, publisher.repository, publisher.workflow
    )
    overrides = {"environment": environment} if environment else {}
    assert isinstance(match_publishers(claims_for(free, ref, **overrides), [free]), Match)


@given(
    publishers(),
    refs,
    st.sampled_from(["repository", "repository_owner", "job_workflow_ref", "event_name"]),
    st.sampled_from([None, 7, "", ["x"]]),
)
def test_missing_or_odd_identity_claims_are_refused(
    publisher: TrustedPublisher, ref: str, name: str, value: object
) -> None:
    """Each identity claim must be a non-empty string."""
    claims = claims_for(publisher, ref)
    if value is None:
        del claims[name]
    else:
        claims[name] = value
    assert refusal_reason(match_publishers(claims, [publisher])) == "missing-claim"


def test_repository_owner_must_own_the_repository() -> None:
    """A token whose owner claim disagrees with its repository is refused."""
    publisher = TrustedPublisher("community", "demo", "octo-org/lib", "nightly.yml")
    claims = claims_for(publisher, "refs/heads/main", repository_owner="mallory")
    assert refusal_reason(match_publishers(claims, [publisher])) == "owner"


@given(publishers(), refs, st.integers(min_value=1, max_value=10**9))
def test_a_pinned_owner_id_must_match(publisher: TrustedPublisher, ref: str, owner_id: int) -> None:
    """With repository_owner_id pinned, the token's must be the same: an owner name registered
    again by another account (another id) gets nothing."""
    pinned = dataclasses.replace(publisher, repository_owner_id=str(owner_id))
    same = claims_for(pinned, ref, repository_owner_id=str(owner_id))
    assert isinstance(match_publishers(same, [pinned]), Match)
    other = claims_for(pinned, ref, repository_owner_id=str(owner_id + 1))
    assert refusal_reason(match_publishers(other, [pinned])) == "owner-id"
    missing = claims_for(pinned, ref)
    assert refusal_reason(match_publishers(missing, [pinned])) == "owner-id"


def test_a_repository_publishing_several_projects_gets_all_of_them_and_no_others() -> None:
    """Grants are exactly the projects whose publishers match, across feeds."""
    ours = [
        TrustedPublisher("community", "demo", "octo-org/lib", "nightly.yml"),
        TrustedPublisher("community", "demo-extras", "octo-org/lib", "nightly.yml"),
        TrustedPublisher("staging", "demo", "Octo-Org/Lib", "nightly.yml", "staging"),
    ]
    theirs = [
        TrustedPublisher("community", "numpy", "numpy/numpy", "nightly.yml"),
        TrustedPublisher("community", "demo-docs", "octo-org/lib", "docs.yml"),
    ]
    claims = claims_for(ours[0], "refs/heads/main", environment="staging")
    result = match_publishers(claims, [*theirs, *ours])
    assert isinstance(result, Match)
    assert result.grants == (
        Grant("community", "demo"),
        Grant("community", "demo-extras"),
        Grant("staging", "demo"),
    )
    assert result.publisher == "github:octo-org/lib:nightly.yml:staging"


def test_reported_claims_are_bounded_and_plain() -> None:
    """What reaches a log is the chosen claims only, cut short, with no nested structures."""
    claims = {"repository": "x" * 1000, "aud": ["a", "b"], "secret": "no", "exp": 5}
    shown = reported(claims)
    assert set(shown) == {"repository", "aud", "exp"}
    assert len(str(shown["repository"])) <= 203
    assert shown["aud"] == "list"
