"""The configuration keys of the serving features: workers, a connection cap, TLS, an outbound
proxy per upstream, stalled downloads, the scrub, the shared cache tier and trusted publishing's
issuer. Each parses to its typed record, refuses a mistake at its key, and masks credentials."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from nightproxy.config import SharedCacheConfig, masked
from tests.test_cli import GOOD_UPSTREAM, clean_env, run
from tests.test_config import UPSTREAM, assert_at, load, load_error

# --------------------------------------------------------------------------- server


def test_server_defaults(tmp_path: Path) -> None:
    """One worker, a cap of 4096 connections per process, plain HTTP."""
    server = load(tmp_path, UPSTREAM).server
    assert (server.workers, server.max_connections, server.tls) == (1, 4096, None)
    assert server.worker_count() == 1


@pytest.mark.parametrize(("text", "expected"), [("4", 4), ("auto", "auto"), ("AUTO", "auto")])
def test_workers_takes_a_number_or_auto(tmp_path: Path, text: str, expected: object) -> None:
    """``server.workers`` is a count of processes, or ``auto`` for one per usable CPU."""
    server = load(tmp_path, f"server: {{workers: {text}}}\n" + UPSTREAM).server
    assert server.workers == expected
    assert server.worker_count() >= 1


def test_workers_from_the_environment(tmp_path: Path) -> None:
    """``workers: ${WORKERS}`` reads a number or auto from the environment."""
    text = "server: {workers: '${WORKERS}'}\n" + UPSTREAM
    assert load(tmp_path, text, {"WORKERS": "3"}).server.workers == 3
    assert load(tmp_path, text, {"WORKERS": "auto"}).server.workers == "auto"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "must be >= 1"),
        ("100000", "must be <= 256"),
        ("many", "expected a number of processes or auto, got 'many'"),
        ("true", "expected an integer, got a boolean"),
        ("1.5", "expected an integer, got a number"),
    ],
)
def test_a_bad_workers_value_is_an_error_at_its_key(
    tmp_path: Path, text: str, message: str
) -> None:
    """A count below 1, an absurd one, a word other than auto, or a non-integer is refused."""
    error = load_error(tmp_path, f"server: {{workers: {text}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, "server.workers")
    assert error.message == message


@pytest.mark.parametrize(("text", "message"), [("0", "must be >= 1"), ("-5", "must be >= 1")])
def test_max_connections_is_at_least_one(tmp_path: Path, text: str, message: str) -> None:
    """``server.max_connections`` must allow at least one connection."""
    error = load_error(tmp_path, f"server: {{max_connections: {text}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, "server.max_connections")
    assert error.message == message


def test_max_connections_is_read(tmp_path: Path) -> None:
    """A cap given in the file is the record's."""
    config = load(tmp_path, "server: {max_connections: 500}\n" + UPSTREAM)
    assert config.server.max_connections == 500


