"""The control channel: ZeroMQ ROUTER endpoints that run commands, a PUB endpoint for events.

Access control.  Circus's channel has none (any local user may `add` a command
that then runs as root).  Ours:
  * the default endpoint is an ipc socket, mode 0600, in a 0700 directory of
    sockvisor's own user (paths.py);
  * with `endpoint_group`, that endpoint becomes 0660 for the group, and a second,
    owner-only endpoint (`…admin`, 0600) is opened beside it.  ZeroMQ's ipc
    transport does not tell who the peer is, so *which endpoint a request came in
    on* is the credential: on the group endpoint, what the group may not do
    (access.py: decide what runs or as whom, stop the service, see secrets --
    unless granted) is refused with errno FORBIDDEN;
  * a tcp:// endpoint is only accepted with CURVE keys (config.py refuses it
    otherwise); clients whose public key is not in the authorized directory are
    dropped by ZAP before a single frame reaches us.

Every request runs as its own task, so read-only commands answer at once while a
reload is waiting for readiness; per-watcher ordering is the watcher's business.
A malformed request gets an error reply; nothing a client sends can stop the loop.

Bounded memory (DESIGN §5).  A client that pipelines requests without reading the
replies must not make root hold them all: libzmq queues at most RCVHWM messages
of at most MAX_SOCKET_MESSAGE bytes per peer; a peer (ROUTER identity) runs at
most PEER_IN_FLIGHT requests at once, the rest wait in its own queue; and an
endpoint holds at most ENDPOINT_IN_FLIGHT requests (running or waiting) in all.
At that limit the server stops calling recv: libzmq's queues fill up and the
clients' sends block.  That is back-pressure, not refusal: nothing is rejected,
and a client that reads its replies is served as soon as there is room, in
fair turn with the others (ROUTER reads peers round-robin).  The owner endpoint
has its own budget, so a group member cannot crowd root out.  Replies to a peer
that does not read them are dropped beyond SNDHWM.

Start-up opens the endpoints (`open`) before the listening sockets are bound,
so an endpoint that cannot be opened fails start-up before any port listens;
requests are read (`serve`) once the watchers exist.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from sockvisor import paths
from sockvisor.control import access, discover, protocol
from sockvisor.control.commands import load_commands
from sockvisor.control.dispatch import run_command
from sockvisor.control.protocol import CommandError, ErrNo

if TYPE_CHECKING:
    from sockvisor.control.host import Host

log = logging.getLogger("sockvisor.control")


# The bounds explained in the module docstring.
PEER_IN_FLIGHT = 4
ENDPOINT_IN_FLIGHT = 16
RCVHWM = 8
SNDHWM = 64


class EndpointError(OSError):
    pass


class _Peer:
    """One client (ROUTER identity) on one endpoint: its running and waiting requests."""
    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.waiting: collections.deque[list[bytes]] = collections.deque()


class _Endpoint:
    """One ROUTER socket, whether it is the owner's, and what it holds."""

    def __init__(self, sock: zmq.asyncio.Socket, owner: bool):
        self.sock = sock
        self.owner = owner
        self.room = asyncio.Semaphore(ENDPOINT_IN_FLIGHT)
        self.peers: dict[bytes, _Peer] = {}


def endpoints_for(config_path: str, endpoint: str | None, pubsub: str | None,
                  group: int | None) -> tuple[str, str | None, str]:
    """(control, admin or None, events) endpoints for a config."""
    if endpoint is None:
        control = paths.default_endpoint(config_path)
        admin = paths.default_admin_endpoint(config_path) if group is not None else None
        events = pubsub or paths.default_pubsub_endpoint(config_path)
        return control, admin, events
    admin = f"{endpoint}.admin" if group is not None and endpoint.startswith("ipc://") else None
    if pubsub is None:
        pubsub = (f"{endpoint}.events" if endpoint.startswith("ipc://")
                  else _next_port(endpoint))
    return endpoint, admin, pubsub


def _next_port(endpoint: str) -> str:
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + 1}"


