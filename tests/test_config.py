"""Behaviour of nightproxy.yaml loading: parsing, defaults, env expansion, errors, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from nightproxy.config import (
    INHERIT,
    Config,
    ConfigError,
    RetentionConfig,
    RetentionOverride,
    config_from_mapping,
    effective_retention,
    find_config_path,
    load_config,
    mask_url,
    masked,
    parse_duration,
    parse_size,
)

UPSTREAM = """\
upstreams:
  - name: sp
    kind: simple
    url: https://example.invalid/simple/
"""

FULL = """\
server:
  host: 0.0.0.0
  port: 9000
cache:
  dir: ./.nightproxy-cache
  max_size: 20GiB
  max_age: 14d
index:
  ttl: 10m
  stale_if_error: 2h
  stale_while_revalidate: true
retention:
  dev_max_age: 7d
  keep_latest: 4
  keep_missing: 1d
logging:
  format: json
  level: debug
upstreams:
  - name: scientific-python
    kind: anaconda
    url: https://pypi.anaconda.org/scientific-python-nightly-wheels/simple/
    label: main
    timeout: 45s
    ttl: 5m
    headers: {X-Token: "${TOKEN}"}
    dev_only: true
    retention: {dev_max_age: 3d, keep_latest: 5}
  - name: store
    kind: s3
    url: s3://bucket/wheels
    endpoint: http://minio.local:9000
    access_key_id: AKIAEXAMPLE
    secret_access_key: s3-secret-value
  - name: azure-feed
    kind: azure
    url: https://user:url-password@pkgs.example.invalid/simple/
    username: bot
    password: azure-password
  - name: local
    kind: directory
    path: wheels
projects:
  numpy: [scientific-python]
  SciPy: {upstreams: [store, scientific-python], keep_latest: 2, keep_missing: 1d}
