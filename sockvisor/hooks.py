"""Circus's watcher hooks (issue 11, item 12): commands and Python callables.

A Circus hook is a Python function circusd calls at a point of a watcher's life,
and its return value is the answer.  config/hooks.py reads either kind:

  * a command: its exit status is the answer (0 is True, anything else False);
  * a Python callable, `module.function` as Circus configs name it: called with
    Circus's arguments (watcher, arbiter, hook_name, pid, signum, ...) in a
    process of its own (circus_hook_shim.py), whose stand-ins for circusd's
    watcher and arbiter offer what hooks use -- name, env, numprocesses,
    processes[pid].wid/.started, send_signal -- and its return value is the
    answer.  A change to watcher.env applies to the next workers (Launcher.
    change_env), as in Circus; send_signal asks sockvisor, which signals only
    this watcher's own live workers.  A hook that raises is Circus's hook that
    raised (below).  Why a process and not circusd's in-process call: the hook
    is the config author's code, run with the worker's rights and not root's
    (DESIGN §5), it cannot block the event loop or corrupt sockvisor's state,
    and at hook_timeout it is killed -- a thread could not be.

What a False does is Circus 0.19's (circus/watcher.py):

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
signal, it overruns `hook_timeout`, a Python hook raises -- is Circus's hook
that raised: counted as
False, except for the hooks Circus ignores failures of (before_stop, after_stop,
before_signal, after_signal) and those given `, true` (Circus's ignore_failure).
Either way sockvisor publishes `watcher.NAME.hook_success` / `hook_failure`, as
Circus does.

How either runs: forked and exec'd as a worker is (process.fork_exec: its own
session and process group, the watcher's uid, gid, groups, umask, rlimits and
working_dir; never as root unless the watcher's workers are), with the
watcher's environment and the hook's context: SOCKVISOR_HOOK, SOCKVISOR_WATCHER
and, where Circus passes them, SOCKVISOR_PID, SOCKVISOR_WID, SOCKVISOR_SIGNAL,
SOCKVISOR_EXIT_CODE.  No sockets, no NOTIFY_SOCKET.  A Python hook's
interpreter is `hook_python`, else the watcher's virtualenv's python, else
sockvisor's own; it reads the shim from fd 3 (the worker's user need not be
able to read sockvisor's installation), its context from fd 4, and talks to
sockvisor over fd 5 (_Conversation: every line checked and bounded).  Its exit
comes through the reaper (the one place that waits for children: asyncio's
subprocesses would wait for themselves and race it), so nothing blocks the
event loop; at `hook_timeout` its whole process group is SIGKILLed.  Its
output goes where the watcher's workers' does (the same sinks: prefix, files,
`logs`).

before_reap and after_reap: sockvisor reaps an exited worker at once (holding a
zombie for a hook would hold its pid), so both run after the exit was seen, in
that order, and neither delays the replacement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from sockvisor import handover, process
from sockvisor.config import WatcherConfig
from sockvisor.config.hooks import python_for_hooks, python_hook_env
from sockvisor.config.model import HookCommand, HookPython
from sockvisor.reaper import describe_status

if TYPE_CHECKING:
    from sockvisor.launcher import WatcherContext
    from sockvisor.output import OutputSink

log = logging.getLogger("sockvisor.hooks")

# Circus's ignore_hook_failure default: a failure of these does not stop anything.
FAILURE_IGNORED = frozenset({"before_stop", "after_stop", "before_signal", "after_signal"})


# The shim a Python hook's interpreter runs (read from fd 3, see _execute_python),
# and the most a hook may send sockvisor in one line: a hostile hook (it runs as
# the worker's user) must not make sockvisor buffer without bound.
SHIM_SOURCE = Path(__file__).with_name("circus_hook_shim.py")
_BOOTSTRAP = ("import sys; exec(compile(open(3).read(), 'sockvisor-circus-hook', 'exec'))")
MAX_MESSAGE = 1 << 20
MAX_ENV = 128 << 10          # watcher.env as a hook leaves it, all of it
MAX_SIGNALS = 16             # send_signal calls a hook may make, per worker (and 16 more)


class HookHost(Protocol):
    """What a Python hook's stand-in for circusd's watcher reads and does (the
    watcher implements it; circus_hook_shim.py says what the stand-ins offer).
    `config` is the one the hook runs for: what it sees and changes is that
    config's, and it may signal only workers running as it does."""

    def hook_view(self, config: WatcherConfig) -> dict[str, Any]:
        """numprocesses, env (watcher.env), processes {pid: {wid, started}},
        fields, options: the stand-in's contents, JSON-ready."""

    def hook_signal(self, pid: int, signum: int, config: WatcherConfig) -> str:
        """Signal worker `pid` of this watcher: "" or why not."""

    def hook_env_changed(self, changes: Mapping[str, str | None],
                         config: WatcherConfig) -> None:
        """The hook changed watcher.env: applies to the next workers of `config`."""