class ControlServer:
    def __init__(self, supervisor: "Host"):
        self.supervisor = supervisor
        config = supervisor.config
        self.group = config.globals.endpoint_group
        self.endpoint, self.admin_endpoint, self.events_endpoint = endpoints_for(
            config.path, config.globals.endpoint, config.globals.pubsub_endpoint, self.group)
        self.commands = load_commands()
        # What endpoint_group members may do: fixed at start-up, like the
        # endpoints themselves (reloadconfig does not change [sockvisor]).
        self.operator = access.operator(config.globals)
        self.context = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []
        self.routers: list[_Endpoint] = []
        self.events: zmq.asyncio.Socket | None = None
        self.serve_tasks: list[asyncio.Task] = []
        self.handlers: set[asyncio.Task] = set()
        self.ipc_paths: list[str] = []
        self.authenticator: Any = None
        self.default_dir = config.globals.endpoint is None
        self.closing = False

    # ------------------------------------------------------------------ start / close

    async def open(self) -> None:
        """Bind every endpoint; on failure close what was opened and raise."""
        try:
            self._open()
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        globals_ = self.supervisor.config.globals
        if globals_.curve_secret_key_file:
            self._start_authenticator(globals_.curve_authorized_keys_dir)
        shared_mode = 0o660 if self.group is not None else 0o600
        control = self._bind(zmq.ROUTER, self.endpoint, shared_mode)
        self.routers.append(_Endpoint(control, owner=self.group is None))
        if self.admin_endpoint is not None:
            admin = self._bind(zmq.ROUTER, self.admin_endpoint, 0o600)
            self.routers.append(_Endpoint(admin, owner=True))
        self.events = self._bind(zmq.PUB, self.events_endpoint, shared_mode)
        self.supervisor.subscribers.append(self.publish)
        log.info("control endpoint %s%s; events on %s", self.endpoint,
                 f" (group-operable; owner endpoint {self.admin_endpoint})"
                 if self.admin_endpoint else "", self.events_endpoint)

    def serve(self) -> None:
        """Start reading requests (the endpoints are open: see `open`)."""
        for endpoint in self.routers:
            self.serve_tasks.append(asyncio.ensure_future(self._serve(endpoint)))

    def _start_authenticator(self, keys_dir: str | None) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator
        self.authenticator = AsyncioAuthenticator(self.context)
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=keys_dir)

    def _bind(self, kind: int, endpoint: str, mode: int) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        # Listed at once: close() must close it even if the bind below fails, or
        # the context's term() would wait for it for ever.
        self.sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_SOCKET_MESSAGE)
            sock.setsockopt(zmq.RCVHWM, RCVHWM)
            sock.setsockopt(zmq.SNDHWM, SNDHWM)
        else:
            sock.setsockopt(zmq.SNDHWM, 10000)
        if endpoint.startswith("tcp://"):
            self._configure_curve(sock)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise EndpointError(f"cannot bind {endpoint}: {exc}") from None
        else:
            self._bind_ipc(sock, endpoint, mode)
        return sock

    def _configure_curve(self, sock: zmq.asyncio.Socket) -> None:
        import zmq.auth
        public, secret = zmq.auth.load_certificate(
            self.supervisor.config.globals.curve_secret_key_file)
        if secret is None:
            raise EndpointError(f"{self.supervisor.config.globals.curve_secret_key_file} "
                                "holds no secret key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True

    def _bind_ipc(self, sock: zmq.asyncio.Socket, endpoint: str, mode: int) -> None:
        path = endpoint[len("ipc://"):]
        if path.startswith("@"):
            raise EndpointError(f"{endpoint}: abstract ipc endpoints have no permissions; "
                                "use a path")
        directory = os.path.dirname(path)
        self._prepare_directory(directory)
        if os.path.lexists(path):
            pid = discover.listener_pid(path)
            if pid is not None:
                # Most often a second start of a running config: say that, with
                # the pid to look at (SO_PEERCRED: see discover.py).
                raise EndpointError(f"already running (pid {pid}): {endpoint} is in use")
            if _ipc_in_use(path):
                raise EndpointError(f"{endpoint} is in use (another sockvisor runs on it)")
            os.unlink(path)
        # libzmq creates the file with the process umask: keep it closed until chmod.
        old_umask = os.umask(0o177)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(f"cannot bind {endpoint}: {exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if self.group is not None and mode & 0o070:
            os.chown(path, -1, self.group)
        self.ipc_paths.append(path)

    def _prepare_directory(self, directory: str) -> None:
        group_mode = self.group is not None
        if not os.path.isdir(directory):
            if not self.default_dir and not os.path.isdir(os.path.dirname(directory)):
                raise EndpointError(f"directory {os.path.dirname(directory)} does not exist")
            os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
            os.mkdir(directory, 0o700)
        elif not self.default_dir:
            return   # the user's own directory: theirs to set up
        # The base (/run/sockvisor, /tmp/sockvisor-UID) must be ours or root's and
        # writable by nobody else: whoever can write there can swap our directory.
        base = os.stat(os.path.dirname(directory))
        if base.st_uid not in (0, os.geteuid()) or base.st_mode & 0o022:
            raise EndpointError(f"{os.path.dirname(directory)} is not safe for the control "
                                f"endpoint (owner uid {base.st_uid}, mode "
                                f"{stat.S_IMODE(base.st_mode):o}); set endpoint = ... "
                                "or $XDG_RUNTIME_DIR")
        st = os.stat(directory)
        if st.st_uid != os.geteuid():
            raise EndpointError(f"{directory} belongs to uid {st.st_uid}, not to us")
        # The group needs to reach the socket file (x), never to list or create.
        wanted = 0o710 if group_mode else 0o700
        if stat.S_IMODE(st.st_mode) != wanted:
            os.chmod(directory, wanted)
        if group_mode:
            os.chown(directory, -1, self.group)

    async def close(self) -> None:
        self.closing = True
        for task in self.serve_tasks:
            task.cancel()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.serve_tasks, *self.handlers, return_exceptions=True)
        if self.publish in self.supervisor.subscribers:
            self.supervisor.subscribers.remove(self.publish)
        for sock in self.sockets:
            sock.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()
        for path in self.ipc_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.default_dir:
            # The per-config directory is ours (paths.py); gone with the endpoints,
            # or /run/sockvisor fills with one empty folder per config ever run.
            # rmdir removes it only if empty (someone else's file stays).
            for directory in sorted({os.path.dirname(path) for path in self.ipc_paths}):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass

    # ------------------------------------------------------------------ events

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.send_multipart([topic.encode(), protocol.encode(data)],
                                       flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # nobody keeps up: events are best effort, never back-pressure

    # ------------------------------------------------------------------ requests

    async def _serve(self, endpoint: _Endpoint) -> None:
        while True:
            # At ENDPOINT_IN_FLIGHT held requests, wait here without reading:
            # that is the back-pressure (see the module docstring).
            await endpoint.room.acquire()
            try:
                frames = await endpoint.sock.recv_multipart()
            except asyncio.CancelledError:
                endpoint.room.release()
                raise
            except zmq.ZMQError as exc:
                endpoint.room.release()
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("control: receive failed: %s", exc)
                continue
            self._admit(endpoint, frames)

    def _admit(self, endpoint: _Endpoint, frames: list[bytes]) -> None:
        peer = endpoint.peers.get(frames[0])
        if peer is None:
            peer = endpoint.peers[frames[0]] = _Peer()
        if peer.running < PEER_IN_FLIGHT:
            self._run(endpoint, peer, frames)
        else:
            peer.waiting.append(frames)

    def _run(self, endpoint: _Endpoint, peer: _Peer, frames: list[bytes]) -> None:
        peer.running += 1
        task = asyncio.ensure_future(self._handle(endpoint.sock, endpoint.owner, frames))
        self.handlers.add(task)
        task.add_done_callback(lambda done: self._finished(endpoint, frames[0], done))

    def _finished(self, endpoint: _Endpoint, identity: bytes, task: asyncio.Task) -> None:
        self.handlers.discard(task)
        endpoint.room.release()
        peer = endpoint.peers[identity]
        peer.running -= 1
        if peer.waiting and not self.closing:
            self._run(endpoint, peer, peer.waiting.popleft())
        elif peer.running == 0:
            del endpoint.peers[identity]

    async def _handle(self, sock: zmq.asyncio.Socket, owner: bool,
                      frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        envelope: list[bytes] = []
        if len(body) >= 2 and body[0] == b"":      # a REQ client's delimiter
            envelope, body = [b""], body[1:]
        reply = await self.dispatch(body, owner)
        try:
            # A peer that does not read its replies: beyond SNDHWM, ROUTER drops.
            await sock.send_multipart([identity, *envelope, protocol.encode(reply)],
                                      flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("control: could not reply: %s", exc)

    async def dispatch(self, body: list[bytes], owner: bool) -> dict[str, Any]:
        return await dispatch(self.supervisor, self.commands,
                              access.OWNER_CALLER if owner else self.operator, body)


async def dispatch(supervisor: "Host", commands: dict[str, Any],
                   caller: access.Caller, body: list[bytes]) -> dict[str, Any]:
    """One request's frames (after the routing envelope) to its reply: never raises."""
    if len(body) != 1:
        return protocol.error(None, f"expected one frame per request, got {len(body)}",
                              ErrNo.BAD_MSG_DATA_ERROR)
    payload = body[0]
    try:
        request = protocol.parse_request(payload)
    except CommandError as exc:
        return protocol.error(protocol.request_id_of(payload)
                              if len(payload) <= protocol.MAX_REQUEST_BYTES else None,
                              exc.reason, exc.errno)
    return await run_command(supervisor, request.command, request.properties,
                             caller=caller, request_id=request.id, commands=commands)


def _ipc_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