"""

SECRETS = ("tok-secret", "s3-secret-value", "url-password", "azure-password")


def write(tmp_path: Path, text: str, name: str = "nightproxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ={} if environ is None else environ)


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value


def assert_at(error: ConfigError, tmp_path: Path, key: str) -> None:
    """The error names the config file and the exact key path, in the documented format."""
    assert str(error).startswith(f"{tmp_path / 'nightproxy.yaml'}: {key}: "), str(error)
    assert error.key == key


def full(tmp_path: Path) -> Config:
    return load(tmp_path, FULL, {"TOKEN": "tok-secret"})


# --------------------------------------------------------------------------- valid configs


def test_full_config_round_trips_to_dataclasses(tmp_path: Path) -> None:
    """A complete file yields typed records: bytes, seconds, resolved paths, normalized values."""
    config = full(tmp_path)
    assert config.source == tmp_path / "nightproxy.yaml"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9000)
    assert config.cache.dir == tmp_path / ".nightproxy-cache"
    assert config.cache.max_size == 20 * 1024**3
    assert config.cache.max_age == 14 * 86400
    assert config.index.ttl == 600
    assert config.index.stale_if_error == 7200
    assert config.index.stale_while_revalidate is True
    assert config.retention == RetentionConfig(
        dev_max_age=7 * 86400, keep_latest=4, keep_missing=86400
    )
    assert (config.logging.format, config.logging.level) == ("json", "DEBUG")
    sp, store, azure, local = config.upstreams
    assert (sp.kind, sp.label, sp.timeout, sp.ttl, sp.dev_only) == (
        "anaconda",
        "main",
        45,
        300,
        True,
    )
    assert dict(sp.headers) == {"X-Token": "tok-secret"}
    assert sp.retention == RetentionOverride(dev_max_age=3 * 86400, keep_latest=5)
    assert store.url == "s3://bucket/wheels/"
    assert (store.secret_access_key, azure.password) == ("s3-secret-value", "azure-password")
    assert local.path == tmp_path / "wheels"
    assert local.url is None


def test_defaults_when_sections_omitted(tmp_path: Path) -> None:
    """Only `upstreams` is required; every other section falls back to documented defaults."""
    config = load(tmp_path, UPSTREAM)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.cache.dir == tmp_path / ".nightproxy-cache"
    assert config.cache.max_size == 20 * 1024**3
    assert config.cache.max_age == 14 * 86400
    assert (config.index.ttl, config.index.stale_if_error) == (600, 86400)
    assert config.index.stale_while_revalidate is False
    assert config.retention == RetentionConfig(7 * 86400, 3, 3 * 86400)
    assert (config.logging.format, config.logging.level) == ("text", "INFO")
    upstream = config.upstreams[0]
    assert (upstream.timeout, upstream.ttl, upstream.dev_only) == (30, None, False)
    assert upstream.retention == RetentionOverride()
    assert config.projects == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1B", 1),
        ("3KB", 3000),
        ("3KiB", 3 * 1024),
        ("2MB", 2 * 1000**2),
        ("2MiB", 2 * 1024**2),
        ("5GB", 5 * 1000**3),
        ("5GiB", 5 * 1024**3),
        ("1TB", 1000**4),
        ("1TiB", 1024**4),
        ("1.5GiB", 3 * 512 * 1024**2),
        ("20gib", 20 * 1024**3),
        ("4096", 4096),
    ],
)
def test_size_units_decimal_and_binary(tmp_path: Path, text: str, expected: int) -> None:
    """KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; no unit means bytes."""
    config = load(tmp_path, f"cache: {{max_size: {text}}}\n" + UPSTREAM)
    assert config.cache.max_size == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("10m", 600), ("1.5h", 5400), ("7d", 604800), ("2w", 1209600)],
)
def test_every_duration_unit(tmp_path: Path, text: str, expected: float) -> None:
    """s/m/h/d/w durations convert to seconds, fractions included (a bare number is refused:
    tests/test_config_edges.py)."""
    config = load(tmp_path, f"index: {{ttl: {text}}}\n" + UPSTREAM)
    assert config.index.ttl == expected


def test_zero_ttl_is_allowed(tmp_path: Path) -> None:
    """ttl 0 is meaningful (always revalidate) and accepted."""
    assert load(tmp_path, "index: {ttl: 0}\n" + UPSTREAM).index.ttl == 0


@pytest.mark.parametrize("value", ["off", '"off"', "null", "false"])
def test_dev_max_age_can_be_disabled(tmp_path: Path, value: str) -> None:
    """dev_max_age given as off, "off", null or false disables age hiding (None)."""
    config = load(tmp_path, f"retention: {{dev_max_age: {value}}}\n" + UPSTREAM)
    assert config.retention.dev_max_age is None


def test_s3_addressing_defaults_to_path_with_endpoint(tmp_path: Path) -> None:
    """s3 addressing is path-style with a custom endpoint, virtual-hosted without one."""
    config = full(tmp_path)
    assert config.upstreams[1].addressing == "path"
    plain = load(tmp_path, "upstreams:\n  - {name: b, kind: s3, url: 's3://bucket'}\n")
    assert plain.upstreams[0].addressing == "virtual"
    assert plain.upstreams[0].url == "s3://bucket/"


def test_home_is_expanded_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~` in cache.dir expands to the home directory instead of staying relative."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(tmp_path, "cache: {dir: ~/cache}\n" + UPSTREAM)
    assert config.cache.dir == tmp_path / "home" / "cache"


def test_config_from_mapping_validates_like_a_file(tmp_path: Path) -> None:
    """config_from_mapping takes parsed data and resolves paths against the given source."""
    data = {"upstreams": [{"name": "d", "kind": "directory", "path": "w"}]}
    config = config_from_mapping(data, tmp_path / "x.yaml", environ={})
    assert config.upstreams[0].path == tmp_path / "w"


# --------------------------------------------------------------------------- env expansion


def test_env_expansion_in_nested_values_and_headers(tmp_path: Path) -> None:
    """${VAR} and ${VAR:-default} expand in nested strings, list items and header values."""
    text = """\
cache: {dir: "${CACHE:-/var/cache/np}"}
upstreams:
  - name: sp
    kind: simple
    url: https://${HOST}/simple/
    headers: {Authorization: "Bearer ${TOKEN}", X-Env: "${STAGE:-prod}"}
projects:
  numpy: ["${PIN}"]
