"""Circus's watcher hooks, run as commands (issue 11, item 12).

A Circus hook is a Python function circusd calls at a point of a watcher's life;
here it is a command (config/hooks.py reads it), and its exit status is the
function's return value: 0 is True, anything else False.  What a False does is
Circus 0.19's (circus/watcher.py):

  before_start   False: the start fails (the watcher goes FATAL, `start` errs)
  after_start    False: the workers just started are stopped, the start fails
  before_spawn   False: that worker is not started: a failed start for the
                 restart policy (backoff, then FATAL).  Circus stops the whole
                 watcher at once; here the restart policy gets there.
  after_spawn    False: that worker is stopped, a failed start (Circus kills it)
  before_signal  False: the signal is not sent to that worker (SIGKILL is):
                 the `signal` command's, and a stop signal (stop, restart,
                 a reload retiring it, scaling down), after which the worker
                 is SIGKILLed at graceful_timeout, as in Circus.  (The SIGKILL
                 of that escalation does not go through the hooks.)
  after_signal, before_reap, after_reap, before_stop, after_stop: logged only

A hook that *cannot answer* -- its program will not exec, it is killed by a
signal, it overruns `hook_timeout` -- is Circus's hook that raised: counted as
False, except for the hooks Circus ignores failures of (before_stop, after_stop,
before_signal, after_signal) and those given `, true` (Circus's ignore_failure).
Either way sockvisor publishes `watcher.NAME.hook_success` / `hook_failure`, as
Circus does.

How it runs: forked and exec'd as a worker is (process.fork_exec: its own
session and process group, the watcher's uid, gid, groups, umask and
working_dir; never as root unless the watcher's workers are), with the
watcher's environment and the hook's context: SOCKVISOR_HOOK, SOCKVISOR_WATCHER
and, where Circus passes them, SOCKVISOR_PID, SOCKVISOR_WID, SOCKVISOR_SIGNAL,
SOCKVISOR_EXIT_CODE.  No sockets, no NOTIFY_SOCKET.  Its exit comes through the
reaper (the one place that waits for children: asyncio's subprocesses would wait
for themselves and race it), so nothing blocks the event loop; at `hook_timeout`
its whole process group is SIGKILLed.  Its output goes where the watcher's
workers' does (the same sinks: prefix, files, `logs`).

before_reap and after_reap: sockvisor reaps an exited worker at once (holding a
zombie for a hook would hold its pid), so both run after the exit was seen, in
that order, and neither delays the replacement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable

from sockvisor import process
from sockvisor.config import WatcherConfig
from sockvisor.reaper import describe_status

if TYPE_CHECKING:
    from sockvisor.launcher import WatcherContext
    from sockvisor.output import OutputSink

log = logging.getLogger("sockvisor.hooks")

# Circus's ignore_hook_failure default: a failure of these does not stop anything.
FAILURE_IGNORED = frozenset({"before_stop", "after_stop", "before_signal", "after_signal"})


class HookFailed(Exception):
    """A guarding hook said False (or could not answer); the text says which and why."""


class HookRunner:
    """Runs one watcher's hooks; `sinks` gives the watcher's current output sinks."""

    def __init__(self, name: str, context: "WatcherContext",
                 sinks: Callable[[], "tuple[OutputSink, OutputSink]"]):
        self.name = name
        self.context = context
        self.sinks = sinks
        self._background: set[asyncio.Task] = set()
        self.running = 0   # hooks whose process has not been reaped yet

    def busy(self) -> bool:
        """Whether a hook runs or waits to run (an upgrade waits for none: its
        process and the task awaiting it would not cross the exec)."""
        return self.running > 0 or bool(self._background)

    def has(self, config: WatcherConfig, *points: str) -> bool:
        return any(point in config.hooks for point in points)

    async def check(self, config: WatcherConfig, point: str, **context: Any) -> None:
        """Run `point`'s hook; HookFailed if it answered False."""
        error = await self.run(config, point, **context)
        if error:
            raise HookFailed(f"{point} hook of {self.name} failed: {error}")

    async def run(self, config: WatcherConfig, point: str, **context: Any) -> str:
        """Run `point`'s hook (if any) with `context` (pid, wid, signum, exit_code);
        "" for True, else why it counts as False."""
        hook = config.hooks.get(point)
        if hook is None:
            return ""
        started = time.time()
        self.running += 1
        try:
            status, failure = await self._execute(config, point, hook.argv, context)
        finally:
            self.running -= 1
        if failure is None and status == 0:
            self.context.publish(f"watcher.{self.name}.hook_success",
                                 {"name": point, "time": started})
            log.debug("watcher %s: %s hook succeeded", self.name, point)
            return ""
        if failure is None:
            answer = f"{hook.argv[0]} exited with status {os.WEXITSTATUS(status)}"
            ignored = False
        else:
            answer = failure
            ignored = point in FAILURE_IGNORED or hook.ignore_failure
        self.context.publish(f"watcher.{self.name}.hook_failure",
                             {"name": point, "time": started, "error": answer})
        if ignored:
            log.warning("watcher %s: %s hook failed (%s); ignored", self.name, point,
                        answer)
            return ""
        log.warning("watcher %s: %s hook: %s", self.name, point, answer)
        return answer

    def run_later(self, config: WatcherConfig, points: tuple[str, ...],
                  **context: Any) -> None:
        """Run the hooks of `points` one after the other, in the background (their
        answers are only logged)."""
        if not self.has(config, *points):
            return

        async def run_all() -> None:
            for point in points:
                await self.run(config, point, **context)
        task = asyncio.ensure_future(run_all())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the process

    async def _execute(self, config: WatcherConfig, point: str, argv: tuple[str, ...],
                       context: dict[str, Any]) -> tuple[int, str | None]:
        """(wait status, None) once the hook exited; (-1, why) if it never answered."""
        env = process.identity_env(config)
        env.update(SOCKVISOR_HOOK=point, SOCKVISOR_WATCHER=self.name)
        for key, variable in (("pid", "SOCKVISOR_PID"), ("wid", "SOCKVISOR_WID"),
                              ("signum", "SOCKVISOR_SIGNAL"),
                              ("exit_code", "SOCKVISOR_EXIT_CODE")):
            if context.get(key) is not None:
                env[variable] = str(context[key])
        stdout, stderr = self.sinks()
        out_child, out_read = stdout.child_fd()
        err_child, err_read = stderr.child_fd()
        groups = (process.user_groups(config.user, config.gid)
                  if config.uid is not None or config.gid is not None else None)
        spec = process.SpawnSpec(argv=list(argv), env=env, fds=[], stdout=out_child,
                                 stderr=err_child, uid=config.uid, gid=config.gid,
                                 groups=groups, umask=config.umask,
                                 cwd=config.working_dir)
        try:
            # Contained as a worker is (DESIGN §5): its own cgroup where cgroups are
            # in use, its own process group always; whatever it started ends when
            # it is reaped -- a hook is no way to leave a daemon behind.
            if self.context.cgroups is not None:
                spec.cgroup = self.context.cgroups.new_leaf(f"{self.name}.hook")
            pid, status_r = process.fork_exec(spec)
        except OSError as exc:
            os.close(out_read)
            os.close(err_read)
            return -1, f"cannot fork: {exc.strerror}"
        finally:
            os.close(out_child)
            os.close(err_child)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()
        cgroup = spec.cgroup

        def before_reap() -> None:
            # A zombie still: its pid, the group's id, cannot be reused yet.
            if cgroup is not None:
                cgroup.kill()
            _kill_group(pid)

        def reaped(status: int) -> None:
            if cgroup is not None:
                cgroup.release()
            if not exited.done():
                exited.set_result(status)
        # Registered before the loop runs again: the exit cannot be missed.
        self.context.reaper.register(pid, reaped, before_reap)
        stdout.attach(loop, out_read, pid)
        stderr.attach(loop, err_read, pid)
        log.debug("watcher %s: %s hook started as pid %d", self.name, point, pid)
        try:
            status = await asyncio.wait_for(asyncio.shield(exited), config.hook_timeout)
        except asyncio.TimeoutError:
            # Not reaped yet (the future would be done), so the group id is still its.
            _kill_group(pid)
            await asyncio.shield(exited)
            os.close(status_r)
            return -1, (f"{argv[0]} did not exit within hook_timeout "
                        f"({config.hook_timeout:g}s): killed")
        except asyncio.CancelledError:
            _kill_group(pid)   # sockvisor is stopping: the reaper collects it
            os.close(status_r)
            raise
        # Exited: the status pipe's write end is closed, so this does not block.
        try:
            error = process.read_spawn_status(status_r)
        finally:
            os.close(status_r)
        if error is not None:
            return -1, process.describe_spawn_error(error, argv[0])
        if os.WIFSIGNALED(status):
            return -1, f"{argv[0]} was {describe_status(status)}"
        return status, None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
