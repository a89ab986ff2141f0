"""The arbiter: start-up and shut-down order, and ownership of everything long-lived.

Start-up: sockvisor's own endpoints are opened first — the control channel and,
with `http`, the web console (a missing folder, or a second instance on the same
endpoint, ends start-up with exit 3 before any port listens); then the sockets
(adopted from the service manager, else bound) — if one fails, nothing is
spawned; then the reaper, the workers' notify socket and the watchers, and only
then is the control channel read; READY=1 to systemd once every autostart
watcher's first generation has settled: ready, and alive `ready_settle` since
(having asked, with EXTEND_TIMEOUT_USEC, for as long as the config lets start-up
take; likewise for a reload and a stop: see phase_bounds.py).  A watcher that goes FATAL before that fails the start
(`start_failure = exit`, the default): no READY=1, everything stopped, the
sockets closed, exit status 4; see `_start_watcher`.  Shut-down is the
reverse: STOPPING=1, every watcher stops its workers (stop_signal,
graceful_timeout, SIGKILL), the control channel closes, and the listening
sockets close last.

Circus's `priority`: watchers start by priority, highest first, each group
started (as start-up counts it: see `_start_watcher`) before the next one
begins; equal priorities start together.  Shut-down stops them in the reverse
order, each group stopped before the next.  With Circus's `pidfile`, sockvisor's
pid is written once the sockets are bound and removed at exit (pidfile.py).

Process containment (cgroup.py: a cgroup per worker where cgroup v2 is usable,
else process groups and, with `subreaper`, adopted orphans) is set up first —
clearing what a SIGKILLed predecessor left, which may hold our ports — and torn
down after the last worker: nothing a worker started outlives sockvisor.

Signals are handled in the event loop (asyncio's wake-up fd): SIGTERM/SIGINT stop
gracefully, SIGQUIT stops at once, SIGHUP re-reads the config, SIGUSR1 reopens
every `file:` output (logrotate's postrotate, as for nginx).  This works as PID 1
too, where the kernel gives no default action to any signal.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from sockvisor import __version__, cgroup
from sockvisor import config as config_module
from sockvisor import log as log_setup
from sockvisor import output, phase_bounds, systemd
from sockvisor.config import Config, ConfigError, WatcherConfig, priority_groups
from sockvisor.control import peer
from sockvisor.exits import (EXIT_FAILURE, EXIT_OK, EXIT_SOCKET, EXIT_START,
                             StartupError)
from sockvisor.http import start_console
from sockvisor.pidfile import PidFile
from sockvisor.plugin_tasks import PluginRunner
from sockvisor.process import Worker, holders_of
from sockvisor.readiness import ReadinessListener
from sockvisor.reconfigure.apply import apply_config
from sockvisor.reaper import Reaper, become_subreaper
from sockvisor.sockets import (ListeningSocket, SocketError, adopt, bind, listeners_at,
                               take_back)
from sockvisor.states import WatcherState
from sockvisor.watcher import Watcher, WatcherContext

log = logging.getLogger("sockvisor")

# Opening the control channel again after an upgrade's exec: how many tries,
# how far apart, before carrying on without it.
CONTROL_REOPEN_TRIES = 3
CONTROL_REOPEN_DELAY = 0.2

class StopMode(enum.Enum):
    GRACEFUL = "graceful"
    IMMEDIATE = "immediate"


class Supervisor:
    def __init__(self, config: Config, *, notifier: systemd.Notifier | None = None):
        self.config = config
        self.notifier = notifier or systemd.Notifier.from_environ()
        # The service manager's fd store: `[sockvisor] fdstore` decides, else
        # $FDSTORE (set by systemd >= 254 only).  Fixed for this run.
        self.use_fdstore = self.notifier.enabled and (
            systemd.fdstore_allowed() if config.globals.fdstore is None
            else config.globals.fdstore)
        self.sockets: dict[str, ListeningSocket] = {}
        # Replaced by reloadconfig but still used by workers of a failed reload.
        self.retired_sockets: list[ListeningSocket] = []
        self.watchers: dict[str, Watcher] = {}
        self.workers_by_pid: dict[int, Worker] = {}
        self.subscribers: list[Callable[[str, dict[str, Any]], None]] = [
            self._on_socket_replaced, self._on_socket_broken]
        self.started_at = time.time()
        self.reaper: Reaper | None = None
        self.cgroups: cgroup.CgroupTree | None = None
        self.readiness: ReadinessListener | None = None
        self.control: Any = None
        # The control relays' listening sockets by tcp endpoint, held across an
        # upgrade's exec until the control channel is open again (upgrade.py).
        self.relay_fds: dict[str, list[int]] = {}
        self.http: Any = None   # the web console (sockvisor/http/), when `http` is set
        self.plugins = PluginRunner(self)   # Circus's bundled plugins, max_age
        self._stop_requested: asyncio.Future[StopMode] | None = None
        self._status_pending = False
        self._watchdog_task: asyncio.Task | None = None
        self._ready_reported = False   # READY=1 for the start-up was sent
        self._start_failure = ""       # why start-up failed: the STATUS= from then on
        self._published = asyncio.Event()   # replaced after every event
        self._config_lock = asyncio.Lock()
        # Strong references to retire_socket's tasks (the loop keeps weak ones).
        self._pending_closes: set[asyncio.Task] = set()
        self.pidfile: PidFile | None = None
        # Upgrades in place (upgrade.py): the state to resume from, if exec'd so.
        self.resume_state: dict[str, Any] | None = None
        self.started = False        # start-up (or a resume) is over
        self.upgrading = False
        self.upgrades = 0           # how many times this process was upgraded
        self.last_upgrade: dict[str, Any] | None = None
        self.adopts_orphans = False

    # ------------------------------------------------------------------ events

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self._published.set()
        self._published = asyncio.Event()
        for subscriber in self.subscribers:
            try:
                subscriber(topic, data)
            except Exception:
                log.exception("event subscriber failed on %s", topic)
        if not self._status_pending and self.notifier.enabled:
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        self.notifier.status(self._start_failure or self.status_line())

    def status_line(self) -> str:
        parts = []
        for watcher in self.watchers.values():
            text = f"{watcher.name}: {watcher.ready_count()}/{watcher.numprocesses} ready"
            if watcher.state in (WatcherState.FATAL, WatcherState.RELOADING,
                                 WatcherState.STOPPED, WatcherState.BACKOFF,
                                 WatcherState.WAITING):
                text += f" ({watcher.state.value})"
            parts.append(text)
        return "; ".join(parts) or "no watchers"

    # ------------------------------------------------------------------ start-up

    def open_sockets(self) -> None:
        """Adopt what the service manager passed, bind the rest; all or nothing."""
        passed = systemd.listen_fds()
        by_name: dict[str, int] = {}
        for name, fd in passed:
            if name in self.config.sockets and name not in by_name:
                by_name[name] = fd
                continue
            if name in by_name:
                log.warning("fd %d passed by the service manager as %r: a second socket "
                            "for [socket:%s]; closing it", fd, name, name)
            else:
                log.warning("fd %d passed by the service manager as %r matches no "
                            "[socket:NAME] section; closing it", fd, name)
                # A stored socket the config no longer has must not hold its
                # address in the fd store for ever.
                self.unstore_socket(name)
            os.close(fd)
        try:
            for name, socket_config in self.config.sockets.items():
                if name in by_name:
                    try:
                        self.sockets[name] = adopt(socket_config, by_name.pop(name))
                    except SocketError:
                        # If it came from the fd store, the next start binds afresh.
                        self.unstore_socket(name)
                        raise
                else:
                    self.sockets[name] = bind(socket_config)
        except SocketError as exc:
            for fd in by_name.values():
                os.close(fd)
            self.close_sockets()
            raise StartupError(str(exc), EXIT_SOCKET) from None
        for name in self.sockets:
            self.store_socket(name)

    def close_sockets(self) -> None:
        for listening in [*self.sockets.values(), *self.retired_sockets]:
            listening.close()
        self.sockets.clear()
        self.retired_sockets.clear()

    def _context(self) -> WatcherContext:
        assert self.reaper is not None
        return WatcherContext(reaper=self.reaper, sockets=self.sockets,
                              notify_address=self.readiness.address if self.readiness else None,
                              publish=self.publish, workers_by_pid=self.workers_by_pid,
                              cgroups=self.cgroups)

    def _on_notify(self, pid: int, fields: dict[str, str]) -> None:
        worker = self.workers_by_pid.get(pid)
        if worker is None:
            # A child of the worker (same session: the worker is its leader) may
            # speak for it, as gunicorn's arbiter does for its own workers.
            try:
                worker = self.workers_by_pid.get(os.getsid(pid))
            except OSError:
                worker = None
        if worker is None:
            log.debug("notify message from pid %d, which is no worker: ignored", pid)
            return
        watcher = self.watchers.get(worker.watcher_name)
        if watcher is not None:
            watcher.on_notify(worker, fields)

    async def run(self) -> int:
        if self.resume_state is not None:
            return await self._run_resumed(self.resume_state)
        loop = asyncio.get_running_loop()
        for warning in self.config.warnings:
            log.warning("%s", warning)
        if self.config.globals.umask is not None:
            os.umask(self.config.globals.umask)
        self._stop_requested = loop.create_future()
        # Containment before the sockets: cleaning up after a SIGKILLed predecessor
        # (cgroup.py) frees the ports its workers' daemons may still hold.
        adopts_orphans = os.getpid() == 1 or (self.config.globals.subreaper
                                              and become_subreaper())
        self.adopts_orphans = adopts_orphans
        try:
            self.cgroups = self._contain(adopts_orphans)
        except cgroup.CgroupUnavailable as exc:
            log.error("[sockvisor] cgroup = on, but cgroups cannot be used: %s", exc)
            return EXIT_FAILURE
        # Every endpoint of our own (control, web console) before any listening
        # socket: one that cannot be opened fails start-up without a port ever
        # having listened for workers that will not come.
        try:
            await self._open_control()
            self.http = await start_console(self)
            self.open_sockets()
        except StartupError as exc:
            log.error("%s", exc)
            if self.http is not None:
                await self.http.close()
            if self.control is not None:
                await self.control.close()
            if self.cgroups is not None:
                self.cgroups.close_unused()
            return exc.status
        if self.config.globals.pidfile is not None:
            self.pidfile = PidFile(self.config.globals.pidfile)
            try:
                self.pidfile.write(os.getpid())
            except OSError as exc:
                log.error("[sockvisor] pidfile: cannot write %s: %s",
                          self.config.globals.pidfile, exc)
                self.pidfile = None
                await self._teardown(StopMode.IMMEDIATE)
                return EXIT_FAILURE
        self.reaper = Reaper(loop)
        self.reaper.stops_orphans = adopts_orphans and self.cgroups is None
        self.reaper.start()
        if self.cgroups is not None:
            self.cgroups.start(loop)
        self.readiness = ReadinessListener(os.path.basename(self.config.path))
        self.readiness.start(loop, self._on_notify)
        self._handle_signals(loop)
        self.notifier.mainpid(os.getpid())
        self.notifier.extend_timeout(phase_bounds.start(self.config))
        context = self._context()
        try:
            for name, watcher_config in self.config.watchers.items():
                self.watchers[name] = Watcher(watcher_config, context)
        except OSError as exc:   # e.g. an output file we may not open
            log.error("[watcher:%s] cannot set up its output: %s", name, exc)
            await self._teardown(StopMode.IMMEDIATE)
            return EXIT_FAILURE
        if self.control is not None:
            self.control.serve()
        self.plugins.start(self.config.plugins)
        startup = asyncio.ensure_future(self._start_watchers())
        stop_or_started = await asyncio.wait({startup, self._stop_requested},
                                             return_when=asyncio.FIRST_COMPLETED)
        if startup in stop_or_started[0] and startup.exception() is not None:
            return await self._fail_start(startup.exception())
        if startup in stop_or_started[0]:
            self.started = True
            log.info("sockvisor ready: %s", self.status_line())
            self.notifier.ready(self.status_line())
            self._ready_reported = True
            self._start_watchdog()
        mode = await self._stop_requested
        startup.cancel()
        await self._teardown(mode)
        return EXIT_OK

    def _contain(self, adopts_orphans: bool) -> cgroup.CgroupTree | None:
        """Set up process containment (cgroup.py) and say once which one is in use."""
        tree, why_not = cgroup.setup(self.config.globals.cgroup)
        if tree is not None:
            log.info("process containment: %s", tree.description)
        elif adopts_orphans:
            log.info("process containment: process groups only (%s); orphans a worker "
                     "leaves are stopped with it if they keep its LISTEN_PID, all of "
                     "them when sockvisor stops", why_not)
        else:
            log.info("process containment: process groups only (%s); a worker's "
                     "descendants that leave its process group escape (set "
                     "`subreaper = true`, or make cgroup v2 writable)", why_not)
        return tree

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum, mode in ((signal.SIGTERM, StopMode.GRACEFUL),
                             (signal.SIGINT, StopMode.GRACEFUL),
                             (signal.SIGQUIT, StopMode.IMMEDIATE)):
            loop.add_signal_handler(signum, self.request_stop, mode)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)

    # ------------------------------------------------------------------ upgrade in place

    def _on_sigusr2(self) -> None:
        """nginx's binary upgrade signal: `sockvisorctl upgrade` without a client."""
        from sockvisor import upgrade

        async def run() -> None:
            try:
                await self.upgrade()
            except upgrade.UpgradeRefused:
                pass   # logged and published by upgrade.py
        task = asyncio.ensure_future(run())
        self._pending_closes.add(task)
        task.add_done_callback(self._pending_closes.discard)

    async def upgrade(self, after: asyncio.Task | None = None) -> dict[str, Any]:
        from sockvisor import upgrade
        return await upgrade.upgrade(self, after)

    async def reopen_endpoints(self, marked: list[str] | None) -> None:
        """The control channel and web console again, after an exec that failed."""
        await self._reopen_control(marked)
        try:
            self.http = await start_console(self)
        except StartupError as exc:
            log.error("%s; carrying on without it", exc)
        if self.control is not None:
            self.control.serve()

    async def _reopen_control(self, marked: list[str] | None) -> None:
        """After an upgrade's exec (or one that failed): the control endpoints
        again, the relays on the listening sockets carried over; a few tries, then
        the `marked` endpoints lose their PATH.upgrading whatever happened: a
        marker left behind would make every client wait for nothing."""
        from sockvisor import upgrade
        for attempt in range(1, CONTROL_REOPEN_TRIES + 1):
            try:
                await self._open_control()
                break
            except StartupError as exc:
                if attempt == CONTROL_REOPEN_TRIES:
                    # The relays' ports stay held (relay_fds): free, another
                    # local user could bind them and answer in our place.
                    log.error("%s; carrying on without it", exc)
                else:
                    log.warning("%s; trying again", exc)
                    await asyncio.sleep(CONTROL_REOPEN_DELAY)
        if marked is None:   # a state from before `marked` was carried
            marked = self.control.ipc_paths if self.control is not None else []
        upgrade.unmark_endpoints(marked)

    async def _run_resumed(self, state: dict[str, Any]) -> int:
        """`sockvisor start CONF --resume FD`: this process was exec'd by an upgrade
        (upgrade.py) and takes over what it ran before, spawning nothing: the
        sockets, the workers' notify socket and pipes by fd, the cgroup tree, the
        watchers and their workers (registered with the reaper before it first
        looks, so those that exited in the gap are reaped and replaced now)."""
        from sockvisor import handover, upgrade
        # Before anything can serve a control client: a worker may hold a
        # listening socket we handed out and have since closed (a retired one),
        # and its root uid must not vouch for it (control/peer.py, step 5).
        peer.remember_shared(upgrade.shared_inodes_of(state))
        loop = asyncio.get_running_loop()
        self._stop_requested = loop.create_future()
        if self.config.globals.umask is not None:
            os.umask(self.config.globals.umask)
        self.started_at = state["started_at"]
        self.upgrades = state["upgrades"] + 1
        self.adopts_orphans = state["adopts_orphans"]
        output.write_carried({int(fd): handover.unb64(data)
                              for fd, data in state["stream_pending"].items()})
        if state["cgroup"] is not None:
            leaves = [w["cgroup"] for watcher in state["watchers"]
                      for w in watcher["workers"] if w["cgroup"]]
            try:
                self.cgroups = cgroup.CgroupTree.adopt(state["cgroup"]["path"], leaves)
            except OSError as exc:
                log.error("cannot take the cgroup tree %s back: %s; process groups only",
                          state["cgroup"]["path"], exc)
        for entry in state["sockets"]:
            self.sockets[entry["name"]] = take_back(self.config.sockets[entry["name"]],
                                                    entry)
        control_state = state["control"] or {}
        self.relay_fds = {endpoint: list(fds)
                          for endpoint, fds in control_state.get("relays", {}).items()}
        await self._reopen_control(control_state.get("marked"))
        try:
            self.http = await start_console(self)
        except StartupError as exc:   # the workers must not be abandoned for it
            log.error("%s; carrying on without it", exc)
        if self.config.globals.pidfile is not None:
            # It says our pid already; written again so that this process knows
            # it as its own and removes it at exit.
            self.pidfile = PidFile(self.config.globals.pidfile)
            try:
                self.pidfile.write(os.getpid())
            except OSError as exc:
                log.error("[sockvisor] pidfile: cannot write %s: %s",
                          self.config.globals.pidfile, exc)
                self.pidfile = None
        self.reaper = Reaper(loop)
        self.reaper.stops_orphans = self.adopts_orphans and self.cgroups is None
        if self.cgroups is not None:
            self.cgroups.start(loop)
        if state["readiness"] is not None:
            self.readiness = ReadinessListener.from_fd(state["readiness"]["fd"],
                                                       state["readiness"]["address"])
        else:
            self.readiness = ReadinessListener(os.path.basename(self.config.path))
        self.readiness.start(loop, self._on_notify)
        self._handle_signals(loop)
        self.notifier.mainpid(os.getpid())
        context = self._context()
        for data in state["watchers"]:
            self.watchers[data["name"]] = upgrade.restore_watcher(
                self.config, data, context)
        self.reaper.start()   # now: every worker's exit has its callback
        for watcher in self.watchers.values():
            watcher.resumed()
        if self.control is not None:
            self.control.serve()
        self.plugins.start(self.config.plugins)
        self.started = True
        gap_ms = round((time.time() - state["written_at"]) * 1000, 1)
        workers = sum(len(w.workers) for w in self.watchers.values())
        self.last_upgrade = {"from": state["version"], "to": __version__, "at": time.time(),
                             "gap_ms": gap_ms, "workers": workers, "serial": self.upgrades}
        log.info("upgraded in place: sockvisor %s -> %s, pid %d, %d workers kept; "
                 "gap %.1f ms", state["version"], __version__, os.getpid(), workers, gap_ms)
        self.publish("sockvisor.upgrade", dict(self.last_upgrade))
        if state["ready_reported"]:
            self._ready_reported = True
            self.notifier.ready(self.status_line())
            self._start_watchdog()
        mode = await self._stop_requested
        await self._teardown(mode)
        return EXIT_OK

    def _on_sigusr1(self) -> None:
        """logrotate's postrotate: every worker log file, and sockvisor's own."""
        log_setup.reopen()   # first: what reopen_files logs goes to the new file
        output.reopen_files()

    async def _start_watchers(self) -> None:
        autostart = [w for w in self.watchers.values() if w.config.autostart]
        for group in priority_groups(autostart, lambda w: w.config):
            await asyncio.gather(*(self._start_watcher(w) for w in group))

    async def _start_watcher(self, watcher: Watcher) -> None:
        """Start one watcher for sockvisor's start-up.

        With `start_failure = exit` (the default) start-up is over for a watcher
        only once it has really started, and a watcher that goes FATAL first fails
        the whole start (StartupError, EXIT_START): holding a port that nobody
        serves, and telling the service manager we are ready, is worse than
        failing where systemd's restart policy and the operator can see it.
        "Really started" is what a reload waits for before it retires anything:
        every worker ready and then alive for `ready_settle` (default min_uptime,
        the restart policy's own line between a failed start and a crash) -- a
        worker that exits at once after exec, or just after READY=1, is not
        "started".
        """
        await watcher.start()
        if self.config.globals.start_failure != "exit":
            return
        while watcher.state != WatcherState.FATAL:
            wait = self._time_to_settle(watcher)
            if wait is not None and wait <= 0:
                return
            published = self._published
            try:
                await asyncio.wait_for(published.wait(), wait)
            except asyncio.TimeoutError:
                pass
        raise StartupError(f"watcher {watcher.name} is FATAL: {watcher.fatal_reason}",
                           EXIT_START)

    @staticmethod
    def _time_to_settle(watcher: Watcher) -> float | None:
        """Seconds until `watcher` counts as started if nothing happens (<= 0: it
        does); None: not until something happens (a worker is missing or not ready).
        Started means every worker settled (Worker.settle_remaining), the rule a
        reload uses before it retires anything."""
        if watcher.state not in (WatcherState.STARTING, WatcherState.ACTIVE,
                                 WatcherState.BACKOFF):
            return 0.0   # stopped or reloading by command: the operator decides
        workers = watcher.live_workers()
        if len(workers) < watcher.numprocesses:
            return None
        remaining = [w.settle_remaining(w.config.ready_settle) for w in workers]
        if any(left is None for left in remaining):
            return None
        return max(remaining, default=0.0)

    async def _fail_start(self, failure: BaseException) -> int:
        """A watcher could not start: stop everything, close the sockets, no READY=1."""
        if isinstance(failure, StartupError):
            status = failure.status
            log.error("start-up failed: %s; stopping (start_failure = exit)", failure)
        else:
            status = EXIT_FAILURE
            log.error("start-up failed", exc_info=failure)
        self._start_failure = f"start-up failed: {failure}"
        self.notifier.status(self._start_failure)
        await self._teardown(StopMode.GRACEFUL)
        return status

    async def _open_control(self) -> None:
        """Open the control endpoints (not yet reading): before any socket is bound."""
        try:
            from sockvisor.control.server import ControlServer
        except ImportError as exc:
            # pyzmq is a dependency, but an interpreter without it can still run
            # workers; only an explicitly configured endpoint makes that fatal.
            if self.config.globals.endpoint is not None:
                raise StartupError(f"cannot open the control endpoint: {exc}",
                                   EXIT_SOCKET) from None
            log.warning("control channel disabled: %s", exc)
            return
        control = ControlServer(self)
        try:
            await control.open(self.relay_fds)   # closes what it opened if it fails
        except Exception as exc:   # OSError, zmq.ZMQError: either way we cannot serve
            raise StartupError(f"cannot open the control endpoint: {exc}",
                               EXIT_SOCKET) from None
        self.control = control
        for fds in self.relay_fds.values():   # the relays hold copies now
            for fd in fds:
                os.close(fd)
        self.relay_fds = {}

    def _start_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None or not self.notifier.enabled:
            return

        async def ping() -> None:
            # A timer in the event loop: if the loop is stuck, the pings stop and
            # systemd restarts us, which is the point.
            while True:
                self.notifier.watchdog()
                await asyncio.sleep(interval)
        self._watchdog_task = asyncio.ensure_future(ping())

    # ------------------------------------------------------------------ stop

    @property
    def stopping(self) -> "asyncio.Future[StopMode] | None":
        """Done once a stop was requested (None before `run`): what a command
        that waits (`logs -f`) waits on too, so that it ends with sockvisor."""
        return self._stop_requested

    def request_stop(self, mode: StopMode = StopMode.GRACEFUL) -> None:
        future = self._stop_requested
        if future is None:
            return
        if not future.done():
            log.info("stopping (%s)", mode.value)
            future.set_result(mode)
        elif mode == StopMode.IMMEDIATE:
            # A second, harder request while a graceful stop is under way.
            log.info("immediate stop requested: killing every worker")
            for watcher in self.watchers.values():
                asyncio.ensure_future(watcher.kill_now())

    async def _teardown(self, mode: StopMode) -> None:
        self.notifier.stopping()
        if mode == StopMode.GRACEFUL:
            self.notifier.extend_timeout(phase_bounds.stop(self.config))
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        await self.plugins.close()   # nothing recycles or reloads while we stop
        if mode == StopMode.IMMEDIATE:
            await asyncio.gather(*(w.kill_now() for w in self.watchers.values()))
        for group in reversed(priority_groups(list(self.watchers.values()),
                                              lambda w: w.config)):
            await asyncio.gather(*(w.shutdown() for w in group))
        # Nothing a worker started may outlive sockvisor (cgroup.py, reaper.py).
        if self.reaper is not None:
            await self.reaper.stop_orphans()
        if self.cgroups is not None:
            await self.cgroups.close()
        if self.http is not None:
            await self.http.close()
        if self.control is not None:
            await self.control.close()
        if self.readiness is not None:
            self.readiness.close()
        if self.reaper is not None:
            self.reaper.reap()
            self.reaper.close()
        self.close_sockets()
        if self.pidfile is not None:
            self.pidfile.remove()
        log.info("sockvisor stopped")

    # ------------------------------------------------------------------ reloadconfig

    def _on_sighup(self) -> None:
        async def reload() -> None:
            try:
                await self.reload_config()
            except ConfigError as exc:
                log.error("SIGHUP: config not reloaded: %s", exc)
            except Exception:
                log.exception("SIGHUP: reloadconfig failed")
        asyncio.ensure_future(reload())

    async def reload_config(self) -> dict[str, Any]:
        """Re-read the config file and apply the difference (reconfigure/): all
        of it, or -- if a socket cannot be bound or changed -- nothing."""
        async with self._config_lock:
            # RELOADING=1 first and READY=1 whatever happens: a manager waiting for
            # the reload to end (Type=notify-reload) must not wait until its
            # timeout because the new config does not parse.  Not while starting:
            # that READY=1 would tell the manager start-up is over; the one sent
            # when it really is over covers the reload too.
            announce = self._ready_reported
            if announce:
                self.notifier.reloading()
            try:
                new = config_module.load(self.config.path)
                old_plugins = self.config.plugins
                if announce:
                    self.notifier.extend_timeout(phase_bounds.reload(self.config, new))
                result = await apply_config(self, new)
                if self.config.plugins != old_plugins:
                    await self.plugins.close(shutting_down=False)
                    self.plugins.start(self.config.plugins)
                return result
            finally:
                if announce:
                    self.notifier.ready(self.status_line())

    # ------------------------------------------------------------------ the socket table
    # One writer: start-up (open_sockets), shut-down (close_sockets) and
    # reloadconfig's commit point (below); the watchers read it (WatcherContext).

    def commit_config(self, config: Config, sockets: dict[str, ListeningSocket],
                      added_watchers: dict[str, Watcher]) -> dict[str, ListeningSocket]:
        """reloadconfig's commit point (reconfigure/apply.py): `config` becomes the
        config, `sockets` (every [socket:NAME] of it, bound and checked) the socket
        table, `added_watchers` join the watchers.  Synchronous, and nothing in it
        fails for the config's sake.  Returns, by their old names, the listening
        sockets no longer in the table, for `retire_socket`.

        The fd store follows the table: every name whose socket goes or changes
        is dropped first, then every name now on a socket it was not on is stored.
        (systemd ignores a stored fd's second FDSTORE=1 and keeps the first name,
        so a socket taken over under a new name must leave the store under its
        old one before it is stored under the new.)"""
        before = dict(self.sockets)
        kept = {id(listening) for listening in sockets.values()}
        retired = {name: listening for name, listening in before.items()
                   if id(listening) not in kept}
        # In place: every watcher's context holds this very dict.
        self.sockets.clear()
        self.sockets.update(sockets)
        self.config = config
        for name, listening in before.items():
            if self.sockets.get(name) is not listening:
                self.unstore_socket(name)
        for name, listening in self.sockets.items():
            if before.get(name) is not listening:
                self.store_socket(name)
        for name, watcher in added_watchers.items():
            self.watchers[name] = watcher
            log.info("watcher %s added", name)
        return retired

    def retire_socket(self, name: str, listening: ListeningSocket,
                      holders: list[Worker]) -> None:
        """Close a listening socket reloadconfig took out of the table -- at once,
        or, if `holders` (workers of a failed reload) still use it, once the last
        of them has exited and no watcher spawns on it any more (a watcher whose
        reload failed went back to the generation it was started with, sockets
        included: its replacements need the socket as long as it stays there).

        Kept open "until next time" instead, it stayed in the listen state for
        ever once those workers were gone: connections to the old address queued
        with nobody to accept them, and the address could not be bound again."""
        def users() -> list[Watcher]:
            return [w for w in self.watchers.values() if w.uses_socket(listening)]

        if not holders and not users():
            log.info("socket %s (%s) closed", name, listening.address)
            listening.close()
            return
        log.warning("socket %s (%s) kept open until its %d worker(s) exit and no "
                    "watcher spawns on it", name, listening.address, len(holders))
        self.retired_sockets.append(listening)

        async def close_later() -> None:
            while listening in self.retired_sockets:   # else closed by a shutdown
                alive = [w for w in holders if w.alive]
                spawning = users()
                if not alive and not spawning:
                    self.retired_sockets.remove(listening)
                    log.info("socket %s (%s) closed: its last worker exited", name,
                             listening.address)
                    listening.close()
                    return
                # A holder's exit, or a change in a watcher that spawns on it (a
                # reload to a generation without it, a removal): look again.
                waits = [asyncio.ensure_future(asyncio.shield(w.exited)) for w in alive]
                waits += [asyncio.ensure_future(w.changed()) for w in spawning]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
        task = asyncio.ensure_future(close_later())
        self._pending_closes.add(task)
        task.add_done_callback(self._pending_closes.discard)

    def store_socket(self, name: str) -> None:
        """Hand a (new) listening socket to the service manager's fd store.

        The store keys fds by name but does not replace them: drop whatever is
        stored under `name` first (a socket reloadconfig moved elsewhere), or the
        next start would get the old address too.
        """
        if self.use_fdstore:
            self.notifier.fdstore_remove(name)
            self.notifier.fdstore([self.sockets[name].fd], name)

    def _on_socket_broken(self, topic: str, data: dict[str, Any]) -> None:
        """A socket a worker took out of service cannot be bound again because the
        port is taken: if one of our workers listens there itself (it took the
        shared socket out of LISTEN and bound its own at the same port, to
        serve the port's clients as its own user), it is killed -- the port is
        the config's, not a worker's.  Its exit is a crash for its watcher's
        restart policy, and the next check (at that exit) binds the port anew."""
        if not (topic.endswith(".broken") and data.get("errno") == errno.EADDRINUSE):
            return
        listening = self.sockets.get(data["name"])
        if listening is None or listening.sock.family == socket.AF_UNIX:
            return
        ours = os.fstat(listening.fd).st_ino
        squatters = listeners_at(listening.sock.family, listening.bound_at[1]) - {ours}
        if not squatters:
            return
        for worker in list(self.workers_by_pid.values()):
            if not worker.alive:
                continue
            holders = holders_of(worker.pid, squatters)
            if holders:
                log.error("socket %s: %s (pid %s) listens on %s itself, after taking "
                          "the shared socket out of service: killed", data["name"],
                          worker.label, ", ".join(map(str, holders)), listening.address)
                self.publish(f"socket.{data['name']}.squatter",
                             {"name": data["name"], "address": listening.address,
                              "pid": worker.pid, "holders": holders})
                worker.kill_group()

    def _on_socket_replaced(self, topic: str, data: dict[str, Any]) -> None:
        """A socket a worker took out of service was bound anew
        (sockets.keep_listening): the fd store must hold the new one, or the next
        start adopts a dead socket; and the workers still holding the dead one
        must be replaced (Watcher.socket_replaced), or a watcher whose workers do
        not die of it serves nothing."""
        if not (topic.endswith(".relisten") and data.get("replaced")):
            return
        name = data["name"]
        if name in self.sockets:
            self.store_socket(name)
        # By object: a socket reloadconfig retired may still have the name.
        swapped = [s for s in [*self.sockets.values(), *self.retired_sockets]
                   if s.name == name]
        for watcher in list(self.watchers.values()):
            for listening in swapped:
                watcher.socket_replaced(listening)

    def unstore_socket(self, name: str) -> None:
        if self.use_fdstore and systemd.valid_fdname(name):
            self.notifier.fdstore_remove(name)

    # ------------------------------------------------------------------ watchers at run time

    def new_watcher(self, watcher_config: WatcherConfig) -> Watcher:
        """A watcher on this supervisor's sockets, reaper and events, not yet in
        `watchers` (OSError if its output cannot be set up)."""
        return Watcher(watcher_config, self._context())

    def add_watcher(self, watcher_config: WatcherConfig) -> Watcher:
        watcher = self.new_watcher(watcher_config)
        self.watchers[watcher_config.name] = watcher
        log.info("watcher %s added", watcher_config.name)
        return watcher

    async def remove_watcher(self, name: str) -> None:
        watcher = self.watchers.get(name)
        if watcher is None:
            return
        await watcher.shutdown()
        # Only drop it if nobody re-added the name while it was stopping.
        if self.watchers.get(name) is watcher:
            del self.watchers[name]
        log.info("watcher %s removed", name)
