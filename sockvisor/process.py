"""One worker process: fork/exec with its sockets at fds 3…, its environment, its
privileges dropped, and the way it is stopped.

Why our own fork/exec instead of `subprocess`: the sd_listen_fds convention needs
the sockets renumbered to 3, 4, … and `LISTEN_PID` set to the *child's* pid, which
is only known after fork; and `PR_SET_PDEATHSIG` must be set after the uid change
(the kernel clears it on a credential change).  The child runs only `os.*` calls
between fork and exec.  Failures there (a missing binary, a bad working_dir) travel
back over a close-on-exec pipe: EOF means exec succeeded, bytes mean it failed.

Containment: the child moves itself into its own cgroup (see cgroup.py) first
thing after fork, where cgroups are in use, and makes itself a session and
process group leader.  Whenever the worker is gone — stopped, crashed, killed —
everything left in its cgroup and its process group is SIGKILLed (`before_reap`,
while the worker is a zombie, so its pid cannot name anyone else yet).

Signals: all signals are blocked around fork, so that a signal arriving in the
child before exec can never run sockvisor's handlers (which would write into the
event loop's wake-up fd, shared with the parent).  The child resets every handler
to the default, including SIGPIPE which Python ignores, then unblocks and execs.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import resource
import signal
import threading
import time

import _signal  # pthread_sigmask without the enum conversion (0.3 ms a call)
from dataclasses import dataclass, field
from typing import Callable, Mapping

from sockvisor import fdlimit
from sockvisor.cgroup import WorkerCgroup, place_self
from sockvisor.config import RLIMITS, WatcherConfig
from sockvisor.states import WORKER_TRANSITIONS, WorkerState, check_transition

log = logging.getLogger("sockvisor.process")

PR_SET_PDEATHSIG = 1
LEFTOVER_TIMEOUT = 5.0   # how long `stop` waits for SIGKILLed descendants to be gone
_libc = ctypes.CDLL(None, use_errno=True)
_ALL_SIGNALS = {int(s) for s in signal.valid_signals()} - {signal.SIGKILL, signal.SIGSTOP}


@dataclass
class SpawnSpec:
    """Everything the child needs, computed in the parent before fork."""
    argv: list[str]
    env: dict[str, str]               # LISTEN_PID is added in the child
    fds: list[int]                    # become 3, 4, … in this order
    stdout: int | None = None         # None: inherit sockvisor's
    stderr: int | None = None
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    umask: int | None = None
    cwd: str | None = None
    rlimits: Mapping[str, int] = field(default_factory=dict)
    pdeathsig: int = signal.SIGKILL
    cgroup: WorkerCgroup | None = None   # the leaf the child moves itself into


class SpawnError(Exception):
    """The child could not exec; `stage` says what it was doing."""

    def __init__(self, stage: str, err: int, detail: str):
        self.stage = stage
        self.errno = err
        self.detail = detail
        super().__init__(f"{stage}: {detail}")


def fork_exec(spec: SpawnSpec) -> tuple[int, int]:
    """Fork and exec `spec`; return (pid, read end of the exec-status pipe).

    From the main thread only (RuntimeError otherwise): PR_SET_PDEATHSIG fires
    when the *thread* that forked the child ends, and an upgrade's exec
    (upgrade.py) ends every thread but the main one -- a worker forked from a
    thread would be killed by the upgrade that must keep it."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("workers are forked from the main thread only "
                           "(PDEATHSIG follows the forking thread)")
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    parent_pid = os.getpid()
    old_mask = _signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:  # child: never returns
            _child(spec, stdin, status_w, parent_pid, old_mask)
    except BaseException:
        os.close(status_r)
        if spec.cgroup is not None:
            spec.cgroup.discard()   # no child: nothing was ever in it
        raise
    finally:
        if pid != 0:
            _signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(status_w)
        os.close(stdin)
        if spec.cgroup is not None:
            spec.cgroup.close_procs_fd()
    return pid, status_r


