"""`/metrics`: sockvisor's state in the Prometheus text format (prometheus_client).

Every figure is read from the supervisor when scraped (a custom collector), except
what only events tell: reload results and durations, counted from the same
events the PUB endpoint publishes.  Names and labels:

sockvisor itself
  sockvisor_build_info{version,python}            1
  sockvisor_start_time_seconds, sockvisor_uptime_seconds
  sockvisor_resident_memory_bytes, sockvisor_open_fds, sockvisor_cpu_seconds_total
per watcher (label `watcher`)
  sockvisor_watcher_desired_workers / _running_workers / _ready_workers
  sockvisor_watcher_state{state}                  1 for the current state, 0 for the others
  sockvisor_watcher_generation
  sockvisor_watcher_restarts_total{reason}        crash (died after it was ready),
                                                  failed_start (died before), ready_timeout
                                                  (killed for not being ready in time)
  sockvisor_watcher_reloads_total{result}         finished | aborted
  sockvisor_watcher_reload_duration_seconds       histogram, finished and aborted alike
  sockvisor_watcher_cpu_seconds                   gauge: CPU of the current workers and
                                                  their children (drops when one is replaced)
  sockvisor_watcher_resident_memory_bytes         RSS of all workers and their children
per worker (labels `watcher`, `wid`) — bounded: the worker id, not the pid, so a
replacement reuses its predecessor's series, and only wids 1..MAX_WORKER_SERIES
(64): a watcher of 1,000 workers exports its first 64 and the watcher totals
  sockvisor_worker_cpu_seconds_total              counter (resets when the worker is replaced)
  sockvisor_worker_resident_memory_bytes
  sockvisor_worker_processes                      the worker and its live descendants
per socket (label `socket`)
  sockvisor_socket_accept_queue                   connections waiting for accept()
  sockvisor_socket_accept_queue_limit             the kernel's limit for that queue
(Connections accepted are not counted: workers accept on their own fds, and the
kernel keeps no per-socket total we could read honestly.)

CPU and RSS come from sampler.py (a thread, at most once a second), so a scrape
never reads /proc on the event loop; a rendered page is reused for CACHE_SECONDS,
so a client that scrapes in a loop costs one render a second (figures are then
at most that old).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sockvisor import __version__
from sockvisor.accept_queue import accept_queue
from sockvisor.http.sampler import ProcessSampler, Usage
from sockvisor.states import WatcherState, WorkerState

if TYPE_CHECKING:
    from sockvisor.control.host import Host

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_WORKER_SERIES = 64
RESTART_REASONS = ("crash", "failed_start", "ready_timeout")
CACHE_SECONDS = 1.0
RELOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, supervisor: "Host", sampler: ProcessSampler):
        self.supervisor = supervisor
        self.sampler = sampler
        self.registry = CollectorRegistry(auto_describe=False)
        self.reload_seconds = Histogram(
            "sockvisor_watcher_reload_duration_seconds",
            "How long a rolling reload took, from start to finished or aborted",
            ["watcher"], buckets=RELOAD_BUCKETS, registry=self.registry)
        self.reloads: dict[tuple[str, str], int] = {}
        self._reload_started: dict[str, float] = {}
        self._usage: dict[int, Usage] = {}
        self._rendered: tuple[float, bytes] = (-CACHE_SECONDS, b"")
        self.registry.register(_Collector(self))

    # ---- events (subscribed by the server)

    def on_event(self, topic: str, data: dict[str, Any]) -> None:
        if not topic.startswith("watcher.") or ".reload." not in topic:
            return
        name, _, what = topic[len("watcher."):].rpartition(".reload.")
        if what == "started":
            self._reload_started[name] = time.monotonic()
        elif what in ("finished", "aborted"):
            result = what
            self.reloads[(name, result)] = self.reloads.get((name, result), 0) + 1
            started = self._reload_started.pop(name, None)
            if started is not None:
                self.reload_seconds.labels(name).observe(time.monotonic() - started)

    # ---- a scrape

    async def render(self) -> bytes:
        rendered_at, body = self._rendered
        if time.monotonic() - rendered_at < CACHE_SECONDS:
            return body
        self._usage = await self.sampler.sample(list(self.supervisor.workers_by_pid))
        body = generate_latest(self.registry)
        self._rendered = (time.monotonic(), body)
        return body


class _Collector:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._own()
        yield from self._watchers()
        yield from self._workers()
        yield from self._sockets()

    def _own(self) -> Iterator[Any]:
        supervisor = self.metrics.supervisor
        info = GaugeMetricFamily("sockvisor_build_info", "sockvisor's version",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily("sockvisor_start_time_seconds",
                                "When sockvisor started (Unix time)", supervisor.started_at)
        yield GaugeMetricFamily("sockvisor_uptime_seconds", "Seconds since sockvisor started",
                                time.time() - supervisor.started_at)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield CounterMetricFamily("sockvisor_cpu_seconds", "CPU time of sockvisor itself",
                                  usage.ru_utime + usage.ru_stime)
        yield GaugeMetricFamily("sockvisor_resident_memory_bytes",
                                "Resident memory of sockvisor itself", _own_rss())
        yield GaugeMetricFamily("sockvisor_open_fds", "File descriptors sockvisor holds",
                                len(os.listdir("/proc/self/fd")))

    def _watchers(self) -> Iterator[Any]:
        watchers = list(self.metrics.supervisor.watchers.values())
        usage = self.metrics._usage

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["watcher", *labels])
        desired = gauge("sockvisor_watcher_desired_workers", "Workers the watcher should run")
        running = gauge("sockvisor_watcher_running_workers", "Worker processes alive")
        ready = gauge("sockvisor_watcher_ready_workers", "Workers ready to serve")
        state = gauge("sockvisor_watcher_state", "1 for the watcher's current state",
                      ("state",))
        generation = gauge("sockvisor_watcher_generation", "Current worker generation")
        restarts = CounterMetricFamily("sockvisor_watcher_restarts",
                                       "Workers restarted after an unexpected exit",
                                       labels=["watcher", "reason"])
        reloads = CounterMetricFamily("sockvisor_watcher_reloads", "Rolling reloads by result",
                                      labels=["watcher", "result"])
        cpu = gauge("sockvisor_watcher_cpu_seconds",
                    "CPU time of the current workers and their children")
        rss = gauge("sockvisor_watcher_resident_memory_bytes",
                    "Resident memory of the workers and their children")
        for watcher in watchers:
            name = watcher.name
            desired.add_metric([name], watcher.numprocesses)
            running.add_metric([name], len(watcher.workers))
            ready.add_metric([name], watcher.ready_count())
            for each in WatcherState:
                state.add_metric([name, each.value], 1 if watcher.state == each else 0)
            generation.add_metric([name], watcher.generation)
            reasons = getattr(watcher, "restart_reasons", {})
            for reason in RESTART_REASONS:
                restarts.add_metric([name, reason], reasons.get(reason, 0))
            for result in ("finished", "aborted"):
                reloads.add_metric([name, result], self.metrics.reloads.get((name, result), 0))
            figures = [usage[pid] for pid in watcher.workers if pid in usage]
            cpu.add_metric([name], sum(u.cpu_seconds for u in figures))
            rss.add_metric([name], sum(u.rss_bytes for u in figures))
        yield from (desired, running, ready, state, generation, restarts, reloads, cpu, rss)

    def _workers(self) -> Iterator[Any]:
        usage = self.metrics._usage
        labels = ["watcher", "wid"]
        cpu = CounterMetricFamily("sockvisor_worker_cpu_seconds",
                                  "CPU time of the worker and its children", labels=labels)
        rss = GaugeMetricFamily("sockvisor_worker_resident_memory_bytes",
                                "Resident memory of the worker and its children", labels=labels)
        processes = GaugeMetricFamily("sockvisor_worker_processes",
                                      "The worker and its live descendants", labels=labels)
        for watcher in self.metrics.supervisor.watchers.values():
            for pid, worker in watcher.workers.items():
                figures = usage.get(pid)
                if (figures is None or worker.wid > MAX_WORKER_SERIES
                        or worker.state == WorkerState.EXITED):
                    continue
                # Unique: a wid is released only when its worker is reaped.
                key = [watcher.name, str(worker.wid)]
                cpu.add_metric(key, figures.cpu_seconds)
                rss.add_metric(key, figures.rss_bytes)
                processes.add_metric(key, figures.processes)
        yield from (cpu, rss, processes)

    def _sockets(self) -> Iterator[Any]:
        length = GaugeMetricFamily("sockvisor_socket_accept_queue",
                                   "Connections waiting in the accept queue", labels=["socket"])
        limit = GaugeMetricFamily("sockvisor_socket_accept_queue_limit",
                                  "The accept queue's limit (effective backlog)",
                                  labels=["socket"])
        for name, listening in self.metrics.supervisor.sockets.items():
            queue = accept_queue(listening.sock)
            if queue is not None:
                length.add_metric([name], queue.length)
                limit.add_metric([name], queue.limit)
        yield from (length, limit)


def _own_rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
