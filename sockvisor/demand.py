"""on_demand (Circus's): notice the first connection pending on a watcher's sockets.

sockvisor holds the listening sockets, so it can see a connection arrive without
taking it: a listening socket is readable (EPOLLIN) while a connection waits in
its accept queue.  `DemandWatch` registers the sockets in an epoll instance of
its own -- not in the event loop's selector, where an fd has one reader only and
two watchers may share a socket -- and the loop watches that epoll fd.  Nothing
is accepted here: the workers spawned on the demand accept the pending
connection themselves, so the very first client is answered.

Level-triggered and one-shot: the callback runs once, then the watch closes
itself (the watcher arms a new one each time it enters WAITING).
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import Callable, Iterable

log = logging.getLogger("sockvisor.watcher")


class DemandWatch:
    def __init__(self, fds: Iterable[int], on_demand: Callable[[], None]):
        self._on_demand = on_demand
        self._loop = asyncio.get_running_loop()
        self._epoll: select.epoll | None = select.epoll()
        try:
            for fd in fds:
                self._epoll.register(fd, select.EPOLLIN)
            self._loop.add_reader(self._epoll.fileno(), self._readable)
        except BaseException:
            self._epoll.close()
            self._epoll = None
            raise

    def _readable(self) -> None:
        if self._epoll is None:
            return
        try:
            events = self._epoll.poll(0)
        except OSError as exc:   # cannot happen on a live epoll fd: start, not spin
            log.error("on_demand: cannot poll the sockets: %s; starting now", exc)
            events = [(-1, 0)]
        if events:   # else a spurious wake-up: look again next time
            self.close()
            self._on_demand()

    def close(self) -> None:
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
