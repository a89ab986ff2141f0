"""A watcher: N workers of one program on its sockets — desired count, generations,
restarts, and the zero-downtime rolling reload.

What each command does in each state (commands on one watcher are serialised by
`self._lock`, FIFO, never rejected as busy; a worker's death is handled at once,
outside the lock):

| state \\ command | start            | stop        | reload                 | incr / decr / numprocesses |
|-----------------|------------------|-------------|------------------------|----------------------------|
| STOPPED         | spawn, wait ready| no-op       | start with new config  | set the count only         |
| STARTING/ACTIVE | no-op            | stop all    | rolling replacement    | spawn / retire at once     |
| RELOADING       | (queued behind the reload, like every command)                                     |
| FATAL           | reset, spawn     | stop all    | start with new config  | set the count only         |

`signal` is not serialised: it goes to the processes at once, in any state.
Shutting sockvisor down cancels whatever command is running and then stops.

Readiness (`ready = started | notify | delay:N`) decides when a new worker counts as
serving.  A rolling reload spawns a batch of the new generation on the same
sockets, waits until every one of them is ready *and settled* -- still alive
`ready_settle` seconds (default `min_uptime`) after it was ready -- and only then
retires as many old workers; a new worker that dies before it is settled, or is
not ready within `ready_timeout`, aborts the reload: the new ones are stopped, the
old configuration stays, the command fails.  (gunicorn says READY=1 before its
workers import the app; a release that cannot import dies just after.)
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sockvisor import process
from sockvisor.backoff import RestartTracker
from sockvisor.cgroup import CgroupTree
from sockvisor.config import ReadyKind, WatcherConfig, expand_worker_args
from sockvisor.output import OutputRing, OutputSink, stderr_fallback, stdout_fallback
from sockvisor.reaper import Reaper, describe_status
from sockvisor.sockets import ListeningSocket, keep_listening
from sockvisor.states import (WATCHER_TRANSITIONS, WATCHER_WANTS_WORKERS, WatcherState,
                              WorkerState, check_transition)

log = logging.getLogger("sockvisor.watcher")

SPAWN_BATCH = 32   # workers forked per event-loop turn


class ReloadError(Exception):
    """A rolling reload was aborted; the previous generation keeps serving."""


@dataclass
class WatcherContext:
    """What a watcher needs from the supervisor that owns it."""
    reaper: Reaper
    sockets: Mapping[str, ListeningSocket]
    notify_address: str | None
    publish: Callable[[str, dict[str, Any]], None]
    workers_by_pid: dict[int, process.Worker]   # shared index for readiness messages
    cgroups: CgroupTree | None = None           # a cgroup per worker, if usable


class Watcher:
    def __init__(self, config: WatcherConfig, context: WatcherContext):
        self.config = config
        self.name = config.name
        self.context = context
        self.numprocesses = config.numprocesses
        self.state = WatcherState.STOPPED
        self.generation = 0
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
        self._backoff: asyncio.TimerHandle | None = None
        self._reconcile_scheduled = False
        self._background: set[asyncio.Task] = set()
        self._groups_cache: tuple[WatcherConfig, list[int] | None] | None = None
        self._backoff_until = 0.0
        self._changed = asyncio.Event()
        self._reloading_batch: set[process.Worker] = set()
        # Outlives the sinks, which set/reload/reloadconfig replace (output.py).
        self.output = OutputRing()
        self._stdout, self._stderr = self._sinks(config)
        self._sinks_released = False
        self._env_cache: dict[str, str] | None = None

    # ------------------------------------------------------------------ state

    def transition(self, new: WatcherState, reason: str = "") -> None:
        """The only place a watcher's state changes."""
        old = self.state
        if old == new:
            return
        check_transition(WATCHER_TRANSITIONS, old, new)
        self.state = new
        log.info("watcher %s: %s -> %s%s", self.name, old.value, new.value,
                 f" ({reason})" if reason else "")
        self.context.publish(f"watcher.{self.name}.state",
                             {"from": old.value, "to": new.value, "reason": reason})
        self._pulse()

    def _pulse(self) -> None:
        """Wake everything waiting for a change in this watcher's workers or state."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
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
        if self.state in (WatcherState.ACTIVE, WatcherState.STARTING):
            return self.summary()
        self.restarts.reset()
        self.fatal_reason = ""
        self.generation += 1
        self.transition(WatcherState.STARTING)
        self._reconcile()
        await self._wait_until(self._start_settled)
        if self.state == WatcherState.STARTING:
            self.transition(WatcherState.ACTIVE)
        return self.summary()

    def _start_settled(self) -> bool:
        if self.state != WatcherState.STARTING:
            return True
        if self.ready_count(self.generation) >= self.numprocesses:
            return True
        # Nothing alive and nothing coming back: do not wait forever.
        return not self.config.restart.respawn and not any(
            w.state == WorkerState.STARTING for w in self.workers.values())

    async def stop(self) -> dict[str, Any]:
        return await self._serialised(self._stop_locked)

    async def _stop_locked(self) -> dict[str, Any]:
        if self.state == WatcherState.STOPPED and not self.workers:
            return self.summary()
        self.transition(WatcherState.STOPPING)
        self._cancel_backoff()
        await self._stop_workers(list(self.workers.values()))
        self.transition(WatcherState.STOPPED)
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
        self._cancel_backoff()
        if self.state != WatcherState.STOPPED:
            self.transition(WatcherState.STOPPING, "immediate stop")
        for worker in list(self.workers.values()):
            worker.stop_requested = True
            worker.kill_group()
        await asyncio.gather(*(asyncio.shield(w.exited) for w in list(self.workers.values())))

    async def restart(self) -> dict[str, Any]:
        """Stop every worker, then start again (not zero-downtime: use reload)."""
        async def operation() -> dict[str, Any]:
            await self._stop_locked()
            return await self._start_locked()
        return await self._serialised(operation)

    async def set_numprocesses(self, count: int) -> dict[str, Any]:
        if count < 0:
            raise ValueError("numprocesses must be 0 or more")

        async def operation() -> dict[str, Any]:
            self.numprocesses = count
            self._reconcile()
            return self.summary()
        return await self._serialised(operation)

    async def incr(self, by: int = 1) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            self.numprocesses += by
            self._reconcile()
            return self.summary()
        return await self._serialised(operation)

    async def decr(self, by: int = 1) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            self.numprocesses = max(0, self.numprocesses - by)
            self._reconcile()
            return self.summary()
        return await self._serialised(operation)

    def send_signal(self, signum: int, pid: int | None = None,
                    process_group: bool = False) -> list[int]:
        targets = [w for w in self.workers.values() if pid is None or w.pid == pid]
        if pid is not None and not targets:
            raise LookupError(f"pid {pid} is not a worker of {self.name}")
        sent = []
        for worker in targets:
            if process_group:
                try:
                    os.killpg(worker.pid, signum)
                    sent.append(worker.pid)
                except ProcessLookupError:
                    pass
            elif worker.signal(signum):
                sent.append(worker.pid)
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
            if (self.state != WatcherState.ACTIVE or not worker.alive
                    or worker.stop_requested or self.workers.get(worker.pid) is not worker):
                return None
            replacement = self._spawn()
            failure = "cannot fork" if replacement is None else ""
            if replacement is not None:
                # Its death before it settled is this method's to handle (keep the
                # old one), not the restart policy's (`_replace` skips the batch).
                self._reloading_batch.add(replacement)
                try:
                    await self._await_ready([replacement])
                except process.WorkerNotReady as exc:
                    failure = str(exc)
                    await self._stop_workers([replacement])
                finally:
                    self._reloading_batch.discard(replacement)
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
            if worker.alive and not worker.stop_requested:
                worker.stop_requested = True
                self._in_background(self._stop_workers([worker]))
            self._reconcile()   # the old one may have died meanwhile and been replaced
            return replacement
        return await self._serialised(operation)

    async def replace_config(self, new_config: WatcherConfig) -> dict[str, Any]:
        """New settings that need no new processes (timeouts, signals, policy)."""
        async def operation() -> dict[str, Any]:
            self._apply_config(new_config)
            return self.summary()
        return await self._serialised(operation)

    async def reload(self, new_config: WatcherConfig | None = None) -> dict[str, Any]:
        return await self._serialised(lambda: self._reload_locked(new_config))

    async def _reload_locked(self, new_config: WatcherConfig | None) -> dict[str, Any]:
        # Taken before the new config is applied: an aborted reload goes back to it.
        old_generation, old_config = self.generation, self.config
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

    async def _reload_applied(self, old_generation: int, old_config: WatcherConfig,
                              old_sinks: tuple[OutputSink, OutputSink]) -> dict[str, Any]:
        if self.state in (WatcherState.STOPPED, WatcherState.FATAL):
            return await self._start_locked()
        started = time.monotonic()
        self.generation += 1
        self.transition(WatcherState.RELOADING)
        self.context.publish(f"watcher.{self.name}.reload.started",
                             {"generation": self.generation})
        try:
            replaced = await self._roll(abort_on_failure=True)
        except ReloadError as exc:
            await self._roll_back(old_generation, old_config, old_sinks)
            self.transition(WatcherState.ACTIVE, "reload aborted")
            self.context.publish(f"watcher.{self.name}.reload.aborted",
                                 {"generation": old_generation, "reason": str(exc)})
            raise
        self.transition(WatcherState.ACTIVE)
        result = self.summary()
        result.update(replaced=replaced, seconds=round(time.monotonic() - started, 3))
        self.context.publish(f"watcher.{self.name}.reload.finished",
                             {"generation": self.generation, "replaced": replaced})
        return result

    async def _roll(self, abort_on_failure: bool) -> int:
        """Replace every worker not of the current generation, batch by batch."""
        batch_size = self.config.reload_batch or max(self.numprocesses, 1)
        replaced = 0
        while True:
            old = [w for w in self.live_workers() if w.generation != self.generation]
            if not old:
                break
            current = [w for w in self.live_workers() if w.generation == self.generation]
            to_start = min(batch_size, max(self.numprocesses - len(current), 0))
            spawned = [w for w in (self._spawn() for _ in range(to_start)) if w is not None]
            if len(spawned) < to_start and abort_on_failure:
                await self._stop_workers(spawned)
                raise ReloadError(f"{self.name}: could not spawn the new generation")
            if to_start and not spawned:
                break   # rolling back and fork fails: leave it to the restart policy
            self._reloading_batch.update(spawned)
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
                self._reloading_batch.difference_update(spawned)
            if batch_failed:
                retire = old[:len(spawned)]   # rolling back: keep going regardless
            else:
                # Retire only the surplus the ready batch made: an old worker that died
                # while it started already made room, and retiring one more for it
                # would leave fewer than numprocesses ready for the rest of the reload.
                surplus = max(len(self.live_workers()) - self.numprocesses, 0)
                retire = [w for w in old if w.alive and not w.stop_requested][:surplus]
            await self._stop_workers(retire)
            replaced += len(retire)
        self._reconcile()
        return replaced

    async def _roll_back(self, old_generation: int, old_config: WatcherConfig,
                         old_sinks: tuple[OutputSink, OutputSink]) -> None:
        """After an aborted reload: back to the previous config on every worker."""
        self._apply_config(old_config, old_sinks)
        self.generation = old_generation
        if any(w.generation != old_generation for w in self.live_workers()):
            await self._roll(abort_on_failure=False)
        self._reconcile()

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
        self._env_cache = None

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

        Spawns what is missing (unless a backoff is pending: the watcher is failing
        to start, so starting more now only fails faster); retires extras, except
        during a reload, when old and new workers overlap on purpose.
        """
        self._reconcile_scheduled = False
        if self.state not in WATCHER_WANTS_WORKERS:
            return
        live = self.live_workers()
        missing = self.numprocesses - len(live)
        if self._backoff is not None:
            missing = min(missing, 0)   # a backoff holds back spawning, not retiring
        if missing > SPAWN_BATCH:
            # Many to start (incr 1000): a batch now, the rest on later loop turns,
            # so control commands and exits are still served in between.
            missing = SPAWN_BATCH
            if not self._reconcile_scheduled:
                self._reconcile_scheduled = True
                asyncio.get_running_loop().call_soon(self._reconcile)
        for _ in range(missing):
            if self._spawn() is None:
                decision = self.restarts.on_exit(0.0)
                if decision.fatal:
                    self._go_fatal(decision.reason)
                else:
                    self._schedule_backoff(decision.delay)
                return
        if missing < 0 and self.state != WatcherState.RELOADING:
            # Retire the ones that serve least: not yet ready first, then the newest.
            order = sorted(live, key=lambda w: (w.state == WorkerState.RUNNING,
                                                -w.started_at))
            extras = order[:-missing]
            for worker in extras:
                worker.stop_requested = True
            self._in_background(self._stop_workers(extras))
        self._pulse()

    def _schedule_backoff(self, delay: float) -> None:
        self._cancel_backoff()

        def fire() -> None:
            self._backoff = None
            self._reconcile()
        self._backoff_until = time.monotonic() + delay
        self._backoff = asyncio.get_running_loop().call_later(delay, fire)
        log.info("watcher %s: next start in %.2fs (backoff)", self.name, delay)

    def _cancel_backoff(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None

    def _go_fatal(self, reason: str) -> None:
        self._cancel_backoff()
        self.fatal_reason = reason
        log.error("watcher %s is FATAL: %s; not spawning any more (`start` or "
                  "`reload` to try again)", self.name, reason)
        self.transition(WatcherState.FATAL, reason)

    async def _stop_workers(self, workers: list[process.Worker]) -> None:
        # Each with the stop signal of the config it was started from: after a
        # reloadconfig, the old program still expects its own.
        await asyncio.gather(*(w.stop(w.config.stop_signal, w.config.graceful_timeout)
                               for w in workers if w.alive))

    def _in_background(self, coroutine: Any) -> None:
        """Run `coroutine` as a task we keep a reference to (asyncio only keeps weak ones)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ spawning

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

    def _base_env(self) -> dict[str, str]:
        if self._env_cache is None:
            config = self.config
            env = process.identity_env(config)
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                        "SERVER_STARTER_PORT", "WATCHDOG_PID", "WATCHDOG_USEC"):
                env.pop(key, None)
            names = list(config.sockets)
            env.update(process.listen_env(names))
            if names:
                env["SERVER_STARTER_PORT"] = ";".join(
                    f"{self.context.sockets[n].server_starter_key()}={3 + i}"
                    for i, n in enumerate(names))
            if self.context.notify_address:
                env["NOTIFY_SOCKET"] = self.context.notify_address
            self._env_cache = env
        return self._env_cache

    def _groups(self, config: WatcherConfig) -> list[int] | None:
        """Supplementary groups for the worker, looked up once per config (NSS is slow)."""
        if self._groups_cache is None or self._groups_cache[0] is not config:
            groups = (process.user_groups(config.user, config.gid)
                      if config.uid is not None or config.gid is not None else None)
            self._groups_cache = (config, groups)
        return self._groups_cache[1]

    def _spawn(self) -> process.Worker | None:
        """Fork one worker of the current generation; None if fork itself failed."""
        config = self.config
        wid = self._free_wid()
        names = list(config.sockets)
        sockets = [self.context.sockets[n] for n in names]
        # The workers share these sockets' open file descriptions: one may have
        # shut a socket down or made it non-blocking (sockets.py).
        keep_listening(sockets, self.context.publish)
        for listening in sockets:
            listening.prepare_for_spawn()
        fds = [listening.fd for listening in sockets]   # after: a repair may rebind
        argv = expand_worker_args(config.argv(), wid, {n: 3 + i for i, n in enumerate(names)})
        env = dict(self._base_env())
        env["SOCKVISOR_WID"] = str(wid)
        out_child, out_read = self._stdout.child_fd()
        err_child, err_read = self._stderr.child_fd()
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
            self._release_wid(wid)
            for fd in (out_read, err_read):
                if fd is not None:
                    os.close(fd)
            return None
        finally:
            for fd in (out_child, err_child):
                if fd is not None:
                    os.close(fd)
        worker = process.Worker(config, wid, self.generation, pid, self._on_worker_state)
        worker.cgroup = spec.cgroup
        self.workers[pid] = worker
        self.context.workers_by_pid[pid] = worker
        self.context.reaper.register(pid, lambda status: self._on_exit(worker, status),
                                     worker.before_reap)
        loop = asyncio.get_running_loop()
        if out_read is not None:
            self._stdout.attach(loop, out_read, pid)
        if err_read is not None:
            self._stderr.attach(loop, err_read, pid)
        worker.status_fd = status_r
        loop.add_reader(status_r, self._collect_exec_status, worker)
        log.debug("watcher %s: spawned %s (wid %d, generation %d)", self.name,
                  worker.label, wid, self.generation)
        return worker

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
        if worker.state != WorkerState.STARTING:
            return
        reason = f"not ready within ready_timeout ({worker.config.ready.timeout:g}s)"
        log.error("watcher %s: %s %s; stopping it", self.name, worker.label, reason)
        worker.fail_readiness(reason)
        worker.ready_failed = True
        # Stopped on our initiative, but as a failure: its exit counts as a failed start.
        self._in_background(worker.stop(worker.config.stop_signal,
                                        worker.config.graceful_timeout, expected=False))

    def on_notify(self, worker: process.Worker, fields: Mapping[str, str]) -> None:
        """A datagram from the worker's NOTIFY_SOCKET (see readiness.py)."""
        if "STATUS" in fields:
            worker.status_text = fields["STATUS"][:200]
        if fields.get("READY") == "1" and worker.state == WorkerState.STARTING:
            if worker.config.ready.kind == ReadyKind.NOTIFY:
                worker.mark_ready()

    def _on_worker_state(self, worker: process.Worker, old: WorkerState,
                         new: WorkerState) -> None:
        if new == WorkerState.RUNNING:
            self.context.publish(f"watcher.{self.name}.ready",
                                 {"pid": worker.pid, "wid": worker.wid,
                                  "generation": worker.generation})
        self._pulse()

    def _on_exit(self, worker: process.Worker, status: int) -> None:
        """The reaper collected `worker`: record it and decide about a replacement."""
        self._collect_exec_status(worker)
        worker.on_exit(status)
        # Did it shut a shared socket down on its way out?  (Before a replacement.)
        keep_listening([self.context.sockets[n] for n in worker.config.sockets
                        if n in self.context.sockets], self.context.publish)
        self.workers.pop(worker.pid, None)
        self._release_wid(worker.wid)
        self.context.workers_by_pid.pop(worker.pid, None)
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
        if worker in self._reloading_batch or self.state not in WATCHER_WANTS_WORKERS:
            return   # a failed reload candidate is the reload's business (it aborts)
        if not self.config.restart.respawn:
            self.numprocesses = max(0, self.numprocesses - 1)
            return
        failed_start = worker.ready_at is None or worker.ready_failed
        decision = self.restarts.on_exit(0.0 if failed_start else uptime)
        self.restart_count += 1
        reason = ("ready_timeout" if worker.ready_failed else
                  "failed_start" if failed_start else "crash")
        self.restart_reasons[reason] = self.restart_reasons.get(reason, 0) + 1
        self._wid_restarts[worker.wid] = self._wid_restarts.get(worker.wid, 0) + 1
        if decision.fatal:
            self._go_fatal(decision.reason)
        elif decision.delay > 0:
            self._schedule_backoff(decision.delay)
        else:
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
        if self._backoff is not None:
            result["backoff"] = round(max(0.0, self._backoff_until - now), 3)
        result["workers"] = [
            {"pid": w.pid, "wid": w.wid, "generation": w.generation,
             "state": w.state.value, "ready": w.state == WorkerState.RUNNING,
             "uptime": round(now - w.started_at, 3),
             "restarts": self._wid_restarts.get(w.wid, 0),
             **({"status": w.status_text} if w.status_text else {})}
            for w in sorted(self.workers.values(), key=lambda w: (w.wid, w.started_at))]
        return result