def pem_files(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("certificate\n")
    (tmp_path / "tls" / "key.pem").write_text("key\n")


def test_tls_paths_are_resolved_against_the_config(tmp_path: Path) -> None:
    """``server.tls`` takes a certificate and a key, relative to the config's folder."""
    pem_files(tmp_path)
    config = load(tmp_path, "server: {tls: {cert: tls/cert.pem, key: tls/key.pem}}\n" + UPSTREAM)
    assert config.server.tls is not None
    assert config.server.tls.cert == tmp_path / "tls" / "cert.pem"
    assert config.server.tls.key == tmp_path / "tls" / "key.pem"
    assert masked(config)["server"]["tls"] == {
        "cert": str(tmp_path / "tls" / "cert.pem"),
        "key": str(tmp_path / "tls" / "key.pem"),
    }


@pytest.mark.parametrize(
    ("tls", "key", "message"),
    [
        ("{cert: tls/cert.pem}", "server.tls.key", "cert and key must be given together"),
        ("{key: tls/key.pem}", "server.tls.cert", "cert and key must be given together"),
        ("{cert: tls/nope.pem, key: tls/key.pem}", "server.tls.cert", "no such file: "),
        ("{cert: tls, key: tls/key.pem}", "server.tls.cert", "is not a file"),
        ("{cert: tls/cert.pem, key: tls/key.pem, ca: x}", "server.tls.ca", "unknown key"),
    ],
)
def test_a_bad_tls_setting_is_an_error_at_its_key(
    tmp_path: Path, tls: str, key: str, message: str
) -> None:
    """Both files are required together and must exist when the config is checked."""
    pem_files(tmp_path)
    error = load_error(tmp_path, f"server: {{tls: {tls}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, key)
    assert message in error.message


# --------------------------------------------------------------------------- proxy


def test_an_upstream_proxy_is_read_and_its_credentials_masked(tmp_path: Path) -> None:
    """``proxy:`` takes an http(s) URL; a password in it never shows in repr or check."""
    text = UPSTREAM + "    proxy: http://ci:proxy-secret@egress.invalid:3128\n"
    config = load(tmp_path, text)
    assert config.upstreams[0].proxy == "http://ci:proxy-secret@egress.invalid:3128"
    assert "proxy-secret" not in repr(config)
    shown = masked(config)["upstreams"][0]
    assert shown["proxy"] == "http://***@egress.invalid:3128"
    assert "proxy-secret" not in repr(shown)


def test_an_upstream_without_a_proxy_uses_none(tmp_path: Path) -> None:
    """No ``proxy:``: None, and the environment's proxy settings apply."""
    assert load(tmp_path, UPSTREAM).upstreams[0].proxy is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{name: a, kind: simple, url: 'https://a.invalid/', proxy: 'socks5://p.invalid'}",
            "expected an http:// or https:// URL",
        ),
        (
            "{name: a, kind: directory, path: w, proxy: 'http://p.invalid'}",
            "unknown key for kind 'directory' (it reads a local folder)",
        ),
    ],
)
def test_a_bad_proxy_is_an_error_at_its_key(tmp_path: Path, entry: str, message: str) -> None:
    """A proxy that is not http(s), or on a kind that makes no requests, is refused."""
    error = load_error(tmp_path, f"upstreams:\n  - {entry}\n")
    assert_at(error, tmp_path, "upstreams[0].proxy")
    assert error.message == message


# --------------------------------------------------------------------------- fills, scrub


def test_fill_and_scrub_defaults(tmp_path: Path) -> None:
    """1 KiB/s for 60 s abandons a download; the scrub reads 8 MiB/s; no shared tier."""
    cache = load(tmp_path, UPSTREAM).cache
    assert (cache.fill_min_rate, cache.fill_stall_timeout) == (1024, 60.0)
    assert cache.scrub_rate == 8 * 1024**2
    assert cache.shared is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2KiB/s", 2048), ("2KiB", 2048), ("100 kB/s", 100_000), ("512", 512), ("0", None)],
)
def test_rates_are_sizes_per_second(tmp_path: Path, text: str, expected: int | None) -> None:
    """A rate is a size, with or without ``/s``; 0 means no floor."""
    config = load(tmp_path, f"cache: {{fill_min_rate: '{text}'}}\n" + UPSTREAM)
    assert config.cache.fill_min_rate == expected


@pytest.mark.parametrize("text", ["off", "'off'", "false", "0"])
def test_the_scrub_can_be_turned_off(tmp_path: Path, text: str) -> None:
    """``scrub_rate: off`` (or false, or 0) turns the background check off (None)."""
    config = load(tmp_path, f"cache: {{scrub_rate: {text}}}\n" + UPSTREAM)
    assert config.cache.scrub_rate is None
    assert masked(config)["cache"]["scrub_rate"] is None


