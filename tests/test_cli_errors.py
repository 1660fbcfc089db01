"""User mistakes on the command line answered with one line and an exit status, never a
traceback: an impossible ``--port``, an unusable ``cache.dir``, YAML the loader refuses, and an
archive path that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightproxy.cache.store import CacheStore
from tests.test_cli import GOOD_UPSTREAM, run


@pytest.mark.parametrize("port", ["99999", "-1", "80x"])
def test_an_impossible_port_is_a_usage_error(tmp_path: Path, port: str) -> None:
    """``serve --port`` outside 0..65535 (or not a number) is argparse's usage error, exit 2."""
    (tmp_path / "nightproxy.yaml").write_text(GOOD_UPSTREAM)
    result = run("serve", "--port", port, cwd=tmp_path)
    assert result.returncode == 2
    assert "argument --port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_an_impossible_worker_count_is_a_usage_error(tmp_path: Path, workers: str) -> None:
    """``serve --workers`` below 1 (or neither a number nor ``auto``) is a usage error, exit 2."""
    (tmp_path / "nightproxy.yaml").write_text(GOOD_UPSTREAM)
    result = run("serve", "--workers", workers, cwd=tmp_path)
    assert result.returncode == 2
    assert "argument --workers" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check", "serve", "cache"])
@pytest.mark.parametrize("kind", ["a regular file", "under a regular file"])
def test_an_unusable_cache_dir_exits_2_naming_the_key(
    tmp_path: Path, command: str, kind: str
) -> None:
    """``check``, ``serve`` and the cache commands refuse a ``cache.dir`` that cannot be a
    directory, with one line naming the file, the key and the reason, exit 2."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cache_dir = blocker if kind == "a regular file" else blocker / "cache"
    config = tmp_path / "nightproxy.yaml"
    config.write_text(f"cache: {{dir: '{cache_dir}'}}\n" + GOOD_UPSTREAM)
    # Port 0: were the directory accepted, serve would start on a free port, not a taken one.
    args = {"check": ["check"], "serve": ["serve", "--port", "0"], "cache": ["cache", "stats"]}
    result = run(*args[command], "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: cache.dir: cannot use {cache_dir}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server: {port: 1, port: 2}\n" + GOOD_UPSTREAM, "server.port"),
        ("a: &a [*a]\n" + GOOD_UPSTREAM, "a[0]"),
        ("a: " + "[" * 5000 + "\n" + GOOD_UPSTREAM, "(file)"),
    ],
    ids=["duplicate-key", "self-reference", "deep-nesting"],
)
def test_yaml_structure_mistakes_exit_2_with_one_line(tmp_path: Path, text: str, key: str) -> None:
    """Duplicate keys, a self-referencing anchor and runaway nesting are config errors."""
    config = tmp_path / "nightproxy.yaml"
    config.write_text(text)
    result = run("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: {key}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_export_to_a_directory_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """``cache export`` to an unwritable path: one line naming the archive and the reason,
    exit 1 (the CLI's status for a failed operation), no traceback."""
    cache_dir = tmp_path / "cache"
    store = CacheStore(cache_dir, 2**30, 86400.0)
    store.open()
    store.close()
    archive = tmp_path / "missing" / "x.tar"
    result = run("cache", "export", "--cache-dir", str(cache_dir), str(archive), cwd=tmp_path)
    assert result.returncode == 1
    assert f"nightproxy: cannot export to {archive}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()
