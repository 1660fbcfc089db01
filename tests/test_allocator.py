"""``nightproxy serve`` keeps download buffers in the process instead of refaulting them."""

from __future__ import annotations

import platform
import subprocess
import sys

from nightproxy.allocator import ENV_OVERRIDES, should_tune, tune_allocator

# Cycles of what a cold download does to memory: 1 MiB receive buffers held in a 4 MiB batch,
# then freed. Prints the page faults the cycles took (after one warm-up cycle).
WORKLOAD = """
import os, resource, sys
from nightproxy.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator({}), "thresholds not raised"
def cycle():
    batch = [b"x" * (1 << 20) for _ in range(4)]
    del batch
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_only_glibc_is_tuned() -> None:
    """The thresholds are glibc's: another C library is left as it is."""
    assert should_tune({}, "glibc")
    assert not should_tune({}, "")
    assert not should_tune({}, "musl")


def test_an_operators_own_malloc_settings_win() -> None:
    """With glibc's own environment variables set, nightproxy changes nothing."""
    for name in ENV_OVERRIDES:
        assert not should_tune({name: "131072"}, "glibc")
        assert not tune_allocator({name: "131072"})


def test_freed_batches_are_reused_instead_of_refaulted() -> None:
    """After tuning, freeing and reallocating 4 MiB batches of 1 MiB buffers no longer
    faults fresh pages in each time: the memory stays in the process."""
    if platform.libc_ver()[0] != "glibc":
        assert not tune_allocator({})
        return
    untuned, tuned = _faults("default"), _faults("tuned")
    # Untuned, each cycle refaults about 1,000 pages; tuned, almost none.
    assert untuned > 10_000, untuned
    assert tuned * 10 < untuned, (tuned, untuned)
