"""CPU time and memory of each worker, its children included, sampled off the loop.

A worker is often a master of its own (gunicorn, uwsgi): what it costs is the
whole tree under it.  One pass over the process table (psutil) maps parents to
children; each worker's figures are the sum over its live descendants:

  * cpu_seconds: user + system of every process in the tree, plus the time of
    children they already reaped (psutil's children_user/children_system), so a
    gunicorn worker that was recycled still counts;
  * rss_bytes:   the sum of the tree's resident set sizes (shared pages counted
    once per process, as `ps` does; PSS would need smaps, too slow at 1,000).

Reading /proc for 1,000 workers takes tens of milliseconds, so it runs in a
thread, at most once per MIN_INTERVAL: concurrent callers share the sample in
flight, and a client that asks 1,000 times a second gets the cached one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable, NamedTuple

MIN_INTERVAL = 1.0
MAX_TREE = 10_000   # processes followed under one worker (a fork bomb stays bounded)


class Usage(NamedTuple):
    cpu_seconds: float
    rss_bytes: int
    processes: int


class ProcessSampler:
    def __init__(self) -> None:
        self._sampled_at = -MIN_INTERVAL
        self._usage: dict[int, Usage] = {}
        self._inflight: asyncio.Future[dict[int, Usage]] | None = None

    async def sample(self, pids: Iterable[int]) -> dict[int, Usage]:
        """Figures for `pids` (workers); a pid not in the last sample is absent."""
        if time.monotonic() - self._sampled_at < MIN_INTERVAL:
            return self._usage
        if self._inflight is None:
            loop = asyncio.get_running_loop()
            self._inflight = loop.run_in_executor(None, collect, list(pids))
            try:
                self._usage = await asyncio.shield(self._inflight)
                self._sampled_at = time.monotonic()
            finally:
                self._inflight = None
            return self._usage
        return await asyncio.shield(self._inflight)


def collect(pids: list[int]) -> dict[int, Usage]:
    import psutil
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    usage: dict[int, Usage] = {}
    for pid in pids:
        tree, stack = [], [pid]
        while stack and len(tree) < MAX_TREE:
            current = stack.pop()
            tree.append(current)
            stack.extend(children.get(current, ()))
        cpu, rss, alive = 0.0, 0, 0
        for member in tree:
            try:
                proc = psutil.Process(member)
                with proc.oneshot():
                    times = proc.cpu_times()
                    memory = proc.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += memory.rss
            alive += 1
        if alive:
            usage[pid] = Usage(round(cpu, 3), rss, alive)
    return usage
