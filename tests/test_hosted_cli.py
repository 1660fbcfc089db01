"""``nightproxy token new`` and ``nightproxy feed prune|delete|restore`` on a real feed folder."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nightproxy.cli import main
from nightproxy.config import load_config
from nightproxy.hosted.setup import find_hosted, make_feed
from tests.hosted_support import publish
from tests.test_hosted_e2e import write_config
from tests.wheels import build_wheel

LINUX = "cp311-cp311-manylinux_2_17_x86_64"
WINDOWS = "cp311-cp311-win_amd64"


def test_token_new_prints_a_token_and_its_config_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The second line is the sha256 of the first, ready to paste as sha256:<hex>."""
    assert main(["token", "new"]) == 0
    token, line = capsys.readouterr().out.splitlines()
    assert line == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert len(token) >= 40


def old_feed(tmp_path: Path) -> Path:
    """A feed whose numpy nightlies were uploaded 60 to 51 days ago, Windows ones stopping."""
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    upstream = find_hosted(config, "community")
    assert upstream is not None
    when = [datetime.now(UTC) - timedelta(days=60)]
    feed = make_feed(config, upstream, clock=lambda: when[0])

    async def fill() -> None:
        await feed.open()
        for day in range(10):
            await publish(feed, build_wheel(tmp_path / "d", "numpy", f"2.0.dev{day}", tag=LINUX))
            if day < 4:
                await publish(
                    feed, build_wheel(tmp_path / "d", "numpy", f"2.0.dev{day}", tag=WINDOWS)
                )
            when[0] += timedelta(days=1)
        await publish(feed, build_wheel(tmp_path / "d", "numpy", "1.0", tag=LINUX))
        await feed.close()

    asyncio.run(fill())
    return config_path


def test_prune_dry_run_lists_each_file_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run names every file it would delete with rule, group and age, and deletes none;
    the real run deletes exactly those, keeping two per platform and the release."""
    config = str(old_feed(tmp_path))
    assert main(["feed", "prune", "--dry-run", "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "community: would delete 10 files"
    windows = [line for line in out if WINDOWS in line]
    assert len(windows) == 2
    assert windows[0].startswith(f"  numpy/numpy-2.0.dev0-{WINDOWS}.whl: dev_max_age: 60d old,")
    assert f"group {WINDOWS}" in windows[0]
    assert len(list((tmp_path / "feed" / "numpy").iterdir())) == 15
    assert main(["feed", "prune", "--config", config]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "community: deleted 10 files"
    kept = sorted(p.name for p in (tmp_path / "feed" / "numpy").iterdir())
    assert kept == sorted(
        [
            "numpy-1.0-" + LINUX + ".whl",
            *(f"numpy-2.0.dev{d}-{LINUX}.whl" for d in (8, 9)),
            *(f"numpy-2.0.dev{d}-{WINDOWS}.whl" for d in (2, 3)),
        ]
    )


def test_delete_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """delete --version trashes every file of that version; restore brings them back."""
    config = str(old_feed(tmp_path))
    assert (
        main(["feed", "delete", "community", "numpy", "--version", "2.0.dev3", "--config", config])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == [
        f"moved to the trash: numpy/numpy-2.0.dev3-{LINUX}.whl",
        f"moved to the trash: numpy/numpy-2.0.dev3-{WINDOWS}.whl",
    ]
    assert not (tmp_path / "feed" / "numpy" / f"numpy-2.0.dev3-{LINUX}.whl").exists()
    assert (
        main(
            [
                "feed",
                "restore",
                "community",
                "numpy",
                "--file",
                f"numpy-2.0.dev3-{LINUX}.whl",
                "--config",
                config,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"restored: numpy/numpy-2.0.dev3-{LINUX}.whl\n"
    assert (tmp_path / "feed" / "numpy" / f"numpy-2.0.dev3-{LINUX}.whl").exists()


def test_unknown_feed_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown feed is a usage error naming the hosted feeds; a missing file exits 1."""
    config = str(old_feed(tmp_path))
    assert main(["feed", "delete", "nope", "numpy", "--config", config]) == 2
    assert "no hosted feed named 'nope' (hosted feeds: community)" in capsys.readouterr().err
    assert (
        main(["feed", "delete", "community", "numpy", "--file", "x.whl", "--config", config]) == 1
    )
    assert "numpy/x.whl is not listed" in capsys.readouterr().err
