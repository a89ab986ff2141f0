"""Pacing: HTTP requests start one per event-loop turn, so the loop stays responsive.

asyncio runs, in each turn, every callback that became ready; a console
hammered by 200 clients would put 200 request handlers into one turn, and a
SIGCHLD that arrives meanwhile waits for all of them (measured: kill→respawn
went from 15 ms to 250 ms).  So every request waits for its turn here before
its handler does any work: the pacer hands out one turn per loop iteration, in
arrival order.  A reaping, respawn or ZeroMQ callback then waits at most for
one request's handler, whatever the number of clients; HTTP throughput is what
gives (requests queue, in their own connections, at no cost to the loop).

Handlers that wait for long (a reload in progress, the event stream) hold no
turn while they wait: a turn covers only the start of a request.  A request
that is still queued when its client goes away simply runs and finds the
connection closed.
"""

from __future__ import annotations

import asyncio
import collections


class Pacer:
    def __init__(self) -> None:
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._scheduled = False

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
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():   # cancelled: the handler went away
                waiter.set_result(None)
                break
        if self._waiting:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._grant)
