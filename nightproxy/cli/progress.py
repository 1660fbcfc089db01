"""A progress bar for long copies, drawn only on a terminal.

Piped or redirected (CI logs, cron mail), the commands print their one summary line and nothing
else: a bar redrawn ten times a second is noise in a log file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from nightproxy.cache.transfer import Progress


@contextmanager
def progress_bar(description: str, stream: TextIO | None = None) -> Iterator[Progress | None]:
    """A ``(done, total)`` callback that draws a bar on ``stream`` (stderr) if it is a terminal;
    None otherwise."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        yield None
        return
    # Only here: rich takes a noticeable share of a short command's start-up.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield report
