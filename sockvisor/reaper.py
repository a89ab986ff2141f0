"""The one place that waits for children.

SIGCHLD (delivered into the event loop by asyncio) triggers a `waitpid(-1, WNOHANG)`
loop that collects every child that has exited, so there is no polling and no zombie:
a pid that nobody registered — an orphan re-parented to us because we are PID 1 or
a child subreaper — is reaped and logged too.  Nothing else in sockvisor may wait for
a child (no `subprocess` in the supervisor), or it would steal statuses from here.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from typing import Callable

log = logging.getLogger("sockvisor.reaper")

ExitCallback = Callable[[int], None]   # receives the raw wait status

PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.callbacks: dict[int, tuple[ExitCallback, Callable[[], None] | None]] = {}
        self.orphans_reaped = 0

    def start(self) -> None:
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()   # anything that exited before the handler was in place

    def close(self) -> None:
        self.loop.remove_signal_handler(signal.SIGCHLD)

    def register(self, pid: int, callback: ExitCallback,
                 before_reap: Callable[[], None] | None = None) -> None:
        """Call `callback(status)` when `pid` exits.  Register right after fork,
        before returning to the loop, so the exit cannot be missed.

        `before_reap` runs while the exited child is still a zombie, so its pid —
        and so its process group id — cannot have been reused yet: the one moment
        when killing what is left of its group is safe.
        """
        self.callbacks[pid] = (callback, before_reap)

    def reap(self) -> None:
        while True:
            try:
                # Peek without reaping (WNOWAIT): the pid stays pinned until waitpid.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            callback, before_reap = self.callbacks.pop(pid, (None, None))
            if before_reap is not None:
                try:
                    before_reap()
                except Exception:
                    log.exception("pre-reap handler for pid %d failed", pid)
            try:
                _, status = os.waitpid(pid, 0)   # a zombie already: does not block
            except ChildProcessError:
                continue
            if callback is None:
                self.orphans_reaped += 1
                log.debug("reaped orphan pid %d (%s)", pid, describe_status(status))
                continue
            try:
                callback(status)
            except Exception:
                log.exception("exit handler for pid %d failed", pid)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def become_subreaper() -> bool:
    """Adopt orphaned descendants (daemonising workers) instead of init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper: %s",
                    os.strerror(ctypes.get_errno()))
        return False
    return True
