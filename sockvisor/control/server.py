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
  * a tcp:// endpoint on a loopback address without CURVE keys (Circus's
    default written out, tcp://127.0.0.1:5555): any local user can connect, so
    libzmq does not listen there; relay.py does, asks the kernel who owns each
    client's socket as it accepts it (peer.py), and carries the connection to
    the ipc endpoint of that user's rights -- the owner's, the group's, or one
    that answers every request with FORBIDDEN ("refused", below);
  * any other tcp:// endpoint is only accepted with CURVE keys (config.py
    refuses it otherwise); clients whose public key is not in the authorized
    directory are dropped by ZAP before a single frame reaches us.  With CURVE
    keys configured, a loopback endpoint uses them too, and CURVE decides.

Events (the PUB endpoint) on loopback tcp are relayed the same way: root,
sockvisor's user and `endpoint_group` members reach the events, anyone else is
disconnected at once -- the same people who may open the ipc events file.

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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import zmq
import zmq.asyncio

from sockvisor import paths
from sockvisor.sockets import chmod_chown
from sockvisor.control import access, discover, protocol, relay
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
    """One ROUTER socket, whose rights its requests have, and what it holds.

    `refuse`: the endpoint a tcp relay sends clients with no rights to: every
    request gets FORBIDDEN, nothing runs."""

    def __init__(self, sock: zmq.asyncio.Socket, owner: bool, refuse: bool = False):
        self.sock = sock
        self.owner = owner
        self.refuse = refuse
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
        # A loopback tcp endpoint is served by a relay (relay.py) in front of
        # ipc endpoints in sockvisor's own runtime folder for this config.
        curve = bool(config.globals.curve_secret_key_file)
        self.default_place = paths.runtime_dir(config.path)
        self.control_bind = self.endpoint
        self.refused_bind: str | None = None
        self.events_bind = self.events_endpoint
        if relay.is_relayed(self.endpoint, curve):
            self.control_bind = paths.default_endpoint(config.path)
            self.refused_bind = f"ipc://{self.default_place}/refused"
            if self.group is not None:
                self.admin_endpoint = paths.default_admin_endpoint(config.path)
        if relay.is_relayed(self.events_endpoint, curve):
            self.events_bind = paths.default_pubsub_endpoint(config.path)
        self.relays: list[relay.Relay] = []
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
        self.closing = False

    # ------------------------------------------------------------------ start / close

    async def open(self, listening: Mapping[str, Sequence[int]] | None = None) -> None:
        """Bind every endpoint; on failure close what was opened and raise.
        `listening`: by tcp endpoint, the relay's listening sockets an upgrade
        carried over (`hand_over_relays`), taken instead of binding again."""
        try:
            self._open()
            await self._open_relays(listening or {})
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        globals_ = self.supervisor.config.globals
        if globals_.curve_secret_key_file:
            self._start_authenticator(globals_.curve_authorized_keys_dir)
        shared_mode = 0o660 if self.group is not None else 0o600
        control = self._bind(zmq.ROUTER, self.control_bind, shared_mode)
        self.routers.append(_Endpoint(control, owner=self.group is None))
        if self.admin_endpoint is not None:
            admin = self._bind(zmq.ROUTER, self.admin_endpoint, 0o600)
            self.routers.append(_Endpoint(admin, owner=True))
        if self.refused_bind is not None:
            refused = self._bind(zmq.ROUTER, self.refused_bind, 0o600)
            self.routers.append(_Endpoint(refused, owner=False, refuse=True))
        self.events = self._bind(zmq.PUB, self.events_bind, shared_mode)
        self.supervisor.subscribers.append(self.publish)
        log.info("control endpoint %s%s; events on %s", self.endpoint,
                 f" (group-operable; owner endpoint {self.admin_endpoint})"
                 if self.admin_endpoint else "", self.events_endpoint)

    async def _open_relays(self, listening: Mapping[str, Sequence[int]]) -> None:
        if self.control_bind != self.endpoint:
            self.relays.append(relay.Relay(self.endpoint, self._route_control, "control",
                                           listening.get(self.endpoint, ())))
        if self.events_bind != self.events_endpoint:
            self.relays.append(relay.Relay(self.events_endpoint, self._route_events,
                                           "events", listening.get(self.events_endpoint, ())))
        for each in self.relays:
            try:
                await each.open()
            except relay.RelayError as exc:
                raise EndpointError(str(exc)) from None
            log.info("%s: loopback tcp, each client judged by the kernel's record of "
                     "its socket (relayed to %s)", each.endpoint,
                     self.control_bind if each.what == "control" else self.events_bind)

    def hand_over_relays(self) -> dict[str, list[int]]:
        """For an upgrade, before `close`: copies of the relays' listening sockets
        by endpoint, so that the port is never free while sockvisor execs (another
        local user could bind it and answer sockvisorctl in its place)."""
        return {each.endpoint: each.hand_over() for each in self.relays}

    async def _rights(self, uid: int | None) -> access.Caller | None:
        if uid is None:
            return None
        # The user database may be remote (NSS): off the loop.
        return await asyncio.to_thread(access.caller_for_uid, uid, self.group,
                                       self.operator)

    async def _route_control(self, uid: int | None) -> str | None:
        """Where a tcp client of `uid` goes: the endpoint of its rights."""
        caller = await self._rights(uid)
        if caller is None:
            target = self.refused_bind
        elif caller.owner:
            target = self.admin_endpoint or self.control_bind
        else:
            target = self.control_bind
        return target[len("ipc://"):] if target else None

    async def _route_events(self, uid: int | None) -> str | None:
        if await self._rights(uid) is None:
            return None
        return self.events_bind[len("ipc://"):]

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
        if endpoint.startswith("tcp://"):   # with CURVE keys: relayed otherwise
            self._configure_curve(sock)
            if endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)   # libzmq binds IPv4 only without it
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
        # The folder, pinned before the bind: the mode and owner below are set on
        # the socket file found in *this* folder, whatever its name or a parent's
        # comes to mean meanwhile (a folder the workers' user can write).
        dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._bind_ipc_in(sock, endpoint, path, dir_fd, mode)
        finally:
            os.close(dir_fd)

    def _bind_ipc_in(self, sock: zmq.asyncio.Socket, endpoint: str, path: str,
                     dir_fd: int, mode: int) -> None:
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
        set_socket_file_mode(dir_fd, os.path.basename(path), mode,
                             self.group if mode & 0o070 else None)
        self.ipc_paths.append(path)

    def _prepare_directory(self, directory: str) -> None:
        group_mode = self.group is not None
        ours = directory == self.default_place
        if not os.path.isdir(directory):
            if not ours and not os.path.isdir(os.path.dirname(directory)):
                raise EndpointError(f"directory {os.path.dirname(directory)} does not exist")
            os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
            os.mkdir(directory, 0o700)
        elif not ours:
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

    async def close(self, linger: int = 0) -> None:
        """`linger` (ms): how long libzmq may take to send replies already queued
        (an upgrade's own reply, before the exec)."""
        self.closing = True
        for task in self.serve_tasks:
            task.cancel()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.serve_tasks, *self.handlers, return_exceptions=True)
        if self.publish in self.supervisor.subscribers:
            self.supervisor.subscribers.remove(self.publish)
        for sock in self.sockets:
            sock.close(linger=linger)
        if self.authenticator is not None:
            self.authenticator.stop()
        if linger:
            await asyncio.to_thread(self.context.term)   # the loop goes on meanwhile
        else:
            self.context.term()
        # The relays after the ZeroMQ sockets: a reply libzmq flushed to a relay's
        # ipc side (the upgrade's own) still has to be carried to its tcp client.
        for each in self.relays:
            await each.close(grace=linger / 1000)
        for path in self.ipc_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        # The per-config directory is ours (paths.py); gone with the endpoints,
        # or /run/sockvisor fills with one empty folder per config ever run.
        # rmdir removes it only if empty (someone else's file stays).
        if any(os.path.dirname(path) == self.default_place for path in self.ipc_paths):
            try:
                os.rmdir(self.default_place)
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
        task = asyncio.ensure_future(self._handle(endpoint, frames))
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

    async def _handle(self, endpoint: _Endpoint, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        envelope: list[bytes] = []
        if len(body) >= 2 and body[0] == b"":      # a REQ client's delimiter
            envelope, body = [b""], body[1:]
        if endpoint.refuse:
            reply = protocol.error(_request_id(body), REFUSED, ErrNo.FORBIDDEN)
        else:
            reply = await self.dispatch(body, endpoint.owner)
        try:
            # A peer that does not read its replies: beyond SNDHWM, ROUTER drops.
            await endpoint.sock.send_multipart(
                [identity, *envelope, protocol.encode(reply)], flags=zmq.NOBLOCK)
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


REFUSED = ("not allowed: the kernel says this connection's socket belongs to a user "
           "who is neither root, nor sockvisor's own user, nor a member of "
           "endpoint_group (or it could not say whose it is)")


def _request_id(body: list[bytes]) -> Any:
    """The id of a request we refuse without reading it further (None if none)."""
    if len(body) != 1 or len(body[0]) > protocol.MAX_REQUEST_BYTES:
        return None
    return protocol.request_id_of(body[0])


def set_socket_file_mode(dir_fd: int, name: str, mode: int, group: int | None) -> None:
    """chmod (and chgrp) the socket file `name` in the folder `dir_fd`, never
    following a link: root acting by name in a folder another user can write
    would change whatever that user points the name at (a link to /etc/shadow
    swapped in between the bind and the chmod).  The name is opened O_PATH |
    O_NOFOLLOW and must be a socket; mode and group are set on that very inode
    (sockets.chmod_chown, as for the unix sockets of [socket:NAME])."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise EndpointError(f"{name}: the control socket vanished after it was bound "
                            f"({exc.strerror}): someone else can write its folder") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise EndpointError(f"{name}: not the control socket any more (replaced after "
                                "the bind: someone else can write its folder); its mode "
                                "and owner were not changed")
        chmod_chown(fd, mode, None, group)
    finally:
        os.close(fd)


def _ipc_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
