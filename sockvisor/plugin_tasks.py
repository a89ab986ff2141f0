"""Circus's bundled plugins, run inside sockvisor's event loop (what each maps
onto, and their options, are in circus_plugins.py), and max_age.

Circus runs each plugin as its own process polling circusd over ZeroMQ; here
each is one asyncio task (or an event subscriber) next to the watchers it acts
on, so it needs no endpoint, no circus package and no extra process.  What they
change goes through the watchers' own serialised methods: a worker is replaced
by `Watcher.recycle` (the replacement ready and settled first), a watcher by its
rolling `reload` -- never by stopping first, as Circus does.

A third-party plugin (a `circus.plugins.CircusPlugin` subclass) runs as Circus
runs it: a process of its own, `python -c 'from circus import plugins;
plugins.main()' … FQN`, as sockvisor's user with sockvisor's environment and
import path (Circus's copy_env and copy_path), its output on sockvisor's; it
talks to sockvisor's control and events endpoints.  It is forked with
process.fork_exec and reaped by the one reaper (nothing else may wait for a
child), restarted after an exit with a doubling delay (0.1 s to 10 s; back to
0.1 s after it ran a minute), and stopped -- SIGTERM, then SIGKILL after 5 s --
before the watchers when sockvisor stops.

Never blocking the loop: psutil samples and stat() calls run in a worker thread
(`asyncio.to_thread`: /proc reads are fast but a busy machine can stall them);
statsd lines go out of a non-blocking UDP socket, fire and forget (a full buffer
or an ICMP error drops the line, as UDP would anyway); the HTTP check uses
tornado's asynchronous client; the watchdog's UDP socket is an asyncio
datagram endpoint.

statsd lines are Circus's: `PREFIX.BUCKET:VALUE|c` (or `|ms`, `|g`), PREFIX
`circus.APPLICATION_NAME.watcher`, with `|@RATE` when sample_rate < 1.  Unlike
Circus, which sends every line and still marks it sampled (so statsd scales
its counts up by 1/rate), a sampled line is sent with probability RATE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from typing import Any, Callable

from sockvisor import circus_plugins as cp
from sockvisor.states import WatcherState, WorkerState

log = logging.getLogger("sockvisor.plugins")


class StatsdClient:
    """Circus's StatsdClient, non-blocking: the address is resolved once, off the
    loop, and every send is one sendto that never waits."""

    def __init__(self, spec: cp.Statsd):
        self.spec = spec
        self._sock: socket.socket | None = None
        self._address: Any = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.spec.host, self.spec.port,
                                           type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.error("statsd: cannot resolve %s: %s; not sending", self.spec.host, exc)
            return
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock, self._address = sock, address

    def send(self, bucket: str, value: str) -> None:
        if self._sock is None:
            return
        rate = self.spec.sample_rate
        if rate < 1:
            if random.random() >= rate:
                return
            value += f"|@{rate:g}"
        try:
            self._sock.sendto(f"{self.spec.prefix}.{bucket}:{value}".encode(),
                              self._address)
        except OSError:
            pass   # full buffer, unreachable: a metric is not worth waiting for

    def increment(self, bucket: str, delta: int = 1) -> None:
        self.send(bucket, f"{delta}|c")

    def gauge(self, bucket: str, value: float) -> None:
        self.send(bucket, f"{value}|g")

    def timed(self, bucket: str, milliseconds: int) -> None:
        self.send(bucket, f"{milliseconds}|ms")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def circus_actions(topic: str, data: dict[str, Any]) -> tuple[str, list[str]]:
    """sockvisor's event → (watcher, Circus's action names for it): spawn, reap,
    kill (a process stopped on purpose), start, stop, reload."""
    if not topic.startswith("watcher."):
        return "", []
    rest = topic[len("watcher."):]
    for suffix, actions in ((".spawn", ["spawn"]), (".reload.finished", ["reload"])):
        if rest.endswith(suffix):
            return rest[:-len(suffix)], actions
    if rest.endswith(".exit"):
        return rest[:-len(".exit")], (["kill", "reap"] if data.get("expected") else ["reap"])
    if rest.endswith(".state"):
        to, source = data.get("to"), data.get("from")
        if to == "stopped":
            return rest[:-len(".state")], ["stop"]
        if to == "active" and source == "starting":
            return rest[:-len(".state")], ["start"]
    return "", []


class PluginRunner:
    """Starts the plugins of a config against a supervisor, and stops them."""

    def __init__(self, supervisor: Any):
        self.supervisor = supervisor
        self.tasks: list[asyncio.Task] = []     # the plugins' loops
        self.oneoffs: set[asyncio.Task] = set()  # a reload, a recycle, a stop
        self.clients: list[StatsdClient] = []
        self._subscribers: list[Callable[[str, dict[str, Any]], None]] = []
        self._closers: list[Callable[[], None]] = []
        self._busy: set[Any] = set()   # (plugin, watcher) reloads in flight

    @property
    def watchers(self) -> dict[str, Any]:
        return self.supervisor.watchers

    def start(self, setup: cp.PluginSetup) -> None:
        for plugin in setup.plugins:
            run = {cp.ResourceWatcher: self._resource_watcher,
                   cp.HttpObserver: self._http_observer,
                   cp.CommandReloader: self._command_reloader,
                   cp.WatchDog: self._watchdog,
                   cp.StatsdEmitter: self._statsd_emitter,
                   cp.FullStats: self._full_stats,
                   cp.ThirdParty: self._third_party}[type(plugin)]
            self._task(run(plugin), plugin.section)
        for name, age in setup.max_age.items():
            self._task(self._max_age(name, age), f"watcher:{name} max_age")

    async def close(self, shutting_down: bool = True) -> None:
        """Stop the plugins.  A reload or recycle they started is left to finish
        (cancelling one half-way would leave its watcher mid-change) unless
        sockvisor is shutting down, when the watchers' own shutdown ends them."""
        if shutting_down:
            for task in self.oneoffs:
                task.cancel()
        for subscriber in self._subscribers:
            if subscriber in self.supervisor.subscribers:
                self.supervisor.subscribers.remove(subscriber)
        self._subscribers.clear()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        for close in self._closers:
            close()
        self._closers.clear()
        for client in self.clients:
            client.close()
        self.clients.clear()

    def _task(self, coroutine: Any, what: str) -> None:
        async def guarded() -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("[%s] stopped by an error", what)
        self.tasks.append(asyncio.ensure_future(guarded()))

    def _background(self, coroutine: Any) -> None:
        """A one-off task (a reload, a recycle), cancelled by close() if unfinished."""
        task = asyncio.ensure_future(coroutine)
        self.oneoffs.add(task)
        task.add_done_callback(self.oneoffs.discard)

    async def _statsd(self, spec: cp.Statsd) -> StatsdClient:
        client = StatsdClient(spec)
        self.clients.append(client)
        await client.open()
        return client

    def _subscribe(self, subscriber: Callable[[str, dict[str, Any]], None]) -> None:
        self._subscribers.append(subscriber)
        self.supervisor.subscribers.append(subscriber)

    def _reload_in_background(self, key: Any, watcher: Any, why: str) -> None:
        """A rolling reload of `watcher`, one at a time per (plugin, watcher)."""
        if key in self._busy:
            return
        self._busy.add(key)

        async def reload() -> None:
            try:
                log.info("watcher %s: rolling reload (%s)", watcher.name, why)
                # With its config: new processes even with send_hup, which would
                # only SIGHUP the program that changed or failed (Circus restarts).
                await watcher.reload(watcher.config)
            except Exception as exc:   # ReloadError: the old workers keep serving
                log.error("watcher %s: reload (%s) failed: %s", watcher.name, why, exc)
            finally:
                self._busy.discard(key)
        self._background(reload())

    # ------------------------------------------------------------------ StatsdEmitter

    async def _statsd_emitter(self, spec: cp.StatsdEmitter) -> None:
        client = StatsdClient(spec.statsd)
        self.clients.append(client)

        def on_event(topic: str, data: dict[str, Any]) -> None:
            watcher, actions = circus_actions(topic, data)
            for action in actions:
                client.increment(f"{watcher}.{action}")
        # Subscribed before the first await: this runs before the watchers'
        # start-up spawns anything, so the first spawns are counted once the
        # address is resolved (until then lines are dropped, as UDP would).
        self._subscribe(on_event)
        await client.open()

    # ------------------------------------------------------------------ max_age

    async def _max_age(self, name: str, spec: cp.MaxAge) -> None:
        """Recycle each worker of `name` after max_age + uniform(0, variance)
        seconds (Circus's rule), one at a time: a replacement ready first."""
        due: dict[Any, float] = {}
        tick = min(1.0, max(spec.seconds / 10, 0.05))
        while True:
            await asyncio.sleep(tick)
            watcher = self.watchers.get(name)
            if watcher is None or watcher.state != WatcherState.ACTIVE:
                continue
            now = time.monotonic()
            workers = [w for w in watcher.live_workers() if w.state == WorkerState.RUNNING]
            for worker in list(due):
                if worker not in workers:
                    del due[worker]
            for worker in workers:
                if worker not in due:
                    due[worker] = (worker.started_at + spec.seconds
                                   + random.uniform(0, spec.variance))
            for worker in sorted(workers, key=lambda w: due[w]):
                if due[worker] > now:
                    break
                age = now - worker.started_at
                if await watcher.recycle(worker, f"max_age: {age:.1f}s old") is None \
                        and worker.alive and not worker.stop_requested:
                    due[worker] = time.monotonic() + min(spec.seconds, 60.0)
                now = time.monotonic()

    # ------------------------------------------------------------------ ResourceWatcher

    async def _resource_watcher(self, spec: cp.ResourceWatcher) -> None:
        import psutil
        client = await self._statsd(spec.statsd)
        processes: dict[int, Any] = {}
        counts: dict[int, dict[str, int]] = {}
        recycling: set[int] = set()
        bucket = f"_resource_watcher.{spec.watcher}"

        def sample(pids: list[int]) -> dict[int, tuple[float, float, int]]:
            # cpu_percent(None) compares with the previous call on the same
            # Process object: keep them between samples, as the stats command does.
            result = {}
            for pid in pids:
                try:
                    proc = processes.get(pid) or processes.setdefault(pid, psutil.Process(pid))
                    with proc.oneshot():
                        result[pid] = (proc.cpu_percent(None), proc.memory_percent(),
                                       proc.memory_info().rss)
                except psutil.Error:
                    processes.pop(pid, None)
            return result

        while True:
            await asyncio.sleep(spec.loop_rate)
            watcher = self.watchers.get(spec.watcher)
            if watcher is None or watcher.state != WatcherState.ACTIVE:
                continue
            workers = {w.pid: w for w in watcher.live_workers()
                       if w.state == WorkerState.RUNNING and w.pid not in recycling}
            for pid in list(processes):
                if pid not in workers and pid not in recycling:
                    processes.pop(pid, None)
                    counts.pop(pid, None)
            stats = await asyncio.to_thread(sample, list(workers))
            for pid, (cpu, mem_pct, rss) in stats.items():
                over = {
                    "over_cpu": spec.max_cpu is not None and cpu > spec.max_cpu,
                    "under_cpu": spec.min_cpu is not None and cpu <= spec.min_cpu,
                    "over_memory": spec.max_mem is not None and (
                        rss > spec.max_mem if spec.max_mem_bytes else mem_pct > spec.max_mem),
                    "under_memory": spec.min_mem is not None and (
                        rss < spec.min_mem if spec.min_mem_bytes else mem_pct < spec.min_mem),
                    "over_health": spec.health_threshold is not None
                    and (cpu + mem_pct) / 2 > spec.health_threshold,
                }
                count = counts.setdefault(pid, {})
                for what, is_over in over.items():
                    if is_over:
                        client.increment(f"{bucket}.{what}")
                        count[what] = count.get(what, 0) + 1
                    else:
                        count[what] = 0
                worst = max(count, key=lambda k: count[k])
                if count[worst] > spec.max_count:
                    client.increment(f"{bucket}.restarting")
                    counts.pop(pid, None)
                    recycling.add(pid)
                    reason = (f"[{spec.section}] {worst.replace('_', ' ')} "
                              f"{count[worst]} samples in a row (cpu {cpu:.0f}%, "
                              f"rss {rss // 1024 // 1024} MiB, mem {mem_pct:.1f}%)")
                    log.warning("watcher %s: %s[%d]: %s: recycling it", watcher.name,
                                watcher.name, pid, reason)
                    self._recycle_in_background(watcher, workers[pid], reason, recycling)

    def _recycle_in_background(self, watcher: Any, worker: Any, reason: str,
                               pending: set[int]) -> None:
        async def recycle() -> None:
            try:
                await watcher.recycle(worker, reason)
            finally:
                pending.discard(worker.pid)
        self._background(recycle())

    # ------------------------------------------------------------------ FullStats

    async def _full_stats(self, spec: cp.FullStats) -> None:
        import psutil
        client = await self._statsd(spec.statsd)
        processes: dict[int, Any] = {}

        def sample(pids: list[int]) -> list[tuple[float, float, int]]:
            result = []
            for pid in pids:
                try:
                    proc = processes.get(pid) or processes.setdefault(pid, psutil.Process(pid))
                    with proc.oneshot():
                        result.append((proc.cpu_percent(None), proc.memory_percent(),
                                       proc.memory_info().rss))
                except psutil.Error:
                    processes.pop(pid, None)
            return result

        while True:
            await asyncio.sleep(spec.loop_rate)
            for name, watcher in list(self.watchers.items()):
                stats = await asyncio.to_thread(sample, [w.pid for w in watcher.live_workers()])
                client.gauge(f"_stats.{name}.watchers_num", len(stats))
                if not stats:
                    continue
                cpus, mems, rss = zip(*stats)
                client.gauge(f"_stats.{name}.cpu_max", max(cpus))
                client.gauge(f"_stats.{name}.cpu_sum", sum(cpus))
                client.gauge(f"_stats.{name}.mem_pct_max", max(mems))
                client.gauge(f"_stats.{name}.mem_pct_sum", sum(mems))
                client.gauge(f"_stats.{name}.mem_max", max(rss))
                client.gauge(f"_stats.{name}.mem_sum", sum(rss))

    # ------------------------------------------------------------------ HttpObserver

    async def _http_observer(self, spec: cp.HttpObserver) -> None:
        from tornado.httpclient import AsyncHTTPClient
        client = await self._statsd(spec.statsd)
        http = AsyncHTTPClient()
        while True:
            await asyncio.sleep(spec.loop_rate)
            started = time.monotonic()
            try:
                # raise_error=False spares only HTTP statuses: a refused
                # connection or a timeout still raises.
                response = await http.fetch(spec.check_url, raise_error=False,
                                            request_timeout=spec.timeout,
                                            connect_timeout=spec.timeout)
                error, code = response.error, response.code
            except Exception as exc:   # OSError, HTTPClientError(599), ssl errors
                error, code = exc, getattr(exc, "code", 599)
            if error is None:
                client.timed("http_stats.request_time",
                             int((time.monotonic() - started) * 1000))
                continue
            client.increment("http_stats.error")
            client.increment(f"http_stats.error.{code}")
            log.warning("[%s] %s: %s", spec.section, spec.check_url, error)
            target = self.watchers.get(spec.restart_on_error or "")
            if target is not None and target.state == WatcherState.ACTIVE:
                client.increment("http_stats.restart_on_error")
                self._reload_in_background((spec.section, target.name), target,
                                           f"[{spec.section}] {spec.check_url} failed: "
                                           f"{error}")

    # ------------------------------------------------------------------ CommandReloader

    async def _command_reloader(self, spec: cp.CommandReloader) -> None:
        """A rolling reload of a watcher whose program (its cmd, resolved on its
        PATH, links followed) changed: another path, mtime or inode."""
        seen: dict[str, tuple[str, int, int, int]] = {}

        def identify(watchers: list[Any]) -> dict[str, tuple[str, int, int, int] | None]:
            result: dict[str, tuple[str, int, int, int] | None] = {}
            for watcher in watchers:
                config = watcher.config
                cmd = config.cmd
                if "/" not in cmd:
                    cmd = shutil.which(cmd, path=config.env.get("PATH", os.defpath)) or cmd
                elif not os.path.isabs(cmd) and config.working_dir:
                    cmd = os.path.join(config.working_dir, cmd)
                path = os.path.realpath(cmd)
                try:
                    st = os.stat(path)
                except OSError:
                    result[watcher.name] = None   # being replaced: look again next time
                    continue
                result[watcher.name] = (path, st.st_mtime_ns, st.st_ino, st.st_dev)
            return result

        while True:
            watchers = [w for w in self.watchers.values()]
            current = await asyncio.to_thread(identify, watchers)
            for watcher in watchers:
                now = current.get(watcher.name)
                if now is None:
                    continue
                before = seen.get(watcher.name)
                seen[watcher.name] = now
                if before is not None and before != now \
                        and watcher.state == WatcherState.ACTIVE:
                    self._reload_in_background((spec.section, watcher.name), watcher,
                                               f"[{spec.section}] {now[0]} changed")
            for name in list(seen):
                if name not in self.watchers:
                    del seen[name]
            await asyncio.sleep(spec.loop_rate)

    # ------------------------------------------------------------------ WatchDog

    async def _watchdog(self, spec: cp.WatchDog) -> None:
        """Circus's WatchDog: workers send `PID;TIMESTAMP` (msg_regex) datagrams to
        ip:port at least every loop_rate; one silent for loop_rate * max_count is
        stopped (watchers_stop_signal / watchers_graceful_timeout, else its own)
        and replaced by the restart policy, as Circus's `kill` does.  Heartbeats
        carry no credentials (UDP): a local user can keep a hung worker alive, no
        more -- as in Circus."""
        pattern = re.compile(spec.msg_regex)
        watched = re.compile(spec.watchers_regex)
        last: dict[int, float] = {}
        runner = self

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                match = pattern.match(data.decode(errors="replace"))
                pid_text = match.groupdict().get("pid") if match else None
                worker = (runner.supervisor.workers_by_pid.get(int(pid_text))
                          if pid_text and pid_text.strip().isdigit() else None)
                if worker is not None and watched.match(worker.watcher_name):
                    last[worker.pid] = time.monotonic()
                else:
                    log.debug("[%s] heartbeat from no watched worker: %r", spec.section,
                              data[:100])

        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                Receiver, local_addr=(spec.ip, spec.port))
        except OSError as exc:
            log.error("[%s] cannot listen on %s:%d: %s; no watchdog", spec.section,
                      spec.ip, spec.port, exc)
            return
        self._closers.append(transport.close)
        log.info("[%s] watchdog listening on %s:%d (udp)", spec.section, spec.ip, spec.port)
        limit = spec.loop_rate * spec.max_count
        while True:
            await asyncio.sleep(spec.loop_rate)
            now = time.monotonic()
            for name, watcher in list(self.watchers.items()):
                if not watched.match(name) or watcher.state != WatcherState.ACTIVE:
                    continue
                for worker in watcher.live_workers():
                    if worker.state != WorkerState.RUNNING:
                        continue
                    seen = last.get(worker.pid, worker.started_at)
                    if now - seen <= limit:
                        continue
                    log.warning("watcher %s: %s sent no heartbeat for %.1fs: stopping it",
                                name, worker.label, now - seen)
                    signum = spec.stop_signal or worker.config.stop_signal
                    timeout = (spec.graceful_timeout if spec.graceful_timeout is not None
                               else worker.config.graceful_timeout)
                    # expected=False: its exit is a failure, and the restart policy
                    # replaces it (Circus's `kill` then respawn).
                    self._background(worker.stop(signum, timeout, expected=False))
            for pid in list(last):
                if pid not in self.supervisor.workers_by_pid:
                    del last[pid]

    # ------------------------------------------------------------------ third-party plugins

    async def _third_party(self, spec: cp.ThirdParty) -> None:
        from sockvisor import process
        control = self.supervisor.control
        if control is None:
            log.error("[%s] not started: the control channel is disabled", spec.section)
            return
        # -P and cwd "/": `-c` would put sockvisor's working directory first on
        # the plugin's sys.path -- a folder another user may write, whose
        # `circus/` would then run as root.  Likewise sys.path[0] (the folder of
        # sockvisor's script, or its working directory under `python -m`) is
        # not handed on; the rest of sockvisor's path is, so the same circus
        # and plugin packages are found.
        argv = [sys.executable, "-P", "-c", "from circus import plugins; plugins.main()",
                "--endpoint", control.endpoint, "--pubsub", control.events_endpoint,
                "--log-level", self.supervisor.config.globals.loglevel]
        if spec.options:
            # Circus's own serialisation (plugins._cfg2str); its main() reads it back.
            argv += ["--config", ":::".join(f"{key}:{value}" for key, value in spec.options)]
        argv.append(spec.use)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path[1:] if path)
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            exited: asyncio.Future[int] = loop.create_future()
            pid, status_r = process.fork_exec(process.SpawnSpec(argv=argv, env=env, fds=[],
                                                                cwd="/"))
            self.supervisor.reaper.register(
                pid, lambda status: exited.done() or exited.set_result(status))
            log.info("[%s] started %s (pid %d)", spec.section, spec.use, pid)
            started = time.monotonic()
            try:
                status = await asyncio.shield(exited)
            except asyncio.CancelledError:
                await self._stop_plugin_process(pid, exited)
                raise
            finally:
                try:
                    error = process.read_spawn_status(status_r)
                finally:
                    os.close(status_r)
            from sockvisor.reaper import describe_status
            what = (process.describe_spawn_error(error, argv[0]) if error is not None
                    else describe_status(status))
            delay = 0.1 if time.monotonic() - started > 60 else min(delay * 2, 10.0)
            log.warning("[%s] %s exited (%s); starting it again in %.1fs", spec.section,
                        spec.use, what, delay)
            await asyncio.sleep(delay)

    @staticmethod
    async def _stop_plugin_process(pid: int, exited: "asyncio.Future[int]") -> None:
        if exited.done():
            return
        try:
            os.kill(pid, signal.SIGTERM)
            await asyncio.wait_for(asyncio.shield(exited), 5.0)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)   # fork_exec made it a group leader
            except ProcessLookupError:
                pass
            await asyncio.shield(exited)
