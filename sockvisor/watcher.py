"""A watcher: N workers of one program on its sockets -- desired count, generations,
restarts, and the zero-downtime rolling reload.

Its lifecycle is the (state, event) table in states.py: every command, every
unexpected exit the restart policy answers, the backoff timer, a ready_timeout,
and the milestones a waiting command reaches go through `_dispatch`, the only
place the state changes.  BACKOFF is a state: entering it arms the one backoff
timer, leaving it cancels the timer.  A command that awaits anything sends its
next event when it wakes up and goes by the state that comes back: a reload that
finds the watcher FATAL stops there and says so.

Commands on one watcher are serialised by `self._lock`, FIFO, never rejected as
busy; a worker's death is handled at once, outside the lock.  `signal` is not
serialised: it goes to the processes at once, in any state.  Shutting sockvisor
down cancels whatever command is running and then stops.

Circus's hooks (hooks.py) are run from here, where Circus calls them: around a
start, each spawn, each signal (stop signals too), each exit, and a stop.

How a worker is started -- argv, environment, fds, fork/exec, readiness timers --
is the launcher's (launcher.py); the watcher decides how many, of which
`Generation` (a config with the sockets it was started with), and when.

Readiness (`ready = started | notify | delay:N`) decides when a new worker counts as
serving.  A rolling reload spawns a batch of the new generation on the same
sockets, waits until every one of them is ready *and settled* -- still alive
`ready_settle` seconds (default `min_uptime`) after it was ready -- and only then
retires as many old workers; a new worker that dies before it is settled, or is
not ready within `ready_timeout`, aborts the reload: the new ones are stopped, the
previous generation (config *and* sockets) stays, the command fails.  (gunicorn
says READY=1 before its workers import the app; a release that cannot import
dies just after.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import os
import signal
import time
from typing import Any, Callable, Mapping

from sockvisor import process
from sockvisor.backoff import RestartTracker
from sockvisor.demand import DemandWatch
from sockvisor.config import WatcherConfig
from sockvisor.hooks import HookFailed, HookRunner
from sockvisor.launcher import Generation, Launcher, WatcherContext, WorkerHooks
from sockvisor.output import OutputRing, OutputSink, stderr_fallback, stdout_fallback
from sockvisor.reaper import describe_status
from sockvisor.states import (WATCHER_WANTS_WORKERS, Kind, WatcherEvent, WatcherState,
                              WorkerState, decide, row)

log = logging.getLogger("sockvisor.watcher")

SPAWN_BATCH = 32   # workers forked per event-loop turn
S, E = WatcherState, WatcherEvent

# socket_replaced rolls the workers at most RENEW_LIMIT times in RENEW_WINDOW s.
RENEW_LIMIT = 5
RENEW_WINDOW = 60.0


class ReloadError(Exception):
    """A rolling reload was aborted or stopped; the command fails with this."""


class Watcher:
    def __init__(self, config: WatcherConfig, context: WatcherContext,
                 make_launcher: Callable[[str, WatcherContext, WorkerHooks],
                                         Launcher] = Launcher):
        self.config = config
        self.name = config.name
        self.context = context
        self.numprocesses = config.numprocesses
        self.state = WatcherState.STOPPED
        self.generation = 0
        self._current: Generation | None = None   # what new workers are started from
        self.workers: dict[int, process.Worker] = {}
        self.restarts = RestartTracker(config.restart)
        self.fatal_reason = ""
        self.restart_count = 0
        self.restart_reasons: dict[str, int] = {}   # crash / failed_start / ready_timeout
        self._wid_restarts: dict[int, int] = {}
        self._used_wids: set[int] = set()
        self._released_wids: list[int] = []   # a heap
        self._wid_high = 0
        self._lock = asyncio.Lock()
        self._current_command: asyncio.Task | None = None
        self._backoff_timer: asyncio.TimerHandle | None = None   # only in BACKOFF
        self._backoff_until = 0.0   # no spawning before (set by a delayed restart)
        self._demand: DemandWatch | None = None   # only in WAITING (on_demand)
        self._reconcile_scheduled = False
        self._started_check_pending = False
        self._background: set[asyncio.Task] = set()
        self._changed = asyncio.Event()
        self._candidates: set[process.Worker] = set()   # the reload batch in flight
        # Outlives the sinks, which set/reload/reloadconfig replace (output.py).
        self.output = OutputRing()
        self._stdout, self._stderr = self._sinks(config)
        self._sinks_released = False
        self.launcher = make_launcher(self.name, context, WorkerHooks(
            on_state=self._on_worker_state, on_exit=self._on_exit,
            on_ready_timeout=self._ready_timeout))
        # Circus's hooks, commands or Python (hooks.py); their output goes where
        # the workers' does, and a Python hook sees this watcher (hook_view).
        self.hook_runner = HookRunner(self.name, context,
                                      lambda: (self._stdout, self._stderr), host=self)
        self._spawning = 0   # spawns waiting for their before_spawn hook
        self._renewals: list[float] = []   # when socket_replaced last rolled the workers

    # ------------------------------------------------------------------ Python hooks

    def hook_view(self, config: WatcherConfig) -> dict[str, Any]:
        """What a Circus Python hook run for `config` sees of this watcher
        (hooks.HookHost)."""
        return {"numprocesses": self.numprocesses,
                "env": self.launcher.watcher_env(config),
                "processes": {str(pid): {"wid": worker.wid, "started": worker.started_wall}
                              for pid, worker in self.workers.items() if worker.alive},
                "fields": {"uid": config.uid, "gid": config.gid,
                           "working_dir": config.working_dir, "cmd": config.cmd,
                           "args": list(config.args), "stop_signal": config.stop_signal,
                           "graceful_timeout": config.graceful_timeout},
                "options": dict(config.hook_options)}

    def hook_signal(self, pid: int, signum: int, config: WatcherConfig) -> str:
        """A Python hook's watcher.send_signal: only this watcher's live workers,
        and only those running as the hook does (`config`'s uid and gid: a hook
        started before a reload moved the watcher to another user must not
        signal that user's workers).  A pid that is not one -- another
        watcher's, sockvisor's, a reused one -- is refused."""
        worker = self.workers.get(pid)
        if (worker is None or not worker.alive
                or (worker.config.uid, worker.config.gid) != (config.uid, config.gid)
                or not worker.signal(signum)):
            return f"process {pid} is not a running worker of {self.name} run as this hook is"
        log.debug("watcher %s: a hook sent signal %d to %s", self.name, signum,
                  worker.label)
        return ""

    def hook_env_changed(self, changes: Mapping[str, str | None],
                         config: WatcherConfig) -> None:
        """A Python hook run for `config` changed watcher.env: the next workers of
        that config get it, as in Circus (a hook that outlived its config changes
        nothing: Launcher.change_env)."""
        if config is not self.config:
            log.info("watcher %s: a hook's environment changes were for a config the "
                     "watcher no longer has: dropped", self.name)
            return
        names = sorted(changes)
        log.info("watcher %s: a hook changed %d environment variable(s): %s%s", self.name,
                 len(names), ", ".join(names[:5]), ", ..." if len(names) > 5 else "")
        self.launcher.change_env(changes, config)

    # ------------------------------------------------------------------ state

    def _dispatch(self, event: WatcherEvent, reason: str = "",
                  choice: WatcherState | None = None) -> WatcherState:
        """Send `event` through the table: the only place a watcher's state changes.
        Returns the state that follows (TransitionError if the cell is impossible)."""
        cell, new = decide(self.state, event, choice)
        if cell.kind is Kind.IGNORED:
            log.debug("watcher %s: %s ignored in %s (%s)", self.name, event.value,
                      self.state.value, cell.why)
        elif cell.kind is Kind.GO:
            self._enter(new, reason)
        return self.state

    def _would(self, event: WatcherEvent) -> tuple[Kind, tuple[WatcherState, ...]]:
        cell, _ = decide(self.state, event, None)
        return cell.kind, cell.to

    def _enter(self, new: WatcherState, reason: str) -> None:
        old = self.state
        # The backoff timer belongs to the BACKOFF state: (re)armed on entering it,
        # gone on leaving it; entering any other state drops the pending delay.
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        if new is S.BACKOFF:
            delay = max(0.0, self._backoff_until - time.monotonic())
            self._backoff_timer = asyncio.get_running_loop().call_later(
                delay, self._backoff_elapsed)
            log.info("watcher %s: next start in %.2fs (backoff)", self.name, delay)
        else:
            self._backoff_until = 0.0
        # So is the watch on the sockets of an on_demand watcher (WAITING).
        if self._demand is not None:
            self._demand.close()
            self._demand = None
        if new is S.WAITING:
            self._watch_demand()
        self.state = new
        if old is not new:
            log.info("watcher %s: %s -> %s%s", self.name, old.value, new.value,
                     f" ({reason})" if reason else "")
            self.context.publish(f"watcher.{self.name}.state",
                                 {"from": old.value, "to": new.value, "reason": reason})
        self._pulse()

    def _watch_demand(self) -> None:
        """Watch the current sockets for a pending connection (WAITING): by their
        fds now, so again after a socket was bound anew (`socket_replaced`)."""
        sockets = self._current.sockets if self._current is not None else ()
        self._demand = DemandWatch((s.fd for s in sockets), self._on_demand)

    def _on_demand(self) -> None:
        """A connection is pending on one of an on_demand watcher's sockets (or
        on_demand was turned off: nothing to wait for)."""
        if self._dispatch(E.DEMAND, "a connection is waiting") is S.STARTING:
            self._reconcile()

    def _backoff_elapsed(self) -> None:
        self._backoff_timer = None
        self._backoff_until = 0.0
        if self._dispatch(E.BACKOFF_ELAPSED) is S.STARTING:
            self._reconcile()

    def _pulse(self) -> None:
        """Wake everything waiting for a change in this watcher's workers or state."""
        self._changed.set()
        self._changed = asyncio.Event()
        if self.state is S.STARTING and not self._started_check_pending:
            # Once per loop turn, not per pulse: starting 1,000 workers pulses
            # 1,000 times, and each check counts the ready ones.
            self._started_check_pending = True
            asyncio.get_running_loop().call_soon(self._check_started)

    def _check_started(self) -> None:
        self._started_check_pending = False
        if self.state is S.STARTING and self._start_over():
            self._dispatch(E.STARTED)

    def _start_over(self) -> bool:
        """Is a start over: every worker ready, or none alive nor coming back?"""
        if self.ready_count() >= self.numprocesses:
            return True
        return not self.config.restart.respawn and not any(
            w.state == WorkerState.STARTING for w in self.workers.values())

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def uses_socket(self, listening: Any) -> bool:
        """Whether the generation it spawns from holds `listening`: after a failed
        reloadconfig rolled it back, that may be a socket the supervisor retired."""
        return self._current is not None and any(s is listening
                                                 for s in self._current.sockets)

    async def changed(self) -> None:
        """Until the next change in this watcher's state, workers or generation."""
        await self._changed.wait()

    def live_workers(self) -> list[process.Worker]:
        """Workers that count toward the desired number (not being stopped)."""
        return [w for w in self.workers.values() if not w.stop_requested]

    def ready_count(self, generation: int | None = None) -> int:
        return sum(1 for w in self.live_workers()
                   if w.state == WorkerState.RUNNING
                   and (generation is None or w.generation == generation))

    # ------------------------------------------------------------------ serialisation

    async def _serialised(self, operation: Callable[[], Any]) -> Any:
        async with self._lock:
            self._current_command = asyncio.current_task()
            try:
                return await operation()
            finally:
                self._current_command = None

    # ------------------------------------------------------------------ commands

    async def start(self) -> dict[str, Any]:
        return await self._serialised(self._start_locked)

    async def _start_locked(self) -> dict[str, Any]:
        kind, _ = self._would(E.START)
        if kind is Kind.GO:
            await self._start_and_wait(E.START)
            return self.summary()
        self._dispatch(E.START)
        if kind is not Kind.STAY:
            return self.summary()
        await self._wait_until(lambda: self.state not in (S.STARTING, S.BACKOFF))
        return self.summary()

    async def _start_and_wait(self, event: WatcherEvent,
                              choice: WatcherState | None = None) -> None:
        """START (or RESTART/RELOAD leading to STARTING): a fresh generation, the
        restart policy starts over, spawn numprocesses; then wait until the start
        is over.  Circus's before_start hook guards it and after_start follows
        it: a False from either makes the watcher FATAL (hooks.py)."""
        self.restarts.reset()
        self.fatal_reason = ""
        self._new_generation()
        if choice is None and self.config.on_demand and S.WAITING in self._would(event)[1]:
            choice = S.WAITING   # no workers until a connection is pending
        self._dispatch(event, choice=choice)
        failure = await self.hook_runner.run(self.config, "before_start")
        if failure:
            self._fail_start(f"before_start hook failed: {failure}")
            return
        self._reconcile()
        await self._wait_until(lambda: self.state not in (S.STARTING, S.BACKOFF))
        if self.state is S.ACTIVE:
            failure = await self.hook_runner.run(self.config, "after_start")
            if failure:
                self._fail_start(f"after_start hook failed: {failure}")
                await self._stop_workers(list(self.workers.values()))

    def _fail_start(self, reason: str) -> None:
        """A hook stopped the start: FATAL, nothing more is spawned."""
        self.fatal_reason = reason
        log.error("watcher %s is FATAL: %s (`start` or `reload` to try again)",
                  self.name, reason)
        self._dispatch(E.RESTART_LIMIT, reason)

    def _new_generation(self) -> None:
        self.generation += 1
        self._current = self.launcher.generation(self.generation, self.config,
                                                 previous=self._current)

    async def stop(self) -> dict[str, Any]:
        return await self._serialised(self._stop_locked)

    async def _stop_locked(self, event: WatcherEvent = E.STOP) -> dict[str, Any]:
        if self.state is S.STOPPED:
            return self.summary()
        self._dispatch(event)
        await self.hook_runner.run(self.config, "before_stop")   # answer ignored
        await self._stop_workers(list(self.workers.values()))
        if self.state is S.STOPPING:
            self._dispatch(E.ALL_EXITED)
        await self.hook_runner.run(self.config, "after_stop")    # answer ignored
        return self.summary()

    async def shutdown(self) -> None:
        """sockvisor is exiting: cancel the running command, then stop everything."""
        command = self._current_command
        if command is not None and not command.done():
            command.cancel()
        async with self._lock:
            await self._stop_locked()
        self._release_sinks()

    async def kill_now(self) -> None:
        """Immediate stop (SIGQUIT): SIGKILL every worker's group."""
        command = self._current_command
        if command is not None and not command.done():
            command.cancel()
        if self.state is not S.STOPPED:
            self._dispatch(E.STOP, "immediate stop")
        for worker in list(self.workers.values()):
            worker.expect_exit()
            worker.kill_group()
        await asyncio.gather(*(asyncio.shield(w.exited) for w in list(self.workers.values())))
        if self.state is S.STOPPING:
            self._dispatch(E.ALL_EXITED)

    async def restart(self) -> dict[str, Any]:
        """Stop every worker, then start again (not zero-downtime: use reload)."""
        async def operation() -> dict[str, Any]:
            kind, to = self._would(E.RESTART)
            if kind is Kind.GO and to[0] is S.STARTING:   # nothing to stop
                await self._start_and_wait(E.RESTART)
                return self.summary()
            if kind is not Kind.GO:
                self._dispatch(E.RESTART)
                return self.summary()
            await self._stop_locked(E.RESTART)
            return await self._start_locked()
        return await self._serialised(operation)

    async def set_numprocesses(self, count: int) -> dict[str, Any]:
        if count < 0:
            raise ValueError("numprocesses must be 0 or more")
        return await self._serialised(lambda: self._scale(lambda current: count))

    async def incr(self, by: int = 1, limit: int | None = None) -> dict[str, Any]:
        """`by` more workers; ValueError if that passes `limit` -- checked under the
        lock, against the count the commands queued before this one left."""
        def target(current: int) -> int:
            if limit is not None and current + by > limit:
                raise ValueError(f"the number of workers to add must be at most "
                                 f"{max(limit - current, 0)} ({self.name} is set to "
                                 f"{current}, the maximum is {limit})")
            return current + by
        return await self._serialised(lambda: self._scale(target))

    async def decr(self, by: int = 1) -> dict[str, Any]:
        return await self._serialised(
            lambda: self._scale(lambda current: max(0, current - by)))

    async def _scale(self, target: Callable[[int], int]) -> dict[str, Any]:
        count = target(self.numprocesses)
        self._dispatch(E.SCALE)
        self.numprocesses = count
        self._reconcile()
        return self.summary()

    def send_signal(self, signum: int, pid: int | None = None,
                    process_group: bool = False) -> list[int]:
        targets = [w for w in self.workers.values() if pid is None or w.pid == pid]
        if pid is not None and not targets:
            raise LookupError(f"pid {pid} is not a worker of {self.name}")
        sent = []
        for worker in targets:
            if worker.signal(signum, process_group):
                sent.append(worker.pid)
        return sent

    async def send_signal_hooked(self, signum: int, pid: int | None = None,
                                 process_group: bool = False) -> list[int]:
        """`send_signal`, with Circus's before_signal and after_signal hooks around
        each worker's signal (one worker after the other, as Circus): a False
        from before_signal keeps the signal from that worker, unless it is
        SIGKILL.  HookFailed if before_signal kept it from every one."""
        if not self.hook_runner.has(self.config, "before_signal", "after_signal"):
            return self.send_signal(signum, pid, process_group)
        targets = [w for w in self.workers.values() if pid is None or w.pid == pid]
        if pid is not None and not targets:
            raise LookupError(f"pid {pid} is not a worker of {self.name}")
        sent, refused = [], []
        for worker in targets:
            context = {"pid": worker.pid, "wid": worker.wid, "signum": signum}
            failure = await self.hook_runner.run(self.config, "before_signal", **context)
            if failure and signum != signal.SIGKILL:
                refused.append(f"{worker.pid} ({failure})")
            elif worker.signal(signum, process_group):
                sent.append(worker.pid)
            await self.hook_runner.run(self.config, "after_signal", **context)
        if refused and not sent:
            raise HookFailed(f"the before_signal hook of {self.name} failed: "
                             f"{signal.Signals(signum).name} not sent to "
                             f"{', '.join(refused)}")
        return sent

    async def recycle(self, worker: process.Worker, reason: str) -> process.Worker | None:
        """Replace one worker gracefully (max_age, a resource limit, a missed
        heartbeat): spawn a replacement of the current generation, wait until it
        is ready and settled (`_await_ready`, the rule a reload uses), and only
        then retire `worker` with its stop signal and graceful_timeout -- the
        ready count never drops.  If the replacement fails, it is stopped, `worker`
        keeps serving, and None is returned (logged and published as
        `watcher.NAME.recycle.failed`).  Serialised with the commands; the old
        worker's stop goes on in the background, so a long graceful_timeout does
        not hold the next command back.  Does nothing (None) if `worker` is gone
        or being stopped, or the watcher is not ACTIVE."""
        async def operation() -> process.Worker | None:
            if (self.state is not S.ACTIVE or not worker.alive
                    or worker.stop_requested or self.workers.get(worker.pid) is not worker):
                return None
            replacement = await self._spawn_guarded()
            failure = "cannot start a worker" if replacement is None else ""
            if replacement is not None:
                # Its death before it settled is this method's to handle (keep the
                # old one), not the restart policy's (`_replace` skips candidates).
                self._candidates.add(replacement)
                try:
                    await self._await_ready([replacement])
                except process.WorkerNotReady as exc:
                    failure = str(exc)
                    await self._stop_workers([replacement])
                finally:
                    self._candidates.discard(replacement)
            if failure:
                log.error("watcher %s: recycling %s (%s) failed: %s; it keeps serving",
                          self.name, worker.label, reason, failure)
                self.context.publish(f"watcher.{self.name}.recycle.failed",
                                     {"pid": worker.pid, "reason": reason,
                                      "error": failure})
                return None
            assert replacement is not None
            log.info("watcher %s: %s replaced by %s (%s)", self.name, worker.label,
                     replacement.label, reason)
            self.context.publish(f"watcher.{self.name}.recycle",
                                 {"pid": worker.pid, "replacement": replacement.pid,
                                  "reason": reason})
            # Re-checked after the await: a watcher that left ACTIVE meanwhile (a
            # stop queued behind us cannot, but other workers' crashes can) keeps
            # both, and _reconcile decides what is surplus.
            if self.state is S.ACTIVE and worker.alive and not worker.stop_requested:
                worker.expect_exit()
                self._in_background(self._stop_workers([worker]))
            self._reconcile()   # the old one may have died meanwhile and been replaced
            return replacement
        return await self._serialised(operation)

    def socket_replaced(self, listening: Any) -> None:
        """`listening` was bound anew (sockets.keep_listening): a worker took the
        old socket out of service for good, and every worker alive now holds that
        dead socket -- one that does not die of it would serve nothing for ever.
        An on_demand watch moves to the new socket at once; those workers are
        replaced by a rolling reload onto the same config (`_renew`), queued
        behind the running command like any command."""
        if not self.uses_socket(listening):
            return
        if self._demand is not None:
            self._demand.close()
            self._watch_demand()
        stale = [w for w in self.workers.values() if w.alive and not w.stop_requested]
        if not stale:
            return
        now = time.monotonic()
        self._renewals = [t for t in self._renewals if now - t < RENEW_WINDOW]
        if len(self._renewals) >= RENEW_LIMIT:
            # A worker sharing the socket breaks it as fast as it is replaced: a
            # reload every time would roll everybody for ever (and hold off
            # upgrades).  The socket is still bound anew each time; the workers
            # are replaced again once the window has passed.
            if len(self._renewals) == RENEW_LIMIT:
                log.error("watcher %s: socket %s was taken out of service %d times in "
                          "%gs: a worker of a watcher sharing it does this; its workers "
                          "are not replaced again for now (`reload %s` replaces them)",
                          self.name, listening.name, RENEW_LIMIT, RENEW_WINDOW, self.name)
                self._renewals.append(now)
            return
        self._renewals.append(now)
        self._in_background(self._renew(stale, listening.name))

    async def _renew(self, stale: list[process.Worker], socket_name: str) -> None:
        """Replace `stale` (workers on a socket since bound anew), if any of them
        is still serving when our turn comes: a reload onto the very config, so a
        send_hup watcher rolls new workers too (SIGHUP would keep the dead fd).
        The new generation is started on the new socket; the ready and settle
        rules of any reload apply, and so does its abort: the old workers stay."""
        async def operation() -> None:
            left = [w for w in stale if w.alive and not w.stop_requested
                    and self.workers.get(w.pid) is w]
            if not left or self.state in (S.STOPPED, S.STOPPING, S.FATAL):
                return   # replaced meanwhile (a reload, a crash), or not ours to start
            log.warning("watcher %s: socket %s was bound anew; replacing the %d "
                        "worker(s) holding the dead one", self.name, socket_name,
                        len(left))
            try:
                await self._reload_locked(self.config)
            except ReloadError as exc:
                log.error("watcher %s: replacing the workers on the dead socket %s "
                          "failed: %s", self.name, socket_name, exc)
        await self._serialised(operation)

    async def replace_config(self, new_config: WatcherConfig) -> dict[str, Any]:
        """New settings that need no new processes (timeouts, signals, policy)."""
        async def operation() -> dict[str, Any]:
            self._apply_config(new_config)
            if self._current is not None:
                self._current = self.launcher.generation(self.generation, new_config,
                                                         previous=self._current)
            if self.state is S.WAITING and not new_config.on_demand:
                self._on_demand()   # on_demand turned off: start now
            return self.summary()
        return await self._serialised(operation)

    async def reload(self, new_config: WatcherConfig | None = None) -> dict[str, Any]:
        return await self._serialised(lambda: self._reload_locked(new_config))

    async def _reload_locked(self, new_config: WatcherConfig | None) -> dict[str, Any]:
        if new_config is None and self.config.send_hup:
            return await self._hup_locked()
        # Taken before the new config is applied: an aborted reload goes back to
        # it -- the generation with its config *and its sockets*.
        old_generation, old_config = self._current, self.config
        # So are the sinks the old workers write to: going back reuses them.
        old_sinks = self._stdout, self._stderr
        for sink in old_sinks:
            sink.acquire()
        try:
            if new_config is not None:
                self._apply_config(new_config)
            return await self._reload_applied(old_generation, old_config, old_sinks)
        finally:
            for sink in old_sinks:
                sink.release()

    async def _hup_locked(self) -> dict[str, Any]:
        """send_hup (Circus's): a reload with nothing changed is SIGHUP to every
        worker, which reloads itself and keeps its pid.  (A reload that brings a
        new config -- `set`, reloadconfig -- rolls new workers instead: Circus
        would only SIGHUP the old program, which keeps running the old command.)
        A stopped watcher is started, a FATAL one starts over, as reload does."""
        # Through before_signal/after_signal, as Circus's send_signal does.
        live = {w.pid for w in self.live_workers()}
        try:
            hupped = [pid for pid in await self.send_signal_hooked(signal.SIGHUP)
                      if pid in live]
        except HookFailed as exc:
            log.warning("watcher %s: reload by SIGHUP: %s", self.name, exc)
            hupped = []
        kind, to = self._would(E.HUP)   # after the hooks' await: as it is now
        if hupped:
            log.info("watcher %s: reload by SIGHUP (send_hup) to %s", self.name,
                     ", ".join(map(str, hupped)))
        if kind is Kind.GO:
            await self._start_and_wait(E.HUP)
        else:
            self._dispatch(E.HUP)
        # A reload like any other for subscribers (Circus notifies "reload" too).
        self.context.publish(f"watcher.{self.name}.reload.finished",
                             {"generation": self.generation, "replaced": 0,
                              "hup": hupped})
        result = self.summary()
        result["hup"] = hupped
        return result

    async def _reload_applied(self, old_generation: Generation | None,
                              old_config: WatcherConfig,
                              old_sinks: tuple[OutputSink, OutputSink]) -> dict[str, Any]:
        choice = S.RELOADING if self.live_workers() else S.STARTING
        kind, to = self._would(E.RELOAD)
        if kind is not Kind.GO:
            self._dispatch(E.RELOAD)
            return self.summary()
        if choice not in to:
            choice = to[0]
        if choice is S.STARTING and self.config.on_demand and S.WAITING in to:
            choice = S.WAITING
        if choice is S.WAITING:   # on_demand: the next connection starts the new config
            await self._start_and_wait(E.RELOAD, choice)
            return self.summary()
        if choice is S.STARTING:
            await self._start_and_wait(E.RELOAD, choice)
            return self.summary()
        started = time.monotonic()
        if self.state is S.FATAL:   # the restart policy starts over
            self.restarts.reset()
            self.fatal_reason = ""
        self._new_generation()
        self._dispatch(E.RELOAD, choice=S.RELOADING)
        self.context.publish(f"watcher.{self.name}.reload.started",
                             {"generation": self.generation})
        failure: ReloadError | None = None
        try:
            replaced = await self._roll(abort_on_failure=True)
        except ReloadError as exc:
            failure = exc
        except asyncio.CancelledError:
            # sockvisor is stopping: whatever runs now is stopped next.
            self._dispatch(E.RELOAD_DONE, "cancelled", choice=self._after_reload())
            raise
        if failure is None and self.state is S.RELOADING:
            self._end_reload()
            result = self.summary()
            result.update(replaced=replaced, seconds=round(time.monotonic() - started, 3))
            self.context.publish(f"watcher.{self.name}.reload.finished",
                                 {"generation": self.generation, "replaced": replaced})
            return result
        # Aborted (a candidate failed), or stopped (the watcher went FATAL meanwhile).
        reason = str(failure) if failure else f"reload of {self.name} stopped"
        if old_generation is not None:
            if self.state is S.RELOADING:
                await self._roll_back(old_generation, old_config, old_sinks)
            else:   # FATAL: back to the previous config, but spawn nothing
                self._restore(old_generation, old_config, old_sinks)
        self._end_reload("reload aborted")
        if self.state is S.FATAL:
            reason += (f"; {self.name} is FATAL: {self.fatal_reason} (`start` or "
                       f"`reload` to try again)")
        self.context.publish(f"watcher.{self.name}.reload.aborted",
                             {"generation": self.generation, "reason": reason})
        raise ReloadError(reason)

    def _after_reload(self) -> WatcherState:
        return S.BACKOFF if self._backoff_until > time.monotonic() else S.ACTIVE

    def _end_reload(self, reason: str = "") -> None:
        if self._dispatch(E.RELOAD_DONE, reason, choice=self._after_reload()) in (
                S.ACTIVE, S.STARTING):
            self._reconcile()

    async def _roll(self, abort_on_failure: bool) -> int:
        """Replace every worker not of the current generation, batch by batch, as
        long as the watcher is RELOADING (it may go FATAL on the way)."""
        batch_size = self.config.reload_batch or max(self.numprocesses, 1)
        replaced = 0
        while self.state is S.RELOADING:
            old = [w for w in self.live_workers() if w.generation != self.generation]
            if not old:
                break
            current = [w for w in self.live_workers() if w.generation == self.generation]
            to_start = min(batch_size, max(self.numprocesses - len(current), 0))
            spawned = [w for w in await asyncio.gather(
                *(self._spawn_guarded() for _ in range(to_start))) if w is not None]
            if len(spawned) < to_start and abort_on_failure:
                await self._stop_workers(spawned)
                raise ReloadError(f"{self.name}: could not spawn the new generation")
            if to_start and not spawned:
                break   # rolling back and fork fails: leave it to the restart policy
            self._candidates.update(spawned)
            batch_failed = False
            try:
                await self._await_ready(spawned)
            except process.WorkerNotReady as exc:
                await self._stop_workers(spawned)
                if abort_on_failure:
                    raise ReloadError(f"reload of {self.name} aborted: {exc}") from None
                log.error("watcher %s: %s", self.name, exc)
                batch_failed = True
            finally:
                self._candidates.difference_update(spawned)
            if batch_failed:
                if self.state is not S.RELOADING:
                    break
                retire = old[:len(spawned)]   # rolling back: keep going regardless
            else:
                if self._dispatch(E.SETTLE_ELAPSED) is not S.RELOADING:
                    break   # FATAL meanwhile: nothing more is retired or spawned
                # Retire only the surplus the ready batch made: an old worker that died
                # while it started already made room, and retiring one more for it
                # would leave fewer than numprocesses ready for the rest of the reload.
                surplus = max(len(self.live_workers()) - self.numprocesses, 0)
                retire = [w for w in old if w.alive and not w.stop_requested][:surplus]
            await self._stop_workers(retire)
            replaced += len(retire)
        return replaced

    def _restore(self, old_generation: Generation, old_config: WatcherConfig,
                 old_sinks: tuple[OutputSink, OutputSink]) -> None:
        """Back to the previous generation: its config, its number, its sockets."""
        self._apply_config(old_config, old_sinks)
        self._current = old_generation
        self._pulse()   # whoever waits for a retired socket's users sees this
        self.generation = old_generation.number

    async def _roll_back(self, old_generation: Generation, old_config: WatcherConfig,
                         old_sinks: tuple[OutputSink, OutputSink]) -> None:
        """After an aborted reload: back to the previous generation on every worker."""
        self._restore(old_generation, old_config, old_sinks)
        if any(w.generation != old_generation.number for w in self.live_workers()):
            await self._roll(abort_on_failure=False)

    async def _await_ready(self, workers: list[process.Worker]) -> None:
        """Until every one of `workers` is ready and settled (Worker.settle_remaining);
        WorkerNotReady if one is not ready in time or exits before it settled."""
        if not workers:
            return
        timeout = self.config.ready.timeout + 1.0
        try:
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(w.ready)
                                                    for w in workers)), timeout)
        except asyncio.TimeoutError:
            raise process.WorkerNotReady(workers[0], "not ready in time") from None
        settle = self.config.ready_settle
        while True:
            remaining = [w.settle_remaining(settle) for w in workers]
            gone = [w for w, left in zip(workers, remaining) if left is None]
            if gone:
                worker = gone[0]
                if worker.exited_at is not None and worker.ready_at is not None:
                    what = (f"exited {worker.exited_at - worker.ready_at:.2f}s after it "
                            f"was ready ({describe_status(worker.exit_status or 0)})")
                else:
                    what = f"was {worker.state.value} before it settled"
                raise process.WorkerNotReady(
                    worker, f"{what}, within ready_settle ({settle:g}s): a new worker "
                            f"must stay alive that long once ready")
            wait = max(remaining)
            if wait <= 0:
                return
            # Woken by any exit (or stop) of one of them, else when the last settles.
            await asyncio.wait([asyncio.shield(w.exited) for w in workers],
                               timeout=wait, return_when=asyncio.FIRST_COMPLETED)

    def _apply_config(self, config: WatcherConfig,
                      sinks: tuple[OutputSink, OutputSink] | None = None) -> None:
        """Take `config` for what comes next; `sinks`: the output sinks to use with
        it (those of an earlier config), instead of new ones if its output changed."""
        if config.numprocesses != self.config.numprocesses:
            self.numprocesses = config.numprocesses
        if config.restart != self.config.restart:
            self.restarts = RestartTracker(config.restart)
        self.launcher.carry_env_changes(self.config, config)
        if sinks is not None:
            if sinks == (self._stdout, self._stderr):
                sinks = None
            else:
                for sink in sinks:
                    sink.acquire()
                    sink.apply_limits()
        elif (config.stdout, config.stderr, config.uid, config.gid) != (
                self.config.stdout, self.config.stderr, self.config.uid, self.config.gid):
            # New sinks for the workers to come (made first: if a file cannot be
            # opened, nothing has changed).  The running workers keep theirs, which
            # close after the last of them.
            sinks = self._sinks(config)
        if sinks is not None:
            self._release_sinks()
            self._stdout, self._stderr = sinks
            self._sinks_released = False
        self.config = config

    def _sinks(self, config: WatcherConfig) -> tuple[OutputSink, OutputSink]:
        previous = getattr(self, "_stdout", None), getattr(self, "_stderr", None)
        stdout = OutputSink(config.stdout, self.name, stdout_fallback(), config.uid,
                            config.gid, previous[0] and previous[0].dropped, self.output,
                            "stdout")
        try:
            stderr = OutputSink(config.stderr, self.name, stderr_fallback(), config.uid,
                                config.gid, previous[1] and previous[1].dropped, self.output,
                                "stderr")
        except BaseException:
            stdout.release()
            raise
        return stdout, stderr

    def _release_sinks(self) -> None:
        """Drop the watcher's own reference to its current sinks (once)."""
        if not self._sinks_released:
            self._sinks_released = True
            self._stdout.release()
            self._stderr.release()

    def output_stats(self) -> dict[str, dict[str, int]]:
        """Worker output dropped so far (a stalled reader, a full disk, ...)."""
        return {"stdout": self._stdout.dropped.as_dict(),
                "stderr": self._stderr.dropped.as_dict()}

    # ------------------------------------------------------------------ the desired count

    def _reconcile(self) -> None:
        """Bring the number of live workers to `numprocesses`.

        Spawns what is missing (not while a backoff delay runs: the watcher is
        failing to start, so starting more now only fails faster); retires extras,
        except during a reload, when old and new workers overlap on purpose.
        """
        self._reconcile_scheduled = False
        if self.state not in WATCHER_WANTS_WORKERS:
            return
        live = self.live_workers()
        missing = self.numprocesses - len(live)
        if self._backoff_until > time.monotonic():
            missing = min(missing, 0)   # a backoff holds back spawning, not retiring
        if missing > SPAWN_BATCH:
            # Many to start (incr 1000): a batch now, the rest on later loop turns,
            # so control commands and exits are still served in between.
            missing = SPAWN_BATCH
            if not self._reconcile_scheduled:
                self._reconcile_scheduled = True
                asyncio.get_running_loop().call_soon(self._reconcile)
        if self.hook_runner.has(self.config, "before_spawn", "after_spawn"):
            # Each spawn waits for its hook in a task of its own: the loop goes on.
            for _ in range(min(missing - self._spawning, SPAWN_BATCH - self._spawning)):
                self._spawning += 1
                self._in_background(self._spawn_reconciled())
            missing = min(missing, 0)
        for _ in range(missing):
            if self._spawn() is None:
                self._apply_policy(self.restarts.on_exit(0.0))
                return
        if missing < 0 and self.state is not S.RELOADING:
            # Retire the ones that serve least: not yet ready first, then the newest.
            order = sorted(live, key=lambda w: (w.state == WorkerState.RUNNING,
                                                -w.started_at))
            extras = order[:-missing]
            for worker in extras:
                worker.expect_exit()
            self._in_background(self._stop_workers(extras))
        self._pulse()

    def _apply_policy(self, decision) -> None:
        """What the restart policy decided about a failed start: FATAL, or a delay."""
        if decision.fatal:
            self.fatal_reason = decision.reason
            log.error("watcher %s is FATAL: %s; not spawning any more (`start` or "
                      "`reload` to try again)", self.name, decision.reason)
            self._dispatch(E.RESTART_LIMIT, decision.reason)
        else:
            self._backoff_until = time.monotonic() + decision.delay
            self._dispatch(E.START_FAILED)

    async def _stop_workers(self, workers: list[process.Worker]) -> None:
        # Each with the stop signal of the config it was started from: after a
        # reloadconfig, the old program still expects its own.
        if self.hook_runner.has(self.config, "before_signal", "after_signal"):
            await asyncio.gather(*(self._stop_hooked(w) for w in workers if w.alive))
            return
        await asyncio.gather(*(w.stop(w.config.stop_signal, w.config.graceful_timeout)
                               for w in workers if w.alive))

    async def _stop_hooked(self, worker: process.Worker) -> None:
        """Stop `worker` as Circus does with signal hooks: its stop signal goes
        through before_signal, and a False keeps it from the worker (signal 0
        sends nothing), which is then SIGKILLed after graceful_timeout."""
        signum = worker.config.stop_signal
        context = {"pid": worker.pid, "wid": worker.wid, "signum": signum}
        failure = await self.hook_runner.run(self.config, "before_signal", **context)
        stopping = asyncio.ensure_future(
            worker.stop(0 if failure else signum, worker.config.graceful_timeout))
        await asyncio.sleep(0)   # its first step sends the signal
        await self.hook_runner.run(self.config, "after_signal", **context)
        await stopping

    def _in_background(self, coroutine: Any) -> None:
        """Run `coroutine` as a task we keep a reference to (asyncio only keeps weak ones)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ workers

    def _free_wid(self) -> int:
        """The lowest worker id no live worker has (a replacement gets the dead one's).

        A heap of released ids plus a high-water mark: O(log N) per spawn, where
        scanning the ids of 1,000 workers on every spawn showed in profiles.
        """
        while self._released_wids:
            wid = heapq.heappop(self._released_wids)
            if wid not in self._used_wids:
                break
        else:
            self._wid_high += 1
            wid = self._wid_high
        self._used_wids.add(wid)
        return wid

    def _release_wid(self, wid: int) -> None:
        self._used_wids.discard(wid)
        heapq.heappush(self._released_wids, wid)

    async def _spawn_reconciled(self) -> None:
        """One spawn `_reconcile` asked for, with its hooks; a before_spawn that
        says False is a failed start for the restart policy (hooks.py)."""
        try:
            worker, failure = await self._spawn_with_hooks()
        finally:
            self._spawning -= 1
        if worker is None and failure and self.state in WATCHER_WANTS_WORKERS:
            decision = self.restarts.on_exit(0.0)
            if decision.fatal:
                decision = dataclasses.replace(decision,
                                               reason=f"{decision.reason}; {failure}")
            self._apply_policy(decision)
        elif self.state in WATCHER_WANTS_WORKERS:
            self._reconcile()   # what SPAWN_BATCH held back

    async def _spawn_guarded(self) -> process.Worker | None:
        """`_spawn`, with Circus's before_spawn and after_spawn hooks around it."""
        return (await self._spawn_with_hooks())[0]

    async def _spawn_with_hooks(self) -> tuple[process.Worker | None, str]:
        """(worker, "") or (None, why): before_spawn said False, or the fork
        failed.  A worker whose after_spawn says False is stopped as a failed
        start (its exit goes to the restart policy, or aborts a reload)."""
        config = self.config
        if not self.hook_runner.has(config, "before_spawn", "after_spawn"):
            worker = self._spawn()
            return worker, "" if worker is not None else "cannot start a worker"
        wid = self._free_wid()
        failure = await self.hook_runner.run(config, "before_spawn", wid=wid)
        if (failure or self.state not in WATCHER_WANTS_WORKERS
                or (self.state is not S.RELOADING
                    and len(self.live_workers()) >= self.numprocesses)):
            # Refused, or not wanted any more (stopped, scaled down meanwhile).
            self._release_wid(wid)
            return None, f"before_spawn hook failed: {failure}" if failure else ""
        worker = self._spawn(wid)
        if worker is None:
            return None, "cannot start a worker"
        failure = await self.hook_runner.run(config, "after_spawn", pid=worker.pid, wid=wid)
        if failure and worker.alive:
            log.error("watcher %s: after_spawn hook failed for %s: %s; stopping it",
                      self.name, worker.label, failure)
            worker.fail_ready(f"after_spawn hook failed: {failure}")
            self._in_background(worker.stop(worker.config.stop_signal,
                                            worker.config.graceful_timeout, expected=False))
        return worker, ""

    def _spawn(self, wid: int | None = None) -> process.Worker | None:
        """Launch one worker of the current generation (as `wid`, which the caller
        reserved); None if it could not be."""
        wid = self._free_wid() if wid is None else wid
        worker = self.launcher.launch(self._current, wid, (self._stdout, self._stderr))
        if worker is None:
            self._release_wid(wid)
            return None
        self.workers[worker.pid] = worker
        return worker

    def _ready_timeout(self, worker: process.Worker) -> None:
        """The launcher's readiness timer: `worker` missed ready_timeout."""
        if self._dispatch(E.READY_TIMEOUT) in (S.STOPPED, S.STOPPING):
            return   # ignored: it is being stopped anyway
        reason = f"not ready within ready_timeout ({worker.config.ready.timeout:g}s)"
        log.error("watcher %s: %s %s; stopping it", self.name, worker.label, reason)
        worker.fail_ready(reason)
        # Stopped on our initiative, but as a failure: its exit counts as a failed start.
        self._in_background(worker.stop(worker.config.stop_signal,
                                        worker.config.graceful_timeout, expected=False))

    def on_notify(self, worker: process.Worker, fields: Mapping[str, str]) -> None:
        """A datagram from the worker's NOTIFY_SOCKET (see readiness.py)."""
        self.launcher.on_notify(worker, fields)

    def _on_worker_state(self, worker: process.Worker, old: WorkerState,
                         new: WorkerState) -> None:
        if new == WorkerState.RUNNING:
            self.context.publish(f"watcher.{self.name}.ready",
                                 {"pid": worker.pid, "wid": worker.wid,
                                  "generation": worker.generation})
        self._pulse()

    def _on_exit(self, worker: process.Worker, status: int) -> None:
        """`worker` was reaped: record it and decide about a replacement."""
        self.hook_runner.run_later(   # Circus's exit_code: -N if killed by signal N
            self.config, ("before_reap", "after_reap"), pid=worker.pid, wid=worker.wid,
            exit_code=(-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                       else os.WEXITSTATUS(status)))
        self.workers.pop(worker.pid, None)
        self._release_wid(worker.wid)
        self.context.publish(f"watcher.{self.name}.exit",
                             {"pid": worker.pid, "wid": worker.wid,
                              "status": describe_status(status),
                              "expected": worker.stop_requested})
        if worker.stop_requested:
            log.info("%s stopped (%s)", worker.label, describe_status(status))
            self._pulse()
            return
        uptime = worker.uptime
        try:
            self._replace(worker, uptime)
        finally:
            # Logged after the replacement is forked: the log write is not on the
            # respawn path.
            if worker.spawn_error is None:
                log.warning("%s exited unexpectedly after %.2fs (%s)", worker.label,
                            uptime, describe_status(status))
            self._pulse()

    def _replace(self, worker: process.Worker, uptime: float) -> None:
        """An unexpected exit: respawn now, after a backoff, or go FATAL."""
        if worker in self._candidates or self.state not in WATCHER_WANTS_WORKERS:
            # A failed reload candidate is the reload's business (it aborts); a
            # watcher that wants no workers replaces none.
            self._dispatch(E.WORKER_EXIT)
            return
        if not self.config.restart.respawn:
            self.numprocesses = max(0, self.numprocesses - 1)
            self._dispatch(E.WORKER_EXIT)
            return
        failed_start = worker.ready_at is None or worker.ready_failed
        decision = self.restarts.on_exit(0.0 if failed_start else uptime)
        self.restart_count += 1
        reason = ("ready_timeout" if worker.ready_failed else
                  "failed_start" if failed_start else "crash")
        self.restart_reasons[reason] = self.restart_reasons.get(reason, 0) + 1
        self._wid_restarts[worker.wid] = self._wid_restarts.get(worker.wid, 0) + 1
        if decision.fatal or decision.delay > 0:
            self._apply_policy(decision)
        elif self.config.on_demand and self.state in (S.STARTING, S.ACTIVE):
            # Circus's on_demand: no replacement until the next connection.
            self._dispatch(E.IDLE, f"{worker.label} exited")
        else:
            self._dispatch(E.WORKER_EXIT)
            self._reconcile()

    # ------------------------------------------------------------------ upgrade

    def snapshot(self) -> dict[str, Any]:
        """This watcher's state for an upgrade (handover.py); its workers' output
        pipes are added by the caller.  Only taken when no command is running
        (upgrade.refusal), so nothing is in flight but timers."""
        return {"name": self.name, "state": self.state.value,
                "generation": self.generation, "numprocesses": self.numprocesses,
                "fatal_reason": self.fatal_reason, "restart_count": self.restart_count,
                "restart_reasons": dict(self.restart_reasons),
                "wid_restarts": {str(k): v for k, v in self._wid_restarts.items()},
                "wid_high": self._wid_high, "restarts": self.restarts.snapshot(),
                "backoff_remaining": max(0.0, self._backoff_until - time.monotonic()),
                "output": self.output.snapshot(),
                # What Python hooks set in watcher.env: the next workers get it.
                "env_changes": self.launcher.current_env_changes(self.config),
                "workers": [w.snapshot() for w in self.workers.values()]}

    @classmethod
    def restore(cls, config: WatcherConfig, context: WatcherContext, data: dict[str, Any],
                worker_configs: Mapping[int, WatcherConfig],
                pipes: Mapping[int, dict[str, tuple[int, bytes] | None]]) -> "Watcher":
        """The watcher as `snapshot` described it, its workers taken over (not
        spawned): registered with the reaper, their pipes read again.  Call
        `resumed()` once the reaper runs."""
        watcher = cls(config, context)
        watcher.state = WatcherState(data["state"])
        watcher.generation = data["generation"]
        watcher.numprocesses = data["numprocesses"]
        watcher.fatal_reason = data["fatal_reason"]
        watcher.restart_count = data["restart_count"]
        watcher.restart_reasons = dict(data["restart_reasons"])
        watcher._wid_restarts = {int(k): v for k, v in data["wid_restarts"].items()}
        watcher.restarts.restore(data["restarts"])
        if "output" in data:
            watcher.output.restore(data["output"])
        watcher.launcher.change_env(data.get("env_changes", {}), config)
        watcher._current = watcher.launcher.generation(watcher.generation, config)
        generations: dict[int, Generation] = {}   # by id(config)
        for item in data["workers"]:
            worker_config = worker_configs.get(item["pid"], config)
            generation = (watcher._current if worker_config is config else
                          generations.setdefault(id(worker_config), watcher.launcher.generation(
                              item["generation"], worker_config, watcher._current)))
            worker = process.Worker.restore(worker_config, item, watcher._on_worker_state)
            if item["cgroup"] and context.cgroups is not None:
                worker.cgroup = context.cgroups.leaves.get(item["cgroup"])
            watcher.workers[worker.pid] = worker
            watcher._used_wids.add(worker.wid)
            watcher.launcher.adopt(worker, generation, (watcher._stdout, watcher._stderr),
                                   pipes.get(worker.pid, {}))
        watcher._wid_high = max([data["wid_high"], *watcher._used_wids])
        for wid in range(1, watcher._wid_high + 1):
            if wid not in watcher._used_wids:
                heapq.heappush(watcher._released_wids, wid)
        watcher._backoff_until = time.monotonic() + data["backoff_remaining"]
        return watcher

    def resumed(self) -> None:
        """After an upgrade, with the reaper running: the backoff timer again (its
        remaining time), the watch on an idle on_demand watcher's sockets
        again, and the desired count again (a worker that died during the exec
        was reaped by now and is replaced)."""
        if self.state in (S.BACKOFF, S.WAITING):
            self._enter(self.state, "resumed after an upgrade")
        else:
            self._backoff_until = 0.0
            self._reconcile()

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict[str, Any]:
        result = {"name": self.name, "state": self.state.value,
                  "numprocesses": self.numprocesses, "generation": self.generation,
                  "ready": self.ready_count(), "processes": len(self.workers)}
        if self.fatal_reason:
            result["fatal_reason"] = self.fatal_reason
        return result

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        result = self.summary()
        result["restarts"] = self.restart_count
        if self._backoff_until > now:
            result["backoff"] = round(self._backoff_until - now, 3)
        # The row of the lifecycle table for the current state: what each event
        # would do now (states.py).
        result["next"] = row(self.state)
        result["workers"] = [
            {"pid": w.pid, "wid": w.wid, "generation": w.generation,
             "state": w.state.value, "ready": w.state == WorkerState.RUNNING,
             "uptime": round(now - w.started_at, 3),
             "restarts": self._wid_restarts.get(w.wid, 0),
             **({"status": w.status_text} if w.status_text else {})}
            for w in sorted(self.workers.values(), key=lambda w: (w.wid, w.started_at))]
        return result