def _child(spec: SpawnSpec, stdin: int, status_w: int, parent_pid: int,
           old_mask: set) -> None:
    stage = "start"
    try:
        stage = "signals"
        signal.set_wakeup_fd(-1)
        for signum in _ALL_SIGNALS:
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        if spec.cgroup is not None and spec.cgroup.procs_fd is not None:
            # Before anything else runs, and while still root: from here on,
            # whatever this process starts is born in the worker's cgroup.
            stage = "cgroup"
            place_self(spec.cgroup.procs_fd)
        stage = "setsid"
        os.setsid()   # own session and process group: stoppable as a group,
                      # and a terminal's Ctrl-C goes to sockvisor, not to workers
        if spec.umask is not None:
            os.umask(spec.umask)
        stage = "working_dir"
        if spec.cwd is not None:
            os.chdir(spec.cwd)
        stage = "fds"
        status_w = _arrange_fds(spec, stdin, status_w)
        stage = "rlimits"   # after the fds: a dup above a lower limit would fail
        fdlimit.give_back()   # the soft RLIMIT_NOFILE sockvisor started with
        for name, value in spec.rlimits.items():
            limit = resource.RLIM_INFINITY if value < 0 else value
            resource.setrlimit(RLIMITS[name], (limit, limit))
        stage = "privileges"
        if spec.uid is not None or spec.gid is not None:
            if spec.groups is not None:
                os.setgroups(spec.groups)
            if spec.gid is not None:
                os.setresgid(spec.gid, spec.gid, spec.gid)
            if spec.uid is not None:
                os.setresuid(spec.uid, spec.uid, spec.uid)
        stage = "pdeathsig"
        # After the uid change: the kernel clears the setting on credential changes.
        if _libc.prctl(PR_SET_PDEATHSIG, spec.pdeathsig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if os.getppid() != parent_pid:
            os._exit(0)   # sockvisor died between fork and prctl
        stage = "exec"
        env = dict(spec.env)
        env["LISTEN_PID"] = str(os.getpid())
        _signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.execvpe(spec.argv[0], spec.argv, env)
    except BaseException as exc:  # noqa: BLE001 - must reach the parent, then exit
        err = getattr(exc, "errno", None) or 0
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        message = f"{stage}\0{err}\0{detail}".encode(errors="replace")
        try:
            os.write(status_w, message[:4000])
        finally:
            os._exit(127)


def _arrange_fds(spec: SpawnSpec, stdin: int, status_w: int) -> int:
    """Put stdin/out/err and the sockets at 0, 1, 2, 3…; close every other fd.

    Sources are first copied above the highest target so that a dup2 onto a
    target can never clobber a source still to be placed; dup2 clears
    close-on-exec on the target, the copies keep it.
    """
    targets: dict[int, int] = {0: stdin}
    if spec.stdout is not None:
        targets[1] = spec.stdout
    if spec.stderr is not None:
        targets[2] = spec.stderr
    for index, fd in enumerate(spec.fds):
        targets[3 + index] = fd
    first_free = 3 + len(spec.fds)
    status_w = _fcntl_dupfd_cloexec(status_w, first_free)
    staged = {target: _fcntl_dupfd_cloexec(source, first_free)
              for target, source in targets.items()}
    for target, copy in staged.items():
        os.dup2(copy, target, inheritable=True)
    # Close everything above the sockets but the status pipe (which closes on exec).
    os.closerange(first_free, status_w)
    os.closerange(status_w + 1, os.sysconf("SC_OPEN_MAX"))   # sockvisor's raised limit
    return status_w


def _fcntl_dupfd_cloexec(fd: int, minimum: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)


def read_spawn_status(status_r: int) -> SpawnError | None:
    """Read the exec-status pipe once it is readable: None if exec succeeded."""
    chunks = []
    while True:
        try:
            chunk = os.read(status_r, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return None
    stage, err, detail = (data.decode(errors="replace").split("\0") + ["", ""])[:3]
    return SpawnError(stage, int(err or 0), detail)


class Worker:
    """One process of a watcher, from fork to reap."""

    def __init__(self, config: WatcherConfig, wid: int, generation: int, pid: int,
                 on_state: Callable[["Worker", WorkerState, WorkerState], None]):
        self.config = config          # the configuration this worker was started from
        self.watcher_name = config.name
        self.wid = wid
        self.generation = generation
        self.pid = pid
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.ready_at: float | None = None
        self.exited_at: float | None = None
        self.exec_ok = False
        self.spawn_error: SpawnError | None = None
        self.exit_status: int | None = None
        self.stop_requested = False   # its exit is expected: no replacement
        self.ready_failed = False     # stopped for missing ready_timeout
        self.status_fd: int | None = None   # exec-status pipe, until read
        # Its output pipes: stream -> (read end, the partial-line buffer
        # output.attached holds for it while that pipe is read).
        self.pipes: dict[str, tuple[int, bytearray]] = {}
        self.status_text = ""         # last STATUS= it sent
        self.cgroup: WorkerCgroup | None = None   # its own cgroup, if cgroups are used
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._on_state = on_state
        self._timers: list[asyncio.TimerHandle] = []

    def __repr__(self) -> str:
        return (f"<Worker {self.watcher_name}[{self.pid}] wid={self.wid} "
                f"gen={self.generation} {self.state.value}>")

    @property
    def label(self) -> str:
        return f"{self.watcher_name}[{self.pid}]"

    @property
    def alive(self) -> bool:
        return self.state != WorkerState.EXITED

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def settle_remaining(self, settle: float) -> float | None:
        """Seconds until this worker is *settled* -- ready, and alive `settle`
        seconds since (<= 0: it is) -- or None while it is not ready (or no longer).

        Ready alone proves little: gunicorn says READY=1 before its workers import
        the app, and `ready = started` only says exec worked.  Whatever takes a
        generation for a good one (a reload retiring the old one, start-up telling
        the service manager READY=1) asks this.
        """
        if self.state != WorkerState.RUNNING or self.ready_at is None:
            return None
        return settle - (time.monotonic() - self.ready_at)

    def transition(self, new: WorkerState) -> None:
        """The only place a worker's state changes."""
        old = self.state
        if old == new:
            return
        check_transition(WORKER_TRANSITIONS, old, new)
        self.state = new
        self._on_state(self, old, new)

    def add_timer(self, handle: asyncio.TimerHandle) -> None:
        self._timers.append(handle)

    def mark_ready(self) -> None:
        if self.state != WorkerState.STARTING:
            return
        self.ready_at = time.monotonic()
        self.transition(WorkerState.RUNNING)
        if not self.ready.done():
            self.ready.set_result(None)

    def expect_exit(self) -> None:
        """Its exit is expected from now on (it is being retired): no replacement."""
        self.stop_requested = True

    def fail_ready(self, reason: str) -> None:
        """It missed its ready_timeout: its exit will count as a failed start."""
        self.ready_failed = True
        self.fail_readiness(reason)

    def fail_readiness(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(WorkerNotReady(self, reason))
            # Only a reload awaits `ready`; for any other worker nobody reads the
            # failure, which is logged where the exit is.  Marking it seen keeps
            # asyncio from reporting "exception was never retrieved" for every
            # worker that died young; an awaiter still gets the exception.
            self.ready.exception()

    def on_exit(self, status: int) -> None:
        """Called by the reaper."""
        if self.cgroup is not None:
            self.cgroup.release()   # killed in before_reap; removed once empty
        self.exit_status = status
        self.exited_at = time.monotonic()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self.transition(WorkerState.EXITED)
        self.fail_readiness(f"exited before it was ready ({_status_text(status)})")
        if not self.exited.done():
            self.exited.set_result(status)

    def signal(self, signum: int, process_group: bool = False) -> bool:
        """Send `signum` to the worker (or its whole process group): False if it
        is gone.  (A group signal still reaches the group while the leader is a
        zombie not yet reaped, as before.)"""
        try:
            if process_group:
                os.killpg(self.pid, signum)
                return True
            if self.state == WorkerState.EXITED:
                return False
            os.kill(self.pid, signum)
            return True
        except ProcessLookupError:
            return False

    def kill_group(self) -> None:
        """SIGKILL everything the worker is: its cgroup, and its process group (it
        is the leader: a session leader cannot leave its group, so the group id is
        its pid as long as that pid is not reaped)."""
        if self.cgroup is not None:
            self.cgroup.kill()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, signum: int, graceful_timeout: float, expected: bool = True) -> int:
        """stop signal (to the worker) → wait graceful_timeout → SIGKILL its cgroup
        and process group; return the status once it is reaped and its cgroup empty.

        `expected=False` stops it as a failure (its exit counts toward the restart
        policy), e.g. a worker that missed its ready_timeout.
        """
        if expected:
            self.expect_exit()
        if self.state in (WorkerState.STARTING, WorkerState.RUNNING):
            self.transition(WorkerState.STOPPING)
            self.fail_readiness("stopped before it was ready")
            self.signal(signum)
        if self.state == WorkerState.STOPPING:
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), graceful_timeout)
            except asyncio.TimeoutError:
                log.warning("%s did not exit within graceful_timeout (%gs): SIGKILL",
                            self.label, graceful_timeout)
                self.kill_group()   # still alive, so the group id is still its own
        # Leftovers of the group are killed by `before_reap` when the leader exits.
        status = await asyncio.shield(self.exited)
        if self.cgroup is not None:
            # `stop` means nothing of it runs any more, descendants included.
            await self.cgroup.wait_removed(LEFTOVER_TIMEOUT)
        return status

    def before_reap(self) -> None:
        """The reaper is about to reap us.  On *any* exit — a requested stop, a
        crash, a SIGKILL from outside — what the worker started goes with it: a
        pre-fork master's children must not live on serving old code.  We are a
        zombie now, so our pid, the process group's id, cannot be reused yet."""
        self.kill_group()


    # ---- upgrade (handover.py): what the next sockvisor needs to take it over

    def snapshot(self) -> dict:
        """This worker's state for a handover (times are CLOCK_MONOTONIC)."""
        return {"pid": self.pid, "wid": self.wid, "generation": self.generation,
                "state": self.state.value, "started_at": self.started_at,
                "started_wall": self.started_wall, "ready_at": self.ready_at,
                "exec_ok": self.exec_ok, "stop_requested": self.stop_requested,
                "ready_failed": self.ready_failed, "status_fd": self.status_fd,
                "status_text": self.status_text,
                "cgroup": self.cgroup.name if self.cgroup is not None else None}

    @classmethod
    def restore(cls, config: WatcherConfig, data: dict,
                on_state: Callable[["Worker", WorkerState, WorkerState], None]) -> "Worker":
        """The Worker a previous sockvisor (this very process before its exec)
        was running, as `snapshot` described it; nothing is forked."""
        worker = cls(config, data["wid"], data["generation"], data["pid"], on_state)
        worker.state = WorkerState(data["state"])
        worker.started_at = data["started_at"]
        worker.started_wall = data["started_wall"]
        worker.ready_at = data["ready_at"]
        worker.exec_ok = data["exec_ok"]
        worker.stop_requested = data["stop_requested"]
        worker.ready_failed = data["ready_failed"]
        worker.status_fd = data["status_fd"]
        worker.status_text = data["status_text"]
        if worker.state == WorkerState.RUNNING:
            worker.ready.set_result(None)
        return worker