"""
    config = load(tmp_path, text, {"HOST": "h.invalid", "TOKEN": "t0k", "PIN": "sp"})
    assert config.cache.dir == Path("/var/cache/np")
    assert config.upstreams[0].url == "https://h.invalid/simple/"
    assert dict(config.upstreams[0].headers) == {"Authorization": "Bearer t0k", "X-Env": "prod"}
    assert config.projects[canonicalize_name("numpy")].upstreams == ("sp",)


def test_env_value_overrides_default(tmp_path: Path) -> None:
    """A set variable wins over the `:-` default."""
    config = load(tmp_path, 'server: {host: "${HOST:-127.0.0.1}"}\n' + UPSTREAM, {"HOST": "::1"})
    assert config.server.host == "::1"


def test_env_can_supply_numbers_and_bools(tmp_path: Path) -> None:
    """Expanded text reads as an int or bool where one is expected (env vars are always text)."""
    text = "server: {port: '${PORT:-8081}'}\nindex: {stale_while_revalidate: '${SWR}'}\n"
    config = load(tmp_path, text + UPSTREAM, {"SWR": "true"})
    assert config.server.port == 8081
    assert config.index.stale_while_revalidate is True


def test_lone_dollar_stays_literal(tmp_path: Path) -> None:
    """`$` not followed by `{` and `$$` are not special."""
    config = load(tmp_path, "server: {host: 'a$b$$c'}\n" + UPSTREAM)
    assert config.server.host == "a$b$$c"


def test_missing_env_var_names_variable_and_key(tmp_path: Path) -> None:
    """An unset ${VAR} without default is an error naming the variable and the key path."""
    text = UPSTREAM + '    headers: {X-Token: "${NP_TOKEN}"}\n'
    error = load_error(tmp_path, text)
    assert_at(error, tmp_path, "upstreams[0].headers.X-Token")
    assert "NP_TOKEN" in str(error)


def test_malformed_reference_is_an_error(tmp_path: Path) -> None:
    """An unterminated `${` is reported rather than passed through as text."""
    error = load_error(tmp_path, "server: {host: '${HOST'}\n" + UPSTREAM)
    assert_at(error, tmp_path, "server.host")


# --------------------------------------------------------------------------- errors


def test_unknown_top_level_key(tmp_path: Path) -> None:
    """A misspelt top-level section is rejected by name."""
    error = load_error(tmp_path, "sever: {port: 1}\n" + UPSTREAM)
    assert_at(error, tmp_path, "sever")
    assert "unknown key" in str(error)


def test_unknown_nested_key(tmp_path: Path) -> None:
    """An unknown key inside an upstream's retention is reported with its full key path."""
    error = load_error(tmp_path, UPSTREAM + "    retention: {keep_lates: 2}\n")
    assert_at(error, tmp_path, "upstreams[0].retention.keep_lates")
    assert "keep_latest" in str(error)  # the suggestion


def test_wrong_type(tmp_path: Path) -> None:
    """A list where a string belongs is a type error at that key."""
    error = load_error(tmp_path, "server: {host: [a, b]}\n" + UPSTREAM)
    assert_at(error, tmp_path, "server.host")
    assert "expected a string" in str(error)


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    """`keep_latest: true` is rejected although bool subclasses int."""
    error = load_error(tmp_path, "retention: {keep_latest: true}\n" + UPSTREAM)
    assert_at(error, tmp_path, "retention.keep_latest")


def test_literal_string_is_not_an_int(tmp_path: Path) -> None:
    """A quoted number written in the file is still a type error for an int field."""
    error = load_error(tmp_path, "server: {port: '8080'}\n" + UPSTREAM)
    assert_at(error, tmp_path, "server.port")


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("cache: {max_size: 10 parsecs}\n", "cache.max_size"),
        ("index: {ttl: 10 parsecs}\n", "index.ttl"),
        ("index: {ttl: 10M}\n", "index.ttl"),
        ("cache: {max_size: 1.5}\n", "cache.max_size"),
    ],
)
def test_bad_unit(tmp_path: Path, snippet: str, key: str) -> None:
    """Unknown units, and fractional bytes without a unit, are errors at their key."""
    assert_at(load_error(tmp_path, snippet + UPSTREAM), tmp_path, key)


