"""The one place that waits for children.

SIGCHLD (delivered into the event loop by asyncio) triggers a `waitpid(-1, WNOHANG)`
loop that collects every child that has exited, so there is no polling and no zombie:
a pid that nobody registered — an orphan re-parented to us because we are PID 1 or
a child subreaper — is reaped and logged too.  Nothing else in sockvisor may wait for
a child (no `subprocess` in the supervisor), or it would steal statuses from here
(the one exception, cgroup.py's probe, runs before the reaper starts).

Orphans without cgroups.  An adopted orphan is a worker's descendant that left
the worker's process group (a daemon: fork, setsid, fork) and whose parent died.
With a cgroup per worker it is in the worker's cgroup and dies with it; without,
`stops_orphans` makes the reaper attribute it when a worker exits: the kernel
keeps no trace of where an orphan came from, but its environment does —
`LISTEN_PID` is the pid of the worker it descends from (set for every worker,
inherited by what it starts, and still in /proc/PID/environ after a program
unsets it, which only edits its own copy).  A program that execs with a
rewritten environment loses that trace; such orphans, like every adopted orphan,
are stopped when sockvisor stops (`stop_orphans`).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from typing import Callable

import psutil

log = logging.getLogger("sockvisor.reaper")

ExitCallback = Callable[[int], None]   # receives the raw wait status

PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.callbacks: dict[int, tuple[ExitCallback, Callable[[], None] | None]] = {}
        self.orphans_reaped = 0
        # We adopt orphans (subreaper or PID 1) and no cgroup contains them: stop
        # those a worker leaves when it exits (see the module docstring).
        self.stops_orphans = False
        self._reaped = asyncio.Event()   # set after each reap pass that reaped something

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
            if callback is not None and self.stops_orphans:
                self._stop_orphans_of(pid)
            try:
                _, status = os.waitpid(pid, 0)   # a zombie already: does not block
            except ChildProcessError:
                continue
            self._reaped.set()
            if callback is None:
                self.orphans_reaped += 1
                log.debug("reaped orphan pid %d (%s)", pid, describe_status(status))
                continue
            try:
                callback(status)
            except Exception:
                log.exception("exit handler for pid %d failed", pid)


    # ---- adopted orphans

    def orphans(self) -> list[int]:
        """Our live children nobody registered: orphans we adopted."""
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return []
        found = []
        for child in children:
            if child.pid in self.callbacks:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return found

    def _stop_orphans_of(self, worker_pid: int) -> None:
        """`worker_pid` is exiting (a zombie, not yet reaped): SIGKILL the orphans
        that descend from it.  Our children cannot be reaped by anyone else, so
        their pids are stable while we look."""
        marker = f"\0LISTEN_PID={worker_pid}\0".encode()
        for pid in self.orphans():
            if marker in _environ(pid):
                log.info("killing pid %d, an orphan left by worker %d", pid, worker_pid)
                _kill(pid)

    async def stop_orphans(self, timeout: float = 5.0) -> None:
        """sockvisor is stopping: SIGKILL every adopted orphan and reap it (bounded)."""
        pending = set(self.orphans())
        if not pending:
            return
        log.info("killing %d orphan(s) left by workers", len(pending))
        for pid in pending:
            _kill(pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while set(self.orphans()) & pending:   # re-checked after each SIGCHLD
            self._reaped.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("orphans still alive after SIGKILL: %s",
                            sorted(set(self.orphans()) & pending))
                return
            try:
                await asyncio.wait_for(self._reaped.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def _environ(pid: int, limit: int = 1 << 20) -> bytes:
    """The environment `pid` was started with: NUL-separated KEY=VALUE entries,
    with a NUL added at each end so that a whole entry can be matched; empty if
    unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return b"\0" + handle.read(limit) + b"\0"
    except OSError:
        return b""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