class HookFailed(Exception):
    """A guarding hook said False (or could not answer); the text says which and why."""


class HookRunner:
    """Runs one watcher's hooks; `sinks` gives the watcher's current output sinks."""

    def __init__(self, name: str, context: "WatcherContext",
                 sinks: Callable[[], "tuple[OutputSink, OutputSink]"],
                 host: HookHost | None = None):
        self.name = name
        self.context = context
        self.sinks = sinks
        self.host = host
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
        return (await self._run(config, point, hook, context))[0]

    async def extended_stats(self, config: WatcherConfig, pid: int,
                             stats: dict[str, Any]) -> dict[str, Any]:
        """Circus's `stats --extended`: `stats` as the extended_stats hook edited
        it (unchanged if there is none or it failed: logged)."""
        hook = config.hooks.get("extended_stats")
        if not isinstance(hook, HookPython):
            return stats
        failure, answer = await self._run(config, "extended_stats", hook,
                                          {"pid": pid, "stats": stats})
        edited = answer.get("stats") if answer else None
        if failure or not isinstance(edited, dict):
            return stats
        return merge_extended_stats(stats, edited)

    async def _run(self, config: WatcherConfig, point: str,
                   hook: HookCommand | HookPython, context: dict[str, Any]
                   ) -> tuple[str, dict[str, Any] | None]:
        """("" or why it counts as False, a Python hook's answer)."""
        started = time.time()
        self.running += 1
        answer = None
        try:
            if isinstance(hook, HookPython):
                said_false, failure, answer = await self._execute_python(
                    config, point, hook, context)
            else:
                said_false, failure = await self._execute(config, point, hook.argv,
                                                          context)
        finally:
            self.running -= 1
        if failure is None:
            # It answered (True or False): Circus's hook_success either way.
            self.context.publish(f"watcher.{self.name}.hook_success",
                                 {"name": point, "time": started})
        if said_false is None and failure is None:
            log.debug("watcher %s: %s hook succeeded", self.name, point)
            return "", answer
        if failure is None:
            why = said_false
            ignored = False
        else:
            why = failure
            ignored = point in FAILURE_IGNORED or hook.ignore_failure
            self.context.publish(f"watcher.{self.name}.hook_failure",
                                 {"name": point, "time": started, "error": why})
        if ignored:
            log.warning("watcher %s: %s hook failed (%s); ignored", self.name, point, why)
            return "", answer
        log.warning("watcher %s: %s hook: %s", self.name, point, why)
        return why, answer

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
                       context: dict[str, Any]) -> tuple[str | None, str | None]:
        """Run a command hook: (None, None) for True (exit 0); (why, None) if it
        said False (another exit status); (None, why) if it never answered."""
        status, failure = await self._spawn_and_wait(
            config, point, list(argv),
            self._hook_env(self.watcher_env(config), point, context), [])
        if failure is None and status != 0:
            return f"{argv[0]} exited with status {os.WEXITSTATUS(status)}", None
        return None, failure

    def _hook_env(self, watcher_env: dict[str, str], point: str,
                  context: dict[str, Any]) -> dict[str, str]:
        """A hook process's environment: watcher.env and the hook's context."""
        env = dict(watcher_env)
        env.update(SOCKVISOR_HOOK=point, SOCKVISOR_WATCHER=self.name)
        for key, variable in (("pid", "SOCKVISOR_PID"), ("wid", "SOCKVISOR_WID"),
                              ("signum", "SOCKVISOR_SIGNAL"),
                              ("exit_code", "SOCKVISOR_EXIT_CODE")):
            if context.get(key) is not None:
                env[variable] = str(context[key])
        return env

    def watcher_env(self, config: WatcherConfig) -> dict[str, str]:
        """Circus's watcher.env: the config's, as Python hooks left it (the
        host's; without one, the config's)."""
        if self.host is None:
            return process.identity_env(config)
        return self.host.hook_view(config)["env"]

    async def _execute_python(self, config: WatcherConfig, point: str, hook: HookPython,
                              context: dict[str, Any]
                              ) -> tuple[str | None, str | None, dict[str, Any] | None]:
        """Call a Python hook through circus_hook_shim.py: (said False, could not
        answer, its answer) as _execute, and the answer it sent."""
        interpreter = python_for_hooks(config)
        view = self.host.hook_view(config) if self.host is not None else {}
        watcher_env = view["env"] if view else process.identity_env(config)
        env = python_hook_env(self._hook_env(watcher_env, point, context))
        kwargs = circus_arguments(point, context)
        payload = {"watcher": self.name, "env": watcher_env, "kwargs": kwargs,
                   "numprocesses": view.get("numprocesses", config.numprocesses),
                   "processes": view.get("processes", {}),
                   "fields": view.get("fields", {}), "options": view.get("options", {})}
        source = handover.memfd("sockvisor-hook-shim", SHIM_SOURCE.read_bytes())
        try:
            data = handover.memfd("sockvisor-hook-context", json.dumps(payload).encode())
        except BaseException:
            os.close(source)
            raise
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except BaseException:
            os.close(source)
            os.close(data)
            raise
        ours.setblocking(False)
        conversation = _Conversation(self, ours, config)
        talking = asyncio.ensure_future(conversation.run())
        try:
            status, failure = await self._spawn_and_wait(
                config, point, [interpreter, "-c", _BOOTSTRAP, point, hook.target], env,
                [source, data, theirs.fileno()], after_fork=theirs.close)
            if failure is None:
                # Exited: what it sent is in the socket, or nobody holds its end.
                try:
                    await asyncio.wait_for(asyncio.shield(talking), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            for fd in (source, data):
                os.close(fd)
            theirs.close()
            talking.cancel()
            ours.close()
        if conversation.problem:
            return None, f"{hook.target}: {conversation.problem}", None
        if failure is not None:
            return None, failure.replace(interpreter, hook.target, 1), None
        answer = conversation.answer
        if answer is None:
            how = (f"exited with status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
                   else describe_status(status))
            return None, (f"{hook.target} did not answer ({interpreter} {how}; its "
                          f"output is in `sockvisorctl logs {self.name}`)"), None
        problem = self._take_env(watcher_env, answer.get("env"), config)
        if problem:
            return None, f"{hook.target}: {problem}", None
        if "raised" in answer:
            return None, f"{hook.target} raised {answer['raised']}", answer
        if answer.get("result") is not True:
            return f"{hook.target} returned False", None, answer
        return None, None, answer

    def _take_env(self, before: dict[str, str], after: Any, config: WatcherConfig) -> str:
        """Apply the hook's changes to watcher.env; "" or why they are refused."""
        if after is None:
            return ""
        if not isinstance(after, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\0" not in k + v for k, v in after.items()):
            return "watcher.env must map names (without '=') to strings"
        if sum(len(k) + len(v) + 2 for k, v in after.items()) > MAX_ENV:
            # What execve takes is bounded anyway; sockvisor keeps the changes.
            return f"watcher.env would hold more than {MAX_ENV} bytes"
        changes: dict[str, str | None] = {k: v for k, v in after.items()
                                          if before.get(k) != v}
        changes.update({k: None for k in before if k not in after})
        if changes and self.host is not None:
            self.host.hook_env_changed(changes, config)
        return ""

    async def _spawn_and_wait(self, config: WatcherConfig, point: str, argv: list[str],
                              env: dict[str, str], fds: list[int],
                              after_fork: Callable[[], None] | None = None
                              ) -> tuple[int, str | None]:
        """(wait status, None) once the hook exited; (-1, why) if it never answered."""
        stdout, stderr = self.sinks()
        out_child, out_read = stdout.child_fd()
        err_child, err_read = stderr.child_fd()
        groups = (process.user_groups(config.user, config.gid)
                  if config.uid is not None or config.gid is not None else None)
        spec = process.SpawnSpec(argv=argv, env=env, fds=fds, stdout=out_child,
                                 stderr=err_child, uid=config.uid, gid=config.gid,
                                 groups=groups, umask=config.umask,
                                 cwd=config.working_dir, rlimits=config.rlimits)
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
            if after_fork is not None:
                after_fork()
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


def merge_extended_stats(stats: dict[str, Any], edited: dict[str, Any]) -> dict[str, Any]:
    """A worker's `stats` figures as an extended_stats hook edited them: the hook
    adds figures (uwsgi's requests, load) and may add to the children's
    (uwsgi's workers); sockvisor's own figures keep their type and every child
    stays, so `stats` and its totals read them as before, whatever the hook did."""
    merged = {**stats, **edited}
    for key, value in stats.items():
        if type(merged[key]) is not type(value):
            merged[key] = value
    if "children" in stats:
        children = {child["pid"]: child for child in stats["children"]}
        kept = []
        for child in merged["children"]:
            pid = child.get("pid") if isinstance(child, dict) else None
            if type(pid) is int and pid in children:
                own = children.pop(pid)
                kept.append({**child, **{k: v for k, v in own.items()
                                         if type(child.get(k)) is not type(v)}})
        merged["children"] = kept if not children else stats["children"]
    return merged


# circus.process.UNEXISTING: what Circus's after_reap gets as process_status for
# a worker that is gone once reaped (the only kind sockvisor reaps).
_CIRCUS_UNEXISTING = 2


def circus_arguments(point: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments Circus 0.19 calls `point`'s hook with (besides
    watcher, arbiter and hook_name), from sockvisor's context for it."""
    if point == "after_spawn":
        return {"pid": context["pid"]}
    if point in ("before_signal", "after_signal"):
        return {"pid": context["pid"], "signum": context["signum"]}
    if point == "before_reap":
        return {"process_pid": context["pid"], "time": time.time()}
    if point == "after_reap":
        return {"process_pid": context["pid"], "time": time.time(),
                "exit_code": context["exit_code"], "process_status": _CIRCUS_UNEXISTING}
    if point == "extended_stats":
        return {"pid": context["pid"], "stats": context["stats"]}
    return {}   # before_start, after_start, before_spawn, before_stop, after_stop


class _Conversation:
    """What a Python hook's process sends on its channel (circus_hook_shim.py's
    protocol), read as it comes: signal requests are answered at once (Circus's
    send_signal returns once the signal is sent), the last line is the answer.
    The process runs as the worker's user, so everything it says is checked and
    bounded: a malformed line ends the conversation as a failure."""

    def __init__(self, runner: HookRunner, sock: socket.socket, config: WatcherConfig):
        self.runner, self.sock, self.config = runner, sock, config
        self.answer: dict[str, Any] | None = None
        self.problem = ""
        # Each request costs root a little: a hook is not a way to make it spin.
        self.signals_left = MAX_SIGNALS * (config.numprocesses + 1)

    async def run(self) -> None:
        try:
            await self._converse()
        except OSError:
            pass   # the hook went away (killed at hook_timeout, or it closed fd 5)

    async def _converse(self) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not await self._take(loop, line):
                    return self._hang_up()
            if len(buffer) > MAX_MESSAGE:
                self.problem = f"sent a line of more than {MAX_MESSAGE} bytes"
                return self._hang_up()

    def _hang_up(self) -> None:
        # The hook sees EOF (an OSError in send_signal) instead of waiting for
        # an answer until hook_timeout.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    async def _take(self, loop: asyncio.AbstractEventLoop, line: bytes) -> bool:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):   # not JSON, not UTF-8, nested too deep
            message = None
        if not isinstance(message, dict) or self.answer is not None:
            self.problem = "sent a message sockvisor does not understand"
            return False
        if "signal" in message:
            request = message["signal"]
            if (not isinstance(request, list) or len(request) != 2
                    or not all(type(n) is int for n in request)):
                self.problem = "asked for a signal without a pid and a signal number"
                return False
            pid, signum = request
            self.signals_left -= 1
            if self.signals_left < 0:
                self.problem = "asked for more signals than a hook may send"
                return False
            host = self.runner.host
            if signum not in signal.valid_signals() or signum == 0:
                error = f"{signum} is not a signal"
            else:
                error = (host.hook_signal(pid, signum, self.config) if host is not None
                         else "no watcher to signal")
            reply = {"error": error} if error else {"ok": True}
            await loop.sock_sendall(self.sock, json.dumps(reply).encode() + b"\n")
            return True
        if "result" in message or "raised" in message:
            self.answer = message
            return True
        self.problem = "sent a message sockvisor does not understand"
        return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