@pytest.mark.parametrize("value", ["-5m", "-1"])
def test_negative_duration(tmp_path: Path, value: str) -> None:
    """Negative durations are rejected."""
    error = load_error(tmp_path, f"index: {{stale_if_error: {value}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, "index.stale_if_error")
    assert "negative" in str(error)


@pytest.mark.parametrize(
    ("snippet", "key"),
    [("cache: {max_size: 0}\n", "cache.max_size"), ("cache: {max_age: 0s}\n", "cache.max_age")],
)
def test_zero_where_meaningless(tmp_path: Path, snippet: str, key: str) -> None:
    """max_size and max_age must be greater than zero."""
    assert_at(load_error(tmp_path, snippet + UPSTREAM), tmp_path, key)


def test_zero_timeout_is_rejected(tmp_path: Path) -> None:
    """An upstream timeout of zero is an error."""
    error = load_error(tmp_path, UPSTREAM + "    timeout: 0\n")
    assert_at(error, tmp_path, "upstreams[0].timeout")


def test_duplicate_upstream_names(tmp_path: Path) -> None:
    """A second upstream reusing a name is reported at its own name key."""
    text = UPSTREAM + "  - {name: sp, kind: simple, url: 'https://b.invalid/'}\n"
    error = load_error(tmp_path, text)
    assert_at(error, tmp_path, "upstreams[1].name")
    assert "duplicate" in str(error)


@pytest.mark.parametrize("name", ["Upper", "under_score", "sp ace"])
def test_invalid_upstream_name(tmp_path: Path, name: str) -> None:
    """Upstream names must match [a-z0-9-]+."""
    text = f"upstreams:\n  - {{name: '{name}', kind: simple, url: 'https://a.invalid/'}}\n"
    assert_at(load_error(tmp_path, text), tmp_path, "upstreams[0].name")


def test_unknown_kind(tmp_path: Path) -> None:
    """A kind outside simple/anaconda/azure/s3/directory is rejected."""
    error = load_error(
        tmp_path, "upstreams:\n  - {name: a, kind: pypi, url: 'https://a.invalid/'}\n"
    )
    assert_at(error, tmp_path, "upstreams[0].kind")


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{name: a, kind: simple, url: 'https://a.invalid/', label: main}", "label"),
        ("{name: a, kind: s3, url: 's3://b/', password: pw}", "password"),
        ("{name: a, kind: directory, path: w, url: 'https://a.invalid/'}", "url"),
    ],
)
def test_key_of_another_kind_is_unknown(tmp_path: Path, entry: str, key: str) -> None:
    """Kind-specific keys on the wrong kind are unknown-key errors."""
    error = load_error(tmp_path, f"upstreams:\n  - {entry}\n")
    assert_at(error, tmp_path, f"upstreams[0].{key}")
    assert "unknown key" in str(error)


@pytest.mark.parametrize(
    ("entry", "key"),
    [("{name: a, kind: simple}", "url"), ("{name: a, kind: directory}", "path")],
)
def test_missing_location(tmp_path: Path, entry: str, key: str) -> None:
    """A missing url (or path for a directory upstream) is an error naming that key."""
    error = load_error(tmp_path, f"upstreams:\n  - {entry}\n")
    assert_at(error, tmp_path, f"upstreams[0].{key}")


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{name: a, kind: simple, url: 'ftp://a.invalid/'}", "url"),
        ("{name: a, kind: simple, url: 'https:///nohost'}", "url"),
        ("{name: a, kind: s3, url: 'https://b.invalid/'}", "url"),
        ("{name: a, kind: s3, url: 's3://b/', endpoint: 'minio:9000'}", "endpoint"),
    ],
)
def test_bad_url(tmp_path: Path, entry: str, key: str) -> None:
    """URLs need http(s) with a host (s3:// for the s3 url)."""
    assert_at(load_error(tmp_path, f"upstreams:\n  - {entry}\n"), tmp_path, f"upstreams[0].{key}")


def test_s3_credentials_come_in_pairs(tmp_path: Path) -> None:
    """access_key_id without secret_access_key is an error at the missing key."""
    text = "upstreams:\n  - {name: a, kind: s3, url: 's3://b/', access_key_id: AK}\n"
    assert_at(load_error(tmp_path, text), tmp_path, "upstreams[0].secret_access_key")


def test_projects_naming_unknown_upstream(tmp_path: Path) -> None:
    """A project pinned to an upstream that does not exist is reported at the list item."""
    error = load_error(tmp_path, UPSTREAM + "projects:\n  numpy: [sp, nope]\n")
    assert_at(error, tmp_path, "projects.numpy[1]")
    assert "nope" in str(error)