class WorkerNotReady(Exception):
    def __init__(self, worker: Worker, reason: str):
        self.worker = worker
        self.reason = reason
        super().__init__(f"{worker.label}: {reason}")


def _status_text(status: int) -> str:
    from sockvisor.reaper import describe_status
    return describe_status(status)


def user_groups(user: str | None, gid: int | None) -> list[int] | None:
    """The supplementary groups of `user` (what initgroups would set)."""
    if user is None:
        return [gid] if gid is not None else None
    try:
        return os.getgrouplist(user, gid if gid is not None else 0)
    except OSError:
        return [gid] if gid is not None else []


def identity_env(config: WatcherConfig) -> dict[str, str]:
    """The watcher's environment with HOME, USER and LOGNAME of its user (unless
    the config sets them): what a worker gets before its sockets' variables."""
    env = dict(config.env)
    if config.uid is not None and config.user is not None:
        env.setdefault("HOME", config.home or "/")
        env.setdefault("USER", config.user)
        env.setdefault("LOGNAME", config.user)
    return env


def listen_env(names: list[str]) -> dict[str, str]:
    """LISTEN_FDS / LISTEN_FDNAMES for sockets at 3…; LISTEN_PID is set in the child."""
    if not names:
        return {}
    return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}


def describe_spawn_error(error: SpawnError, argv0: str) -> str:
    if error.stage == "exec" and error.errno == errno.ENOENT:
        return f"cannot execute {argv0!r}: not found"
    if error.stage == "exec" and error.errno == errno.EACCES:
        return f"cannot execute {argv0!r}: permission denied"
    if error.stage == "exec":
        return f"cannot execute {argv0!r}: {error.detail}"
    return f"{error.stage} failed before exec: {error.detail}"


def holders_of(pid: int, inodes: set[int]) -> list[int]:
    """`pid` and those of its descendants that hold a socket of `inodes` (their
    fd tables, /proc/PID/fd); [] if none or they are gone."""
    import psutil
    try:
        tree = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for member in tree:
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{member}/fd/{fd}") in wanted:
                    holders.append(member)
                    break
            except OSError:
                continue
    return holders
