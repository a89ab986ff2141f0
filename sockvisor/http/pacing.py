"""Pacing: HTTP requests start one per event-loop turn, so the loop stays responsive.

asyncio runs, in each turn, every callback that became ready; a console
hammered by 200 clients would put 200 request handlers into one turn, and a
SIGCHLD that arrives meanwhile waits for all of them (measured: kill→respawn
went from 15 ms to 250 ms).  So every request waits for its turn here before
its handler does any work: the pacer hands out one turn per loop iteration, in
arrival order.  A reaping, respawn or ZeroMQ callback then waits at most for
one request's handler, whatever the number of clients; HTTP throughput is what
gives (requests queue, in their own connections, at no cost to the loop).

Turns are also rationed by CPU: while sockvisor has used more than
CPU_BUDGET of one CPU over the last WINDOW, the next turn waits until the
average is back under it.  On a busy machine this matters as much as the turn
order: a process that sleeps in epoll when a child dies is woken at once by
the kernel's scheduler, one that has been burning its share serving HTTP waits
for its next slice behind everything else runnable.  (bench/console_load.py,
200 clients, 2 CPUs at load 14–18: kill→fork 14 ms idle, 43 ms loaded with
turns alone, 41 ms with a 25% budget, ~1× idle at 10% with sampler.py's cheap
tree walk.)  10% of a CPU is 50 requests/s on that machine, several hundred
on an idle one: plenty for pages and scrapes.  Any CPU sockvisor spends counts, so a big reload also slows HTTP
down: the console is what gives way.

Handlers that wait for long (a reload in progress, the event stream) hold no
turn while they wait: a turn covers only the start of a request.  A request
that is still queued when its client goes away simply runs and finds the
connection closed.
"""

from __future__ import annotations

import asyncio
import collections
import time

CPU_BUDGET = 0.10   # of one CPU, for sockvisor as a whole while HTTP waits
WINDOW = 0.2        # seconds over which the budget is averaged


class Pacer:
    def __init__(self) -> None:
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._scheduled = False
        self._window_start = time.monotonic()
        self._window_cpu = time.process_time()

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._grant)
        await waiter

    def _grant(self) -> None:
        """One turn, then the next one on the next iteration (call_soon runs after
        everything already ready, signal and fd callbacks included)."""
        self._scheduled = False
        loop = asyncio.get_running_loop()
        delay = self._over_budget()
        if delay > 0:
            self._scheduled = True
            loop.call_later(delay, self._grant)
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():   # cancelled: the handler went away
                waiter.set_result(None)
                break
        if self._waiting:
            self._scheduled = True
            loop.call_soon(self._grant)

    def _over_budget(self) -> float:
        """Seconds to wait until the process's CPU use averages CPU_BUDGET again."""
        now, cpu = time.monotonic(), time.process_time()
        elapsed, used = now - self._window_start, cpu - self._window_cpu
        if elapsed >= WINDOW:
            self._window_start, self._window_cpu = now, cpu
        excess = used / CPU_BUDGET - elapsed
        return min(excess, WINDOW) if excess > 0.001 else 0.0