def test_duplicate_canonical_project_names(tmp_path: Path) -> None:
    """Two project keys that canonicalize to the same name are a duplicate error."""
    error = load_error(tmp_path, UPSTREAM + "projects:\n  Foo_Bar: [sp]\n  foo.bar: [sp]\n")
    assert_at(error, tmp_path, "projects.foo.bar")
    assert "duplicate" in str(error)


def test_no_upstreams(tmp_path: Path) -> None:
    """A config without upstreams is rejected."""
    assert_at(load_error(tmp_path, "upstreams: []\n"), tmp_path, "upstreams")
    assert_at(load_error(tmp_path, "server: {}\n"), tmp_path, "upstreams")


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    """YAML errors are whole-file errors with a position, without echoing the line's content."""
    error = load_error(tmp_path, UPSTREAM + "    password: 'hunter2\n")
    assert_at(error, tmp_path, "(file)")
    assert "line" in str(error)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    """An empty (or comment-only) file is an error about the file."""
    assert_at(load_error(tmp_path, text), tmp_path, "(file)")


def test_non_mapping_top_level(tmp_path: Path) -> None:
    """A top level that is a list is an error about the file."""
    assert_at(load_error(tmp_path, "- a\n- b\n"), tmp_path, "(file)")


def test_missing_file(tmp_path: Path) -> None:
    """A file that does not exist raises ConfigError, not OSError."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nightproxy.yaml", environ={})
    assert_at(info.value, tmp_path, "(file)")
    assert "not found" in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_masked_hides_every_secret(tmp_path: Path) -> None:
    """masked() shows the effective config with user-info, passwords, keys, headers as ***."""
    data = masked(full(tmp_path))
    rendered = repr(data)
    for secret in SECRETS:
        assert secret not in rendered
    sp, store, azure, local = data["upstreams"]
    assert sp["headers"] == {"X-Token": "***"}
    assert store["secret_access_key"] == "***"
    assert store["access_key_id"] == "AKIAEXAMPLE"
    assert azure["password"] == "***"
    assert azure["url"] == "https://***@pkgs.example.invalid/simple/"
    assert "url" not in local
    assert local["path"] == str(tmp_path / "wheels")
    assert data["cache"]["max_size"] == 20 * 1024**3
    assert data["index"]["ttl"] == "10m"


def test_repr_hides_every_secret(tmp_path: Path) -> None:
    """repr(config) never contains a credential."""
    rendered = repr(full(tmp_path))
    for secret in SECRETS:
        assert secret not in rendered
    assert "scientific-python" in rendered


def test_type_errors_do_not_echo_secret_values(tmp_path: Path) -> None:
    """Errors about secret keys describe the problem without the value."""
    text = "upstreams:\n  - {name: a, kind: azure, url: 'https://a.invalid/', password: 98765}\n"
    error = load_error(tmp_path, text)
    assert_at(error, tmp_path, "upstreams[0].password")
    assert "98765" not in str(error)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host.invalid/x/", "https://***@host.invalid/x/"),
        ("https://token@host.invalid/", "https://***@host.invalid/"),
        (
            "https://b.s3.invalid/k?X-Amz-Signature=abc&X-Amz-Credential=c&part=1",
            "https://b.s3.invalid/k?X-Amz-Signature=***&X-Amz-Credential=***&part=1",
        ),
        ("https://a.invalid/f?sv=1&sig=zzz", "https://a.invalid/f?sv=1&sig=***"),
        (
            "https://a.invalid/f?token=t&access_token=u",
            "https://a.invalid/f?token=***&access_token=***",
        ),
        ("https://a.invalid/simple/", "https://a.invalid/simple/"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    """mask_url replaces user-info and signature/token query values, leaving the rest alone."""
    assert mask_url(url) == expected


# --------------------------------------------------------------------------- projects, retention


def test_project_list_form(tmp_path: Path) -> None:
    """`numpy: [a]` pins upstreams and keeps global retention."""
    other = "  - {name: other, kind: simple, url: 'https://b.invalid/'}\n"
    text = UPSTREAM + other + "projects:\n  numpy: [other]\n"
    config = load(tmp_path, text)
    numpy = canonicalize_name("numpy")
    assert config.projects[numpy].upstreams == ("other",)
    assert config.projects[numpy].retention == RetentionOverride()
    assert config.upstream_names_for(numpy) == ("other",)
    assert config.upstream_names_for(canonicalize_name("pandas")) == ("sp", "other")


def test_project_mapping_form(tmp_path: Path) -> None:
    """The mapping form keys by canonical name, orders pins by priority and holds overrides."""
    config = full(tmp_path)
    scipy = config.projects[canonicalize_name("SciPy")]
    assert scipy.upstreams == ("scientific-python", "store")
    assert scipy.retention.keep_latest == 2
    assert scipy.retention.keep_missing == 86400
    assert scipy.retention.dev_max_age is INHERIT


def test_mapping_form_without_upstreams_uses_all(tmp_path: Path) -> None:
    """A project mapping without `upstreams` only overrides retention."""
    config = load(tmp_path, UPSTREAM + "projects:\n  numpy: {dev_max_age: off}\n")
    numpy = canonicalize_name("numpy")
    assert config.upstream_names_for(numpy) == ("sp",)
    assert config.projects[numpy].retention.dev_max_age is None


def test_effective_retention_precedence(tmp_path: Path) -> None:
    """Project overrides beat upstream overrides, which beat the global settings."""
    config = full(tmp_path)
    scipy, pandas = canonicalize_name("scipy"), canonicalize_name("pandas")
    assert effective_retention(config, "scientific-python", scipy) == RetentionConfig(
        dev_max_age=3 * 86400,  # upstream
        keep_latest=2,  # project beats upstream's 5
        keep_missing=86400,  # project
    )
    assert effective_retention(config, "scientific-python", pandas) == RetentionConfig(
        3 * 86400, 5, 86400
    )
    assert effective_retention(config, "store", pandas) == config.retention


# --------------------------------------------------------------------------- discovery


def test_find_config_path_prefers_cli(tmp_path: Path) -> None:
    """--config wins over $NIGHTPROXY_CONFIG."""
    env = {"NIGHTPROXY_CONFIG": str(tmp_path / "env.yaml")}
    assert find_config_path(str(tmp_path / "cli.yaml"), env) == tmp_path / "cli.yaml"


def test_find_config_path_uses_env(tmp_path: Path) -> None:
    """Without --config, $NIGHTPROXY_CONFIG is used."""
    env = {"NIGHTPROXY_CONFIG": str(tmp_path / "env.yaml")}
    assert find_config_path(None, env) == tmp_path / "env.yaml"


def test_find_config_path_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither, ./nightproxy.yaml in the working directory is used."""
    monkeypatch.chdir(tmp_path)
    assert find_config_path(None, {}) == tmp_path / "nightproxy.yaml"


