"""How the suite finds the programs it drives (uv, hadolint, Chromium, the container engine).

The README's test command must pass on a fresh machine without an activated venv: the test
extra's programs are found beside the running interpreter, and a missing optional part (a
browser, an engine) skips with how to install it, unless CI asks for it to be a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import needs, tool, uv_bin


def test_uv_is_found_beside_the_interpreter_with_an_empty_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing on PATH, the test extra's uv is still found, and it runs."""
    monkeypatch.setenv("PATH", "")
    found = uv_bin()
    assert Path(found).parent == Path(sys.executable).parent
    done = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("uv ")


def test_a_program_only_on_path_is_found_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that is not beside the interpreter is looked up on PATH; absent, None."""
    program = tmp_path / "nightproxy-test-probe"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tool(program.name) == str(program)
    monkeypatch.setenv("PATH", os.devnull)
    assert tool(program.name) is None


def test_a_missing_part_skips_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the require variable, a missing part is a skip whose reason says how to get it."""
    monkeypatch.delenv("NIGHTPROXY_REQUIRE_PROBE", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        needs(None, "Probe", "apt-get install probe", "NIGHTPROXY_REQUIRE_PROBE")
    assert str(skipped.value) == "Probe is not available: apt-get install probe"


def test_the_require_variable_turns_the_skip_into_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the require variable at 1 (as .ci/run sets it), a missing part fails the test."""
    monkeypatch.setenv("NIGHTPROXY_REQUIRE_PROBE", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        needs(None, "Probe", "apt-get install probe", "NIGHTPROXY_REQUIRE_PROBE")
    assert "apt-get install probe" in str(failed.value)
    assert needs("/usr/bin/probe", "Probe", "-", "NIGHTPROXY_REQUIRE_PROBE") == "/usr/bin/probe"
