"""The ``hosted`` upstream kind's configuration: storage, limits, retention's trash, publishers
with tokens and GitHub workflows, admins. Tokens are kept only as sha256 digests and never
shown or quoted, whichever form they were given in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from nightproxy.config import (
    ConfigError,
    GithubPublisher,
    HostedOptions,
    RetentionOverride,
    config_from_mapping,
    masked,
    token_digest,
)
from tests.test_cli import clean_env, run
from tests.test_config import UPSTREAM, assert_at, load, load_error

SKLEARN_TOKEN = "npf_sklearn-upload-token-SENTINEL"
ADMIN_TOKEN = "npf_feed-admin-token-SENTINEL"
NUMPY_DIGEST = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
ENV = {"SKLEARN_TOKEN": SKLEARN_TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN}

FEED = f"""\
upstreams:
  - name: community
    kind: hosted
    overwrite: true
    max_file_size: 500MiB
    retention: {{dev_max_age: 30d, keep_latest: 5, trash: 3d}}
    publishers:
      Scikit_Learn:
        tokens: ["${{SKLEARN_TOKEN}}"]
        github:
          - {{repository: scikit-learn/scikit-learn, workflow: wheels.yml, environment: nightly}}
      numpy:
        tokens: ["sha256:{NUMPY_DIGEST}"]
        github: [{{repository: numpy/numpy, workflow: wheels.yaml}}]
    admins: ["${{ADMIN_TOKEN}}"]
"""


def feed_options(tmp_path: Path, text: str = FEED) -> HostedOptions:
    options = load(tmp_path, text, ENV).upstreams[0].options
    assert isinstance(options, HostedOptions)
    return options


def hosted(extra: str = "", name: str = "feed") -> str:
    return f"upstreams:\n  - name: {name}\n    kind: hosted\n" + extra


def test_a_bare_hosted_feed_lives_in_a_local_folder_named_after_it(tmp_path: Path) -> None:
    """Without path or url, the feed is stored in ./feeds/<name> beside the config."""
    upstream = load(tmp_path, hosted(name="community")).upstreams[0]
    assert (upstream.kind, upstream.url) == ("hosted", None)
    assert upstream.path == tmp_path / "feeds" / "community"
    options = upstream.options
    assert isinstance(options, HostedOptions)
    assert (options.overwrite, options.max_file_size, options.trash) == (
        False,
        2 * 1024**3,
        7 * 86400,
    )
    assert (dict(options.publishers), options.admins, options.s3) == ({}, (), None)


def test_a_hosted_feeds_path_is_relative_to_the_config(tmp_path: Path) -> None:
    """``path:`` names the folder, relative to the config's folder."""
    assert load(tmp_path, hosted("    path: ./feed\n")).upstreams[0].path == tmp_path / "feed"


def test_a_hosted_feed_in_a_bucket_takes_the_s3_options(tmp_path: Path) -> None:
    """``url: s3://...`` stores the feed in a bucket, reached with the s3 kind's options."""
    text = hosted(
        "    url: s3://feeds/community\n    endpoint: http://127.0.0.1:8333\n"
        "    access_key_id: AK\n    secret_access_key: feed-s3-secret\n"
        "    proxy: http://egress.invalid:3128\n"
    )
    upstream = load(tmp_path, text).upstreams[0]
    assert (upstream.url, upstream.path) == ("s3://feeds/community/", None)
    assert upstream.s3 is not None
    assert (upstream.endpoint, upstream.addressing) == ("http://127.0.0.1:8333", "path")
    assert upstream.secret_access_key == "feed-s3-secret"
    assert upstream.proxy == "http://egress.invalid:3128"
    assert "feed-s3-secret" not in repr(upstream)


def test_the_full_example_is_read(tmp_path: Path) -> None:
    """Overwrite, size limit, retention with its trash, publishers by normalized name."""
    upstream = load(tmp_path, FEED, ENV).upstreams[0]
    options = upstream.options
    assert isinstance(options, HostedOptions)
    assert (options.overwrite, options.max_file_size, options.trash) == (
        True,
        500 * 1024**2,
        259200,
    )
    assert upstream.retention == RetentionOverride(dev_max_age=30 * 86400, keep_latest=5)
    assert list(options.publishers) == ["scikit-learn", "numpy"]
    sklearn = options.publishers[canonicalize_name("scikit-learn")]
    assert sklearn.github == (
        GithubPublisher("scikit-learn/scikit-learn", "wheels.yml", "nightly"),
    )
    numpy = options.publishers[canonicalize_name("numpy")]
    assert numpy.github == (GithubPublisher("numpy/numpy", "wheels.yaml", None),)


