"""`/api/events`: the events the PUB endpoint publishes, as server-sent events.

One hub subscribes to the supervisor's event list once and fans each event out
to the connected clients.  Every client has a bounded queue: a client that does
not read (slow network, hostile, a tab in the background) is dropped when its
queue is full, and is told so if it can still hear it ("overflow"): the page
then reconnects and re-reads the state.  Publishing never waits for a client,
so a stalled reader costs a bounded amount of memory and no time in the loop.
The MAX_CLIENTS slots are shared by every client: one local user can take them
all (a known limit, see server.py); the ZeroMQ PUB endpoint is unaffected.

Events carry state changes only (spawn, exit, ready, state, reload), never what
workers write: the stream is as open as the state (api.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

MAX_CLIENTS = 64
QUEUE_LENGTH = 2000     # events buffered per client before it is dropped
HEARTBEAT = 15.0        # seconds between keep-alive comments (proxies, dead peers)


class Client:
    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.overflowed = False
        self.closed = False
        self._wake = asyncio.Event()

    def push(self, message: bytes) -> None:
        if self.overflowed or self.closed:
            return
        if len(self.queue) >= QUEUE_LENGTH:
            self.overflowed = True
            self.queue.clear()
        else:
            self.queue.append(message)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_batch(self) -> list[bytes]:
        """What arrived since the last call; [] after HEARTBEAT seconds of nothing."""
        if not self.queue and not self.overflowed and not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                pass
        self._wake.clear()
        batch = list(self.queue)
        self.queue.clear()
        return batch


class EventHub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()

    def join(self) -> Client | None:
        if len(self.clients) >= MAX_CLIENTS:
            return None
        client = Client()
        self.clients.add(client)
        return client

    def leave(self, client: Client) -> None:
        client.close()
        self.clients.discard(client)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """A supervisor subscriber: encode once, hand to every client."""
        if not self.clients:
            return
        payload = json.dumps({"topic": topic, "data": data}, default=str)
        message = f"data: {payload}\n\n".encode()
        for client in self.clients:
            client.push(message)

    def close(self) -> None:
        for client in list(self.clients):
            self.leave(client)
