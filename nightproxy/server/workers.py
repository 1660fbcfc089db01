"""Several serving processes on one port: the parent that starts, watches and stops them.

With ``server.workers`` above 1, ``nightproxy serve`` binds the listening sockets in this
process and forks that many workers, which share them (the kernel gives each new connection to
whichever worker accepts it first) and one cache directory. The parent serves nothing itself:

- a worker that dies is started again, after a delay that doubles (up to ``RESTART_MAX``) while
  it keeps dying young, so that a crash loop does not spin;
- a worker of the first start that dies before it accepts connections stops the server
  (exit 1): the same failure would keep every worker from starting;
- SIGTERM or SIGINT (logged) closes the parent's copy of the listening sockets and passes
  SIGTERM on: each worker drains as a single server does; one still running after
  ``stop_timeout`` is killed;
- SIGHUP is passed on to every worker, which reloads its TLS certificate (``server.tls``);
- a worker notices the parent is gone (a pipe only the parent holds the writing end of
  reaches its end) and stops as on SIGTERM, so that killing the parent never leaves workers
  behind.

The parent stays single-threaded and runs no event loop, so that forking it is safe; each
worker starts its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nightproxy.config import Config
from nightproxy.logs import flush_logs
from nightproxy.server import shared_metrics
from nightproxy.server.app import DRAIN_TIMEOUT, create_app
from nightproxy.server.runner import READY, run_worker

log = logging.getLogger(__name__)

#: Where the workers share their metrics, under ``cache.dir``.
METRICS_DIR = "metrics"
#: How long past a worker's own drain the parent waits before it kills the worker.
STOP_MARGIN = 15.0
#: The first delay before a dead worker is started again.
RESTART_DELAY = 0.5
#: The longest delay, reached by doubling while a worker keeps dying young.
RESTART_MAX = 30.0
#: A worker that ran this long before it died is restarted after ``RESTART_DELAY`` again.
STABLE_AFTER = 30.0

#: Runs in a forked worker: ``(index, ready_fd, alive_fd)``. It writes ``READY`` to
#: ``ready_fd`` once it accepts connections, and stops when ``alive_fd`` reaches its end.
WorkerMain = Callable[[int, int, int], None]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (*_STOP_SIGNALS, signal.SIGCHLD, signal.SIGHUP)


@dataclass(slots=True)
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    #: The delay before the next start, doubled at each death of a young worker.
    delay: float = RESTART_DELAY / 2
    due: float | None = None


class Supervisor:
    """Keeps ``count`` workers serving ``sockets`` until SIGTERM or SIGINT."""

    def __init__(
        self,
        count: int,
        sockets: Sequence[socket.socket],
        worker: WorkerMain,
        *,
        shared_dir: Path,
        stop_timeout: float,
    ) -> None:
        self.slots = [_Slot(i) for i in range(count)]
        self.sockets = list(sockets)
        self.worker = worker
        self.shared_dir = shared_dir
        self.stop_timeout = stop_timeout
        self.stopping = False
        self.failed = False
        self._announced = False
        self._pending = b""
        self._wake_r, self._wake_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        # Only this process ever holds the writing end: its end means the parent is gone.
        self._alive_r, self._alive_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)

    def run(self) -> int:
        """Serve until told to stop; the exit status for the whole server."""
        previous = {signum: signal.signal(signum, _noop) for signum in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self.stopping:
                self._wait(self._until_due())
                self._reap()
                self._start_due()
                flush_logs()
            return self._stop_all()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w, self._alive_r):
                os.close(fd)
            os.close(self._alive_w)
            flush_logs()

    # -- workers -----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        flush_logs()  # or the child would write the parent's buffered lines again
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's code, measured in the worker tests
            self._child(slot.index)
        slot.pid, slot.started, slot.ready, slot.due = pid, time.monotonic(), False, None
        log.info("started worker %d (pid %d)", slot.index, pid)

    def _child(self, index: int) -> None:  # pragma: no cover - runs in the forked worker
        code = 1
        try:
            # Its own process group: a terminal's Ctrl-C reaches the parent, which passes
            # SIGTERM on, rather than every process at once.
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._alive_w):
                os.close(fd)
            self.worker(index, self._ready_w, self._alive_r)
            code = 0
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            flush_logs()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._exited(slot, status)

    def _exited(self, slot: _Slot, status: int) -> None:
        pid, slot.pid = slot.pid, 0
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        with contextlib.suppress(OSError):
            shared_metrics.retire(self.shared_dir, pid)
        if self.stopping:
            if code != 0:
                self.failed = True
                log.warning("worker %d (pid %d) %s while stopping", slot.index, pid, how)
            return
        if not slot.ever_ready:
            log.error("worker %d (pid %d) %s before it was ready: stopping", slot.index, pid, how)
            self.failed = True
            self.stopping = True
            return
        lived = time.monotonic() - slot.started
        slot.delay = RESTART_DELAY if lived >= STABLE_AFTER else min(slot.delay * 2, RESTART_MAX)
        slot.due = time.monotonic() + slot.delay
        log.warning(
            "worker %d (pid %d) %s; starting it again in %.1f s", slot.index, pid, how, slot.delay
        )

    def _until_due(self) -> float | None:
        due = [s.due for s in self.slots if s.due is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.due is not None and slot.due <= now:
                self._spawn(slot)

    # -- events ------------------------------------------------------------------------------

    def _wait(self, timeout: float | None) -> None:
        """Until a signal, a worker's readiness, or ``timeout``."""
        readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                for signum in os.read(self._wake_r, 512):
                    self._signal(signum)
        if self._ready_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._pending += os.read(self._ready_r, 4096)
            while len(self._pending) >= READY.size:
                index, pid = READY.unpack_from(self._pending)
                self._pending = self._pending[READY.size :]
                self._ready(index, pid)

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            # Each worker reloads its TLS certificate, or says it has nothing to reload.
            for slot in self.slots:
                if slot.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGHUP)
        elif signum in _STOP_SIGNALS:
            name = signal.Signals(signum).name
            if self.stopping:
                log.info("%s: already stopping, waiting for the workers to finish", name)
            else:
                log.info(
                    "%s: stopping %d workers; no new connections, finishing the responses in "
                    "flight",
                    name,
                    sum(1 for s in self.slots if s.pid),
                )
                self.stopping = True

    def _ready(self, index: int, pid: int) -> None:
        slot = self.slots[index] if index < len(self.slots) else None
        if slot is None or slot.pid != pid:
            return  # a worker that has died since
        slot.ready = slot.ever_ready = True
        log.debug("worker %d (pid %d) accepts connections", index, pid)
        if not self._announced and all(s.ever_ready for s in self.slots):
            self._announced = True
            log.info("all %d workers accept connections", len(self.slots))

    # -- stopping ----------------------------------------------------------------------------

    def _stop_all(self) -> int:
        # The listening sockets close for good once the workers have closed theirs too: new
        # connections are refused rather than queued for a process that will not accept.
        for sock in self.sockets:
            sock.close()
        for slot in self.slots:
            slot.due = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(s.pid for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wait(min(left, 1.0))
            self._reap()
            flush_logs()
        for slot in self.slots:
            if slot.pid:
                log.warning(
                    "worker %d (pid %d) still running after %.0f s: killed",
                    slot.index,
                    slot.pid,
                    self.stop_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    _pid, status = os.waitpid(slot.pid, 0)
                    self.failed = True
                    self._exited(slot, status)
        log.info("stopped")
        return 1 if self.failed else 0


def _noop(_signum: int, _frame: object) -> None:
    """Installed so that the signal reaches the wake-up pipe (and does not kill the parent)."""


def serve_workers(
    config: Config, sockets: Sequence[socket.socket], count: int, *, shutdown_timeout: float
) -> int:
    """Serve ``config`` on ``sockets`` with ``count`` worker processes; the exit status."""
    shared_dir = config.cache.dir / METRICS_DIR
    shared_metrics.prepare(shared_dir)

    def worker(index: int, ready_fd: int, alive_fd: int) -> None:
        app = create_app(config, shared=shared_metrics.SharedDir(shared_dir))
        run_worker(
            app,
            sockets,
            shutdown_timeout=shutdown_timeout,
            index=index,
            ready_fd=ready_fd,
            alive_fd=alive_fd,
        )

    # A worker's drain: aiohttp's two waits of ``shutdown_timeout``, then the downloads.
    stop_timeout = 2 * shutdown_timeout + DRAIN_TIMEOUT + STOP_MARGIN
    supervisor = Supervisor(
        count, sockets, worker, shared_dir=shared_dir, stop_timeout=stop_timeout
    )
    return supervisor.run()