def test_tokens_are_kept_only_as_sha256_digests(tmp_path: Path) -> None:
    """A token from the environment is stored as its sha256; a sha256: one as its lowercase
    hex; the secrets themselves appear nowhere in the record."""
    config = load(tmp_path, FEED, ENV)
    options = config.upstreams[0].options
    assert isinstance(options, HostedOptions)
    assert options.publishers[canonicalize_name("scikit-learn")].tokens == (
        hashlib.sha256(SKLEARN_TOKEN.encode()).hexdigest(),
    )
    assert options.publishers[canonicalize_name("numpy")].tokens == (NUMPY_DIGEST.lower(),)
    assert options.admins == (hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),)
    assert "SENTINEL" not in repr(config)
    for digest in (*options.admins, NUMPY_DIGEST.lower()):
        assert digest not in repr(config)


def test_check_masks_every_token(tmp_path: Path) -> None:
    """``check`` shows one *** per token, never a secret nor its digest."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(FEED)
    result = run("check", "--config", str(config), cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr
    for hidden in ("SENTINEL", NUMPY_DIGEST.lower(), NUMPY_DIGEST, token_digest(ADMIN_TOKEN)):
        assert hidden not in result.stdout + result.stderr
    shown = yaml.safe_load(result.stdout)["upstreams"][0]
    assert shown["publishers"]["numpy"]["tokens"] == ["***"]
    assert shown["admins"] == ["***"]
    assert shown["retention"] == {"dev_max_age": "30d", "keep_latest": 5, "trash": "3d"}
    assert shown["publishers"]["scikit-learn"]["github"] == [
        {
            "repository": "scikit-learn/scikit-learn",
            "workflow": "wheels.yml",
            "environment": "nightly",
        }
    ]


def test_masked_data_holds_no_digest(tmp_path: Path) -> None:
    """masked() data carries neither tokens nor their digests."""
    shown = repr(masked(load(tmp_path, FEED, ENV)))
    assert "SENTINEL" not in shown
    assert token_digest(SKLEARN_TOKEN) not in shown
    assert NUMPY_DIGEST.lower() not in shown


@pytest.mark.parametrize(
    ("token", "env", "message"),
    [
        ("npf_written-in-the-file-xyz", {}, "write a token as ${VAR}"),
        ("${SHORT}", {"SHORT": "abc"}, "at least 16 characters"),
        ("${EMPTY:-}", {}, "must not be empty"),
        ("sha256:abc123", {}, "64 hex digits"),
        ("sha256:" + "g" * 64, {}, "64 hex digits"),
        ("${UNSET_TOKEN}", {}, "UNSET_TOKEN is not set"),
    ],
    ids=["literal", "short", "empty", "short-digest", "not-hex", "unset"],
)
def test_a_bad_token_is_refused_without_quoting_it(
    tmp_path: Path, token: str, env: dict[str, str], message: str
) -> None:
    """A token written in the file, a short secret or a malformed digest is an error at the
    list item, which never quotes the token."""
    text = hosted(f"    publishers:\n      numpy: {{tokens: ['{token}']}}\n")
    error = load_error(tmp_path, text, env)
    assert_at(error, tmp_path, "upstreams[0].publishers.numpy.tokens[0]")
    assert message in error.message
    for secret in (token, *env.values()):
        if not secret.startswith("${"):
            assert secret not in str(error)


@given(st.text(min_size=16, max_size=64).filter(lambda s: "\0" not in s and len(s.strip()) >= 16))
def test_any_token_from_the_environment_becomes_its_digest(secret: str) -> None:
    """Whatever a secret from the environment holds, the record holds its sha256."""
    data = {
        "upstreams": [
            {"name": "f", "kind": "hosted", "admins": ["${T}"]},
        ]
    }
    config = config_from_mapping(data, Path("/srv/nightproxy.yaml"), environ={"T": secret})
    options = config.upstreams[0].options
    assert isinstance(options, HostedOptions)
    assert options.admins == (token_digest(secret),)


@pytest.mark.parametrize(
    ("github", "key", "message"),
    [
        ("{repository: scikit-learn, workflow: w.yml}", "repository", "expected owner/repo"),
        ("{repository: a/b/c, workflow: w.yml}", "repository", "expected owner/repo"),
        ("{repository: -bad/repo, workflow: w.yml}", "repository", "expected owner/repo"),
        ("{repository: owner/.., workflow: w.yml}", "repository", "expected owner/repo"),
        (
            "{repository: o/r, workflow: .github/workflows/w.yml}",
            "workflow",
            "the workflow's file name",
        ),
        ("{repository: o/r, workflow: build.sh}", "workflow", "the workflow's file name"),
        ("{repository: o/r}", "workflow", "is required"),
        ("{repository: o/r, workflow: w.yml, enviroment: x}", "enviroment", "'environment'"),
        (
            "{repository: o/r, workflow: w.yml, repository_owner_id: octo}",
            "repository_owner_id",
            "numeric GitHub id",
        ),
    ],
)
def test_a_bad_github_publisher_is_an_error_at_its_key(
    tmp_path: Path, github: str, key: str, message: str
) -> None:
    """A repository not of the form owner/repo, a workflow that is not a file name under
    .github/workflows/, a missing workflow and typos are refused at their key."""
    text = hosted(f"    publishers:\n      numpy:\n        github: [{github}]\n")
    error = load_error(tmp_path, text)
    assert_at(error, tmp_path, f"upstreams[0].publishers.numpy.github[0].{key}")
    assert message in error.message


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            "    publishers: {numpy: {tokens: []}}\n",
            "publishers.numpy",
            "names no tokens and no github publisher",
        ),
        (
            "    publishers: {Foo_Bar: {github: [{repository: o/r, workflow: w.yml}]},"
            " foo.bar: {github: [{repository: o/r, workflow: w.yml}]}}\n",
            "publishers.foo.bar",
            "duplicate project",
        ),
        ("    publishers: {'-x-': {tokens: []}}\n", "publishers.-x-", "not a valid project name"),
        ("    publishers: {numpy: {token: []}}\n", "publishers.numpy.token", "'tokens'"),
        ("    admins: ['plain-text-admin-token']\n", "admins[0]", "write a token as ${VAR}"),
        ("    max_file_size: 0\n", "max_file_size", "greater than zero"),
        ("    overwrite: sometimes\n", "overwrite", "expected true or false"),
        (
            "    path: ./a\n    url: s3://b/\n",
            "path",
            "give path (a local folder) or url (s3://bucket/prefix/), not both",
        ),
        ("    url: https://b.invalid/\n", "url", "expected s3://bucket/prefix/"),
        ("    endpoint: http://s.invalid\n", "endpoint", "is only used with url: s3://"),
        ("    proxy: http://p.invalid\n", "proxy", "is only used with url: s3://"),
        ("    headers: {X-A: a}\n", "headers", "unknown key for kind 'hosted'"),
        ("    retention: {keep_missing: 1d}\n", "retention.keep_missing", "never go missing"),
        ("    retention: {trash: -1d}\n", "retention.trash", "must not be negative"),
    ],
)
def test_a_bad_hosted_setting_is_an_error_at_its_key(
    tmp_path: Path, extra: str, key: str, message: str
) -> None:
    """Each mistake in a hosted feed's own keys is named by its key path."""
    error = load_error(tmp_path, hosted(extra))
    assert_at(error, tmp_path, f"upstreams[0].{key}")
    assert message in error.message


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        (
            "{name: a, kind: simple, url: 'https://a.invalid/', retention: {trash: 1d}}",
            "retention.trash",
            "only valid for kind hosted",
        ),
        (
            "{name: a, kind: simple, url: 'https://a.invalid/', overwrite: true}",
            "overwrite",
            "only valid for kind hosted",
        ),
    ],
)
def test_hosted_keys_on_another_kind_say_so(
    tmp_path: Path, entry: str, key: str, message: str
) -> None:
    """A hosted feed's keys on another kind are unknown there, with the kind they belong to."""
    error = load_error(tmp_path, f"upstreams:\n  - {entry}\n")
    assert_at(error, tmp_path, f"upstreams[0].{key}")
    assert message in error.message


