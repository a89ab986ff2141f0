"""A loopback tcp:// endpoint as a front door to the ipc endpoints, judged at accept.

Circus's default endpoint is `tcp://127.0.0.1:5555`, and circusctl goes there
without flags.  Every local user can connect to a loopback port, so the port is
no credential.  What is: the uid the kernel records on the client's socket
(peer.py).  Reading it per request from inside libzmq (ZMQ_SRCFD) leaves a gap --
libzmq's I/O thread reads a request before we see it, and if its connection
closes meanwhile and a new one gets the same fd number, the request would be
judged by the new connection's owner -- and a PUB socket offers no per-subscriber
hook at all (ZAP is told the client's address, not its port).

So libzmq does not accept on the tcp port; this relay does.  On each accepted
connection -- a socket we hold, whose peer cannot change -- it asks the kernel
who the client is, once, and then carries the bytes, unchanged, to the ipc
endpoint that user's rights belong to (`route(uid)`): ZMTP is the same protocol
over tcp and ipc, so clients cannot tell.  The ipc endpoints are the ones
sockvisor opens anyway, with their file modes: the owner's (root and
sockvisor's user), the group's (`endpoint_group` members: operator rights,
decided as for ipc by control/access.py), and for everyone else an endpoint that
answers every request with an error (nothing runs).  A connection the kernel
cannot vouch for (closed meanwhile, not loopback) goes the same way.  For the
events endpoint, a client with no rights is simply disconnected.

Bounds (DESIGN §5: what an untrusted peer can make root spend): each relayed
connection holds two fds and at most a read chunk plus the transport's write
buffer per direction (reads wait for the other side to drain); a uid other
than root may hold PER_UID connections at once, beyond that its new ones are
closed at once; beyond MAX_CONNECTIONS in all, only root's are kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable, Sequence

from sockvisor import ratelimit
from sockvisor.control import peer

log = logging.getLogger("sockvisor.control")

PER_UID = 16
MAX_CONNECTIONS = 256
CHUNK = 65536

# uid (None: the kernel could not say) -> the ipc path to relay to, or None: close.
Route = Callable[["int | None"], Awaitable["str | None"]]


class RelayError(OSError):
    pass


def split(endpoint: str) -> tuple[str, int]:
    """tcp://HOST:PORT -> (host, port); [::1] loses its brackets."""
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Relay:
    def __init__(self, endpoint: str, route: Route, what: str,
                 inherited: Sequence[int] = ()):
        self.endpoint = endpoint
        self.route = route
        self.what = what   # "control" or "events", for the log
        # Listening sockets an upgrade carried across its exec (upgrade.py): taken
        # over, never bound again, so the port is never free for someone else.
        self.inherited = list(inherited)
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: set[asyncio.Task] = set()
        self.per_uid: dict[int | None, int] = {}
        self.quiet = ratelimit.RateLimitedLog(log)

    async def open(self) -> None:
        host, port = split(self.endpoint)
        try:
            if self.inherited:
                # Copies: the fds themselves stay with their holder (the
                # supervisor) until the whole control channel is open.
                for fd in self.inherited:
                    self.servers.append(await asyncio.start_server(
                        self._accepted, sock=socket.socket(fileno=os.dup(fd))))
            else:
                self.servers.append(await asyncio.start_server(
                    self._accepted, host, port, reuse_address=True))
        except OSError as exc:
            await self.close()
            raise RelayError(f"cannot bind {self.endpoint}: {exc.strerror or exc}") from None
        for server in self.servers:
            for sock in server.sockets:
                address = sock.getsockname()[0]
                if not peer.is_loopback(address):   # config.py lets only loopback through
                    await self.close()
                    raise RelayError(f"{self.endpoint} resolved to {address}, not loopback")

    def hand_over(self) -> list[int]:
        """Copies of the listening sockets' fds (close-on-exec), to carry across an
        upgrade's exec: `close` then stops accepting but the port stays ours."""
        return [os.dup(sock.fileno()) for server in self.servers for sock in server.sockets]

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; the connections under way get `grace` seconds to carry
        what is in flight (a reply sent just before the ipc side closed: its
        closing ends them), then end."""
        for server in self.servers:
            server.close()
        self.servers.clear()
        if grace and self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        uid: int | None = None
        counted = False
        try:
            sock = writer.get_extra_info("socket")
            # Judged on the accepted socket itself: ours until we close it.
            uid = peer.peer_uid(sock) if sock is not None else None
            # Root is never turned away: the limits are against the others.
            if uid != 0 and (len(self.tasks) > MAX_CONNECTIONS
                             or self.per_uid.get(uid, 0) >= PER_UID):
                self.quiet.warning(("relay-full", self.what, uid),
                                   "%s %s: too many connections from uid %s; closing "
                                   "new ones", self.what, self.endpoint, uid)
                return
            self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
            counted = True
            path = await self.route(uid)
            if path is None:
                self.quiet.warning(("relay-refused", self.what, uid),
                                   "%s %s: closed a connection from %s: no rights",
                                   self.what, self.endpoint,
                                   "an unidentified peer" if uid is None else f"uid {uid}")
                return
            try:
                inner_reader, inner_writer = await asyncio.open_unix_connection(
                    path, limit=CHUNK)
            except OSError as exc:
                self.quiet.warning(("relay-inner", path), "%s %s: cannot reach %s: %s",
                                   self.what, self.endpoint, path, exc)
                return
            try:
                await _both_ways(reader, writer, inner_reader, inner_writer)
            finally:
                inner_writer.close()
        finally:
            if counted:
                self.per_uid[uid] -= 1
                if not self.per_uid[uid]:
                    del self.per_uid[uid]
            writer.close()


async def _both_ways(reader_a: asyncio.StreamReader, writer_a: asyncio.StreamWriter,
                     reader_b: asyncio.StreamReader, writer_b: asyncio.StreamWriter) -> None:
    """Carry bytes a->b and b->a until either side closes; then both end."""
    pumps = [asyncio.ensure_future(_pump(reader_a, writer_b)),
             asyncio.ensure_future(_pump(reader_b, writer_a))]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            writer.write(data)
            await writer.drain()   # the other side's pace: nothing piles up here
    except (ConnectionError, OSError):
        return


def is_relayed(endpoint: str, curve: bool) -> bool:
    """Whether sockvisor serves `endpoint` through a Relay: tcp without CURVE
    keys, which config.py allows on loopback only (with keys, libzmq's CURVE
    says who a client is, on any address)."""
    return endpoint.startswith("tcp://") and not curve