@pytest.mark.parametrize(
    ("snippet", "key", "message"),
    [
        ("cache: {fill_min_rate: -1KiB}\n", "cache.fill_min_rate", "must not be negative"),
        ("cache: {scrub_rate: fast}\n", "cache.scrub_rate", "invalid size 'fast'"),
        ("cache: {fill_stall_timeout: 0s}\n", "cache.fill_stall_timeout", "must be greater"),
        ("cache: {fill_stall_timeout: 30}\n", "cache.fill_stall_timeout", "write 30s"),
        ("cache: {fill_stal_timeout: 30s}\n", "cache.fill_stal_timeout", "'fill_stall_timeout'"),
    ],
)
def test_a_bad_fill_or_scrub_setting_is_an_error_at_its_key(
    tmp_path: Path, snippet: str, key: str, message: str
) -> None:
    """Negative or unreadable rates, a zero or unit-less stall timeout, and typos are refused."""
    error = load_error(tmp_path, snippet + UPSTREAM)
    assert_at(error, tmp_path, key)
    assert message in error.message


def test_the_removed_spare_memory_key_says_to_delete_it(tmp_path: Path) -> None:
    """``cache.spare_memory`` (spare files, removed) is an unknown key that says so."""
    error = load_error(tmp_path, "cache: {spare_memory: 128MiB}\n" + UPSTREAM)
    assert_at(error, tmp_path, "cache.spare_memory")
    assert error.message == "unknown key (spare files were removed: delete this line)"


def test_stall_settings_are_read_and_shown(tmp_path: Path) -> None:
    """Given values land in the record; check shows the timeout as written and rates as bytes."""
    text = "cache: {fill_min_rate: 4KiB/s, fill_stall_timeout: 2m, scrub_rate: 1MiB/s}\n"
    config = load(tmp_path, text + UPSTREAM)
    shown = masked(config)["cache"]
    assert (shown["fill_min_rate"], shown["fill_stall_timeout"]) == (4096, "2m")
    assert shown["scrub_rate"] == 1024**2


# --------------------------------------------------------------------------- cache.shared

SHARED = """\
cache:
  shared:
    url: s3://fleet-bucket/cache
    endpoint: http://127.0.0.1:8333
    access_key_id: AKIDFLEET
    secret_access_key: "${SHARED_SECRET}"
    max_size: 500GiB
    max_age: 30d
"""


def test_the_shared_tier_is_read_with_the_s3_options(tmp_path: Path) -> None:
    """``cache.shared`` takes an s3:// URL, the s3 kind's options and its own budget."""
    config = load(tmp_path, SHARED + UPSTREAM, {"SHARED_SECRET": "shared-s3-secret"})
    shared = config.cache.shared
    assert isinstance(shared, SharedCacheConfig)
    assert shared.url == "s3://fleet-bucket/cache/"
    assert (shared.s3.endpoint, shared.s3.addressing) == ("http://127.0.0.1:8333", "path")
    assert (shared.s3.access_key_id, shared.s3.secret_access_key) == (
        "AKIDFLEET",
        "shared-s3-secret",
    )
    assert (shared.max_size, shared.max_age) == (500 * 1024**3, 30 * 86400)


def test_the_shared_tiers_secret_is_masked(tmp_path: Path) -> None:
    """The shared tier's secret key shows as *** in check's data and in repr."""
    config = load(tmp_path, SHARED + UPSTREAM, {"SHARED_SECRET": "shared-s3-secret"})
    shown = masked(config)["cache"]["shared"]
    assert shown["secret_access_key"] == "***"
    assert shown["access_key_id"] == "AKIDFLEET"
    assert shown["max_age"] == "30d"
    assert "shared-s3-secret" not in repr(config)
    assert "shared-s3-secret" not in repr(masked(config))


def test_the_shared_tier_defaults(tmp_path: Path) -> None:
    """Without a budget: no size bound, objects unused for 14 days go; AWS's region."""
    config = load(tmp_path, "cache: {shared: {url: 's3://b/'}}\n" + UPSTREAM)
    assert config.cache.shared is not None
    assert (config.cache.shared.max_size, config.cache.shared.max_age) == (None, 14 * 86400)
    assert config.cache.shared.s3.region == "us-east-1"