def test_a_project_may_be_pinned_to_a_hosted_feed(tmp_path: Path) -> None:
    """A hosted feed is listed, pinned and prioritised like any upstream."""
    config = load(
        tmp_path, UPSTREAM + "  - {name: feed, kind: hosted}\nprojects: {numpy: [feed]}\n"
    )
    assert config.upstream_names_for(canonicalize_name("numpy")) == ("feed",)
    assert config.upstream_names_for(canonicalize_name("scipy")) == ("sp", "feed")


def test_a_config_error_never_quotes_an_environment_token(tmp_path: Path) -> None:
    """Even a token from the environment that is too short is not quoted in the error."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, hosted("    admins: ['${A}']\n"), {"A": "short-SENTINEL"})
    assert "SENTINEL" not in str(info.value)


@pytest.mark.parametrize("written", ["365630", "'365630'"])
def test_a_publisher_may_pin_its_owners_github_id(tmp_path: Path, written: str) -> None:
    """repository_owner_id is kept as the digits the token carries, written bare or quoted."""
    text = hosted(
        "    publishers:\n      numpy:\n        github:\n"
        "          - {repository: numpy/numpy, workflow: w.yml,"
        f" repository_owner_id: {written}}}\n"
    )
    (github,) = feed_options(tmp_path, text).publishers[canonicalize_name("numpy")].github
    assert github.repository_owner_id == "365630"