# --------------------------------------------------------------------------- properties

DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE_FACTORS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
SOURCE = Path("nightproxy.yaml")


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(DURATION_FACTORS)))
def test_parse_duration_scales_by_unit(n: int, unit: str) -> None:
    """For any non-negative n, parse_duration(f"{n}{unit}") == n * factor(unit)."""
    assert parse_duration(f"{n}{unit}", "k", SOURCE) == n * DURATION_FACTORS[unit]


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(SIZE_FACTORS)))
def test_parse_size_scales_by_unit(n: int, unit: str) -> None:
    """For any non-negative n, parse_size(f"{n}{unit}") == n * factor(unit)."""
    assert parse_size(f"{n}{unit}", "k", SOURCE) == n * SIZE_FACTORS[unit]


@given(st.integers(min_value=1, max_value=10**9))
def test_negative_numbers_are_rejected(n: int) -> None:
    """Negative bare numbers are never a valid duration or size."""
    with pytest.raises(ConfigError):
        parse_duration(-n, "k", SOURCE)
    with pytest.raises(ConfigError):
        parse_size(-n, "k", SOURCE)


@given(st.text(max_size=20))
def test_parsers_only_raise_config_error(text: str) -> None:
    """Arbitrary text either parses to a non-negative value or raises ConfigError, nothing else."""
    for parse in (parse_duration, parse_size):
        try:
            value = parse(text, "k", SOURCE)
        except ConfigError:
            continue
        assert value >= 0
