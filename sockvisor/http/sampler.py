"""CPU time and memory of each worker, its children included, sampled off the loop.

A worker is often a master of its own (gunicorn, uwsgi): what it costs is the
whole tree under it.  Each worker's figures are the sum over its live descendants:

  * cpu_seconds: user + system of every process in the tree, plus the time of
    children they already reaped (cutime/cstime), so a gunicorn worker that was
    recycled still counts;
  * rss_bytes:   the sum of the tree's resident set sizes (shared pages counted
    once per process, as `ps` does; PSS would need smaps, too slow at 1,000).

The tree is walked from each worker through /proc/PID/task/TID/children and
each member's /proc/PID/stat is read directly: the cost follows the number of
workers, not of processes on the machine.  (psutil's process_iter over the whole
table cost 146 ms of CPU with 731 processes, and its GIL-holding thread delayed
the event loop's respawns by tens of milliseconds.)  Without /proc/.../children
(a kernel without CONFIG_PROC_CHILDREN) the parent map comes from one scan of
/proc/*/stat instead.

It runs in a thread, at most once per MIN_INTERVAL: concurrent callers share the
sample in flight, and a client that asks 1,000 times a second gets the cached one.
"""

from __future__ import annotations

import asyncio
import os
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
    children = _children_reader()
    usage: dict[int, Usage] = {}
    for pid in pids:
        cpu, rss, alive = 0.0, 0, 0
        seen, stack = set(), [pid]
        while stack and len(seen) < MAX_TREE:
            member = stack.pop()
            if member in seen:
                continue
            seen.add(member)
            figures = _stat(member)
            if figures is None:
                continue
            cpu += figures[0]
            rss += figures[1]
            alive += 1
            stack.extend(children(member))
        if alive:
            usage[pid] = Usage(round(cpu, 3), rss, alive)
    return usage


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds incl. reaped children, RSS bytes) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            return None
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        return ticks / _TICKS, int(fields[21]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                kids.extend(int(child) for child in handle.read().split())
        except OSError:
            pass
    return kids


def _children_reader():
    """children(pid) → direct children: /proc/…/children, else a ppid map."""
    if os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return _proc_children
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    return lambda pid: parents.get(pid, [])
