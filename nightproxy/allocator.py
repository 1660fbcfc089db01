"""Keep the C allocator from handing download buffers back to the kernel after every batch.

A cold download moves through the process as receive buffers of up to 1 MiB, held in batches
of up to 4 MiB until the disk thread has written them (``cache/fill.py``). glibc's defaults
return such memory to the kernel as soon as it is freed (buffers above its mmap threshold are
unmapped, and free space above its trim threshold at the top of the heap is released), so the
next batch faults fresh pages in again: 4,200 to 9,200 page faults per 50 MB download, measured.
Raising both thresholds above a batch keeps the pages in the process. Peak memory does not grow
(it is set by what is live at once); the heap only stops shrinking below that peak between
downloads, by at most ``TRIM_THRESHOLD``.

``nightproxy serve`` calls :func:`tune_allocator` once at start-up. The environment variables
glibc reads itself (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) win: when either is
set, nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Mapping

#: Freed memory at the top of the heap kept for reuse: several batches' worth.
TRIM_THRESHOLD = 32 * 1024 * 1024
#: Allocations below this come from the heap rather than their own mapping (glibc's own dynamic
#: threshold grows to 32 MiB at most; fixing it here keeps 1 MiB receive buffers off mmap).
MMAP_THRESHOLD = 16 * 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENV_OVERRIDES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def should_tune(env: Mapping[str, str], libc: str) -> bool:
    """Only glibc has these knobs, and an operator's own settings are left alone."""
    return libc == "glibc" and not any(name in env for name in ENV_OVERRIDES)


def tune_allocator(env: Mapping[str, str]) -> bool:
    """Raise glibc's trim and mmap thresholds; True when they were changed."""
    if not should_tune(env, platform.libc_ver()[0]):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.
    return bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