@pytest.mark.parametrize(
    ("shared", "key", "message"),
    [
        ("{endpoint: 'http://s.invalid'}", "cache.shared.url", "is required"),
        ("{url: 'https://b.invalid/'}", "cache.shared.url", "expected s3://bucket/prefix/"),
        ("{url: 's3://b/', access_key_id: AK}", "cache.shared.secret_access_key", "together"),
        ("{url: 's3://b/', max_sise: 1GiB}", "cache.shared.max_sise", "'max_size'"),
        ("{url: 's3://b/', max_age: 0s}", "cache.shared.max_age", "greater than zero"),
    ],
)
def test_a_bad_shared_tier_is_an_error_at_its_key(
    tmp_path: Path, shared: str, key: str, message: str
) -> None:
    """A missing or non-s3 URL, half a key pair, a typo or a zero age is refused."""
    error = load_error(tmp_path, f"cache: {{shared: {shared}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, key)
    assert message in error.message


# --------------------------------------------------------------------------- publishing.oidc


def test_oidc_defaults(tmp_path: Path) -> None:
    """GitHub Actions' issuer, the audience ``nightproxy``, 15-minute tokens, system CAs."""
    oidc = load(tmp_path, UPSTREAM).publishing.oidc
    assert oidc.issuer == "https://token.actions.githubusercontent.com"
    assert (oidc.audience, oidc.token_lifetime, oidc.ca_bundle) == ("nightproxy", 900.0, None)


def test_oidc_settings_are_read(tmp_path: Path) -> None:
    """A private issuer with its CA bundle, an audience and a lifetime are read as given."""
    (tmp_path / "ca.pem").write_text("ca\n")
    text = (
        "publishing:\n  oidc: {issuer: 'https://issuer.invalid:8443', audience: feeds,"
        " ca_bundle: ca.pem, token_lifetime: 5m}\n"
    )
    config = load(tmp_path, text + UPSTREAM)
    oidc = config.publishing.oidc
    assert (oidc.issuer, oidc.audience) == ("https://issuer.invalid:8443", "feeds")
    assert (oidc.ca_bundle, oidc.token_lifetime) == (tmp_path / "ca.pem", 300.0)
    assert masked(config)["publishing"]["oidc"]["token_lifetime"] == "5m"


@pytest.mark.parametrize(
    ("oidc", "key", "message"),
    [
        ("{issuer: 'http://issuer.invalid'}", "issuer", "expected an https:// URL"),
        ("{ca_bundle: missing.pem}", "ca_bundle", "no such file: "),
        ("{token_lifetime: 0s}", "token_lifetime", "must be greater than zero"),
        ("{audiance: x}", "audiance", "did you mean 'audience'?"),
    ],
)
def test_a_bad_oidc_setting_is_an_error_at_its_key(
    tmp_path: Path, oidc: str, key: str, message: str
) -> None:
    """A plain-HTTP issuer, a missing CA bundle, a zero lifetime and typos are refused."""
    error = load_error(tmp_path, f"publishing: {{oidc: {oidc}}}\n" + UPSTREAM)
    assert_at(error, tmp_path, f"publishing.oidc.{key}")
    assert message in error.message


# --------------------------------------------------------------------------- check


def test_check_shows_the_new_keys_and_no_secret(tmp_path: Path) -> None:
    """``check`` prints every new section with the shared tier's and proxy's secrets masked."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(
        SHARED
        + "server: {workers: auto}\n"
        + GOOD_UPSTREAM
        + "    proxy: http://u:${NP_TEST_PROXY_PW}@egress.invalid:3128\n"
    )
    env = clean_env(SHARED_SECRET="shared-s3-SENTINEL", NP_TEST_PROXY_PW="proxy-SENTINEL")
    result = run("check", "--config", str(config), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["server"]["workers"] == "auto"
    assert shown["cache"]["shared"]["url"] == "s3://fleet-bucket/cache/"
    assert shown["publishing"]["oidc"]["audience"] == "nightproxy"
    assert hashlib.sha256(b"proxy-SENTINEL").hexdigest() not in result.stdout
