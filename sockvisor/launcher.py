"""The launcher: watcher config + sockets + worker id -> a running Worker.

Everything about *how* one worker comes to life lives here, and nowhere else:
the argv and environment templating ($(sockvisor.sockets.NAME), $(wid),
LISTEN_FDS/LISTEN_FDNAMES, SERVER_STARTER_PORT, NOTIFY_SOCKET), the fd layout
(`socket_fds`: the sockets of a generation at fd 3, 4, ... in its config's
order, the one place that rule is written), the fork/exec and its exec-status
pipe, the reaper registration, and the readiness timers (`ready = started`
marks it ready at exec, `delay:N` after N seconds, and `ready_timeout` reports
a worker that never got there).  The watcher decides *how many* and *which
generation*; it hears back through `WorkerHooks` and talks to each Worker only
through the Worker's methods.

A `Generation` is a config together with the listening sockets it was started
with (the ListeningSocket objects, not their names).  A watcher keeps the
generation it serves and, during a reload, the one it came from: rolling back
after an aborted `reloadconfig` that renamed or removed a socket spawns on the
very socket the old workers hold, even though the supervisor's table no longer
knows it by that name.

`FakeLauncher`-style doubles (tests/unit) replace this class to drive the
watcher's lifecycle in milliseconds; nothing here is needed for that.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from sockvisor import process
from sockvisor.cgroup import CgroupTree
from sockvisor.config import ReadyKind, WatcherConfig, expand_worker_args
from sockvisor.reaper import Reaper
from sockvisor.sockets import ListeningSocket, keep_listening
from sockvisor.states import WorkerState

if TYPE_CHECKING:
    from sockvisor.output import OutputSink

log = logging.getLogger("sockvisor.watcher")

FIRST_SOCKET_FD = 3   # sd_listen_fds: SD_LISTEN_FDS_START


@dataclass
class WatcherContext:
    """What a watcher and its launcher need from the supervisor that owns them."""
    reaper: Reaper
    sockets: Mapping[str, ListeningSocket]   # the supervisor's table, by name
    notify_address: str | None
    publish: Callable[[str, dict[str, Any]], None]
    workers_by_pid: dict[int, process.Worker]   # shared index for readiness messages
    cgroups: CgroupTree | None = None           # a cgroup per worker, if usable


# What sockvisor sets in a worker's environment itself (the config's own copies
# are dropped: _base_env), and a hook's changes cannot override (hook_env).
_SOCKVISOR_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                        "SERVER_STARTER_PORT", "WATCHDOG_PID", "WATCHDOG_USEC")


class LaunchError(Exception):
    """A generation cannot be made: a socket its config names is nowhere."""


@dataclass(eq=False)
class Generation:
    """One generation of a watcher: its number, its config, its sockets."""
    number: int
    config: WatcherConfig
    sockets: tuple[ListeningSocket, ...]   # fd 3, 4, ... in this order
    _env: dict[str, str] | None = field(default=None, repr=False)

    def socket_fds(self) -> dict[str, int]:
        """Socket name -> the fd number a worker of this generation has it at."""
        return {name: FIRST_SOCKET_FD + i for i, name in enumerate(self.config.sockets)}

    def renumbered(self, number: int) -> "Generation":
        return Generation(number, self.config, self.sockets)


@dataclass
class WorkerHooks:
    """What the launcher tells the watcher about the workers it launched."""
    on_state: Callable[[process.Worker, WorkerState, WorkerState], None]
    on_exit: Callable[[process.Worker, int], None]        # after the worker is reaped
    on_ready_timeout: Callable[[process.Worker], None]


class Launcher:
    def __init__(self, name: str, context: WatcherContext, hooks: WorkerHooks):
        self.name = name
        self.context = context
        self.hooks = hooks
        self._groups_cache: tuple[WatcherConfig, list[int] | None] | None = None
        # watcher.env as Circus's Python hooks left it, and the config they made
        # those changes under (change_env).
        self.env_changes: dict[str, str | None] = {}
        self.env_changes_config: WatcherConfig | None = None

    # ------------------------------------------------------------------ generations

    def generation(self, number: int, config: WatcherConfig,
                   previous: Generation | None = None) -> Generation:
        """A generation of `config`, on the supervisor's sockets of those names; a
        name the supervisor no longer has keeps the socket `previous` had under it
        (a rolled-back config after a reloadconfig renamed or removed it)."""
        kept = dict(zip(previous.config.sockets, previous.sockets)) if previous else {}
        sockets = []
        for name in config.sockets:
            listening = self.context.sockets.get(name) or kept.get(name)
            if listening is None:
                raise LaunchError(f"watcher {self.name}: socket {name} is not configured")
            sockets.append(listening)
        return Generation(number, config, tuple(sockets))

    def change_env(self, changes: Mapping[str, str | None], config: WatcherConfig) -> None:
        """What a Circus Python hook, run for `config`, changed in `watcher.env`
        (hooks.py): applies to every worker of `config` started from now on, as
        in Circus; None removes a variable.

        The changes belong to that config.  Circus builds a new watcher for any
        other config, whose env is the config's again; so here a generation of
        another config -- another uid, another env, no hook at all -- gets none
        of them: what a hook of one user set never reaches another user's
        workers (DESIGN §5)."""
        if config is not self.env_changes_config:
            self.env_changes, self.env_changes_config = {}, config
        base = process.identity_env(config)
        for key, value in changes.items():
            if value is None and key not in base:
                self.env_changes.pop(key, None)   # nothing of the config's to hide
            else:
                self.env_changes[key] = value

    def carry_env_changes(self, old: WatcherConfig, new: WatcherConfig) -> None:
        """The watcher takes `new` instead of `old`: the hooks' changes stay if
        nothing they depend on changed -- who the workers run as and the env
        they start from -- as Circus keeps watcher.env across `set numprocesses`."""
        if (self.env_changes_config is old and old is not new
                and (old.uid, old.gid, old.env, old.copy_env)
                == (new.uid, new.gid, new.env, new.copy_env)):
            self.env_changes_config = new

    def current_env_changes(self, config: WatcherConfig) -> dict[str, str | None]:
        """The hooks' changes that apply to `config` (none for another config)."""
        return dict(self.env_changes) if config is self.env_changes_config else {}

    def with_env_changes(self, env: dict[str, str], config: WatcherConfig) -> dict[str, str]:
        """`env` as the hooks' changes for `config` leave it (in place; returned)."""
        for key, value in self.current_env_changes(config).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def watcher_env(self, config: WatcherConfig) -> dict[str, str]:
        """Circus's watcher.env for `config`: its environment (with HOME, USER of
        its user), as the hooks changed it -- what a hook sees and runs with."""
        return self.with_env_changes(process.identity_env(config), config)

    def hook_env(self, generation: Generation) -> dict[str, str]:
        """The environment a worker of `generation` gets (before its wid): its
        config's, as the hooks changed it -- except the variables sockvisor sets
        for the worker (sockets, notify), which a hook cannot override."""
        base = self._base_env(generation)
        env = self.with_env_changes(dict(base), generation.config)
        for key in _SOCKVISOR_VARIABLES:
            if key in base:
                env[key] = base[key]
            else:
                env.pop(key, None)
        return env

    def _base_env(self, generation: Generation) -> dict[str, str]:
        if generation._env is None:
            config = generation.config
            env = process.identity_env(config)
            for key in _SOCKVISOR_VARIABLES:
                env.pop(key, None)
            names = list(config.sockets)
            env.update(process.listen_env(names))
            if names:
                fds = generation.socket_fds()
                env["SERVER_STARTER_PORT"] = ";".join(
                    f"{listening.server_starter_key()}={fds[name]}"
                    for name, listening in zip(names, generation.sockets))
            if self.context.notify_address:
                env["NOTIFY_SOCKET"] = self.context.notify_address
            generation._env = env
        return generation._env

    def _groups(self, config: WatcherConfig) -> list[int] | None:
        """Supplementary groups for the worker, looked up once per config (NSS is slow)."""
        if self._groups_cache is None or self._groups_cache[0] is not config:
            groups = (process.user_groups(config.user, config.gid)
                      if config.uid is not None or config.gid is not None else None)
            self._groups_cache = (config, groups)
        return self._groups_cache[1]

    # ------------------------------------------------------------------ launching

    def launch(self, generation: Generation, wid: int,
               sinks: "tuple[OutputSink, OutputSink]") -> process.Worker | None:
        """Fork one worker of `generation`; None if it could not be forked (logged)."""
        config = generation.config
        sockets = generation.sockets
        closed = [s.name for s in sockets if s.sock.fileno() < 0]
        if closed:
            log.error("watcher %s: cannot start a worker of generation %d: socket %s "
                      "was closed (a reloadconfig removed it); `reload` %s onto the "
                      "current config", self.name, generation.number, closed[0], self.name)
            return None
        # The workers share these sockets' open file descriptions: one may have
        # shut a socket down or made it non-blocking (sockets.py).
        keep_listening(sockets, self.context.publish)
        for listening in sockets:
            listening.prepare_for_spawn()
        fds = [listening.fd for listening in sockets]   # after: a repair may rebind
        env = self.hook_env(generation)
        env["SOCKVISOR_WID"] = str(wid)
        try:
            argv = expand_worker_args(config.argv(), wid, generation.socket_fds(), env)
        except KeyError as exc:
            log.error("watcher %s: cannot start a worker: $(circus.env.%s) in its "
                      "command: %s is not set (not in its env, and no hook set it)",
                      self.name, exc.args[0], exc.args[0])
            return None
        stdout, stderr = sinks
        out_child, out_read = stdout.child_fd()
        err_child, err_read = stderr.child_fd()
        spec = process.SpawnSpec(
            argv=argv, env=env, fds=fds, stdout=out_child, stderr=err_child,
            uid=config.uid, gid=config.gid,
            groups=self._groups(config),
            umask=config.umask, cwd=config.working_dir, rlimits=config.rlimits)
        try:
            if self.context.cgroups is not None:
                spec.cgroup = self.context.cgroups.new_leaf(self.name)
            pid, status_r = process.fork_exec(spec)
        except OSError as exc:
            failed = ("create a cgroup for a worker" if self.context.cgroups is not None
                      and spec.cgroup is None else "fork")
            log.error("watcher %s: cannot %s: %s", self.name, failed, exc.strerror)
            os.close(out_read)
            os.close(err_read)
            return None
        finally:
            # Every mode is a pipe (OutputSink.child_fd): the child has its ends.
            os.close(out_child)
            os.close(err_child)
        worker = process.Worker(config, wid, generation.number, pid, self.hooks.on_state)
        worker.cgroup = spec.cgroup
        self.context.workers_by_pid[pid] = worker
        self.context.reaper.register(pid, lambda status: self._reaped(worker, generation,
                                                                      status),
                                     worker.before_reap)
        loop = asyncio.get_running_loop()
        worker.pipes = {"stdout": (out_read, stdout.attach(loop, out_read, pid)),
                        "stderr": (err_read, stderr.attach(loop, err_read, pid))}
        worker.status_fd = status_r
        loop.add_reader(status_r, self._collect_exec_status, worker)
        log.debug("watcher %s: spawned %s (wid %d, generation %d)", self.name,
                  worker.label, wid, generation.number)
        return worker

    def adopt(self, worker: process.Worker, generation: Generation,
              sinks: "tuple[OutputSink, OutputSink]",
              pipes: "dict[str, tuple[int, bytes] | None]") -> None:
        """Take over `worker`, started by this process before an upgrade exec'd it
        (handover.py): what `launch` does after the fork -- the reaper's callback,
        the output pipes (`pipes`: stream -> (read end, partial line)), the
        exec-status pipe if not read yet, the readiness timers for what is left
        of their time.  Nothing is forked."""
        self.context.workers_by_pid[worker.pid] = worker
        self.context.reaper.register(worker.pid, lambda status: self._reaped(
            worker, generation, status), worker.before_reap)
        loop = asyncio.get_running_loop()
        for sink, stream in zip(sinks, ("stdout", "stderr")):
            pipe = pipes.get(stream)
            if pipe is not None:
                worker.pipes[stream] = (pipe[0], sink.attach(loop, pipe[0], worker.pid,
                                                             pipe[1]))
        if worker.status_fd is not None:
            loop.add_reader(worker.status_fd, self._collect_exec_status, worker)
        elif worker.exec_ok and worker.state == WorkerState.STARTING:
            ready = worker.config.ready
            elapsed = loop.time() - worker.started_at   # both CLOCK_MONOTONIC
            if ready.kind == ReadyKind.DELAY:
                worker.add_timer(loop.call_later(max(0.0, ready.delay - elapsed),
                                                 worker.mark_ready))
            worker.add_timer(loop.call_later(max(0.0, ready.timeout - elapsed),
                                             self._ready_timeout, worker))

    def _collect_exec_status(self, worker: process.Worker) -> None:
        """The exec-status pipe is readable (or the worker exited): exec or error."""
        fd = worker.status_fd
        if fd is None:
            return
        worker.status_fd = None
        asyncio.get_running_loop().remove_reader(fd)
        try:
            error = process.read_spawn_status(fd)
        finally:
            os.close(fd)
        if error is not None:
            worker.spawn_error = error
            log.error("watcher %s: %s", self.name,
                      process.describe_spawn_error(error, worker.config.cmd))
            return
        worker.exec_ok = True
        self.context.publish(f"watcher.{self.name}.spawn",
                             {"pid": worker.pid, "wid": worker.wid,
                              "generation": worker.generation})
        ready = worker.config.ready
        loop = asyncio.get_running_loop()
        if ready.kind == ReadyKind.STARTED:
            worker.mark_ready()
            return
        if ready.kind == ReadyKind.DELAY:
            worker.add_timer(loop.call_later(ready.delay, worker.mark_ready))
        worker.add_timer(loop.call_later(ready.timeout, self._ready_timeout, worker))

    def _ready_timeout(self, worker: process.Worker) -> None:
        if worker.state == WorkerState.STARTING:
            self.hooks.on_ready_timeout(worker)

    def on_notify(self, worker: process.Worker, fields: Mapping[str, str]) -> None:
        """A datagram from the worker's NOTIFY_SOCKET (see readiness.py)."""
        if "STATUS" in fields:
            worker.status_text = fields["STATUS"][:200]
        if fields.get("READY") == "1" and worker.state == WorkerState.STARTING:
            if worker.config.ready.kind == ReadyKind.NOTIFY:
                worker.mark_ready()

    def _reaped(self, worker: process.Worker, generation: Generation, status: int) -> None:
        """The reaper collected `worker`: close its books, then tell the watcher."""
        self._collect_exec_status(worker)
        worker.on_exit(status)
        # Did it shut a shared socket down on its way out?  (Before a replacement.)
        keep_listening(generation.sockets, self.context.publish)
        self.context.workers_by_pid.pop(worker.pid, None)
        self.hooks.on_exit(worker, status)
