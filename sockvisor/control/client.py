"""A blocking control-channel client: what sockvisorctl (and tests, and plugins) use.

Synchronous pyzmq on purpose: a command-line client does one round trip, and
not importing asyncio keeps `sockvisorctl` quick to start.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from typing import Any

import zmq

from sockvisor.control import protocol


# How long an ipc endpoint that is down because its sockvisor is upgrading
# itself (a marker file says so: `_upgrading`) is given to come back: longer
# than the gap of an upgrade in place.  Without the marker: unreachable at once.
GAP_WAIT = 3.0


class Unreachable(Exception):
    """No sockvisor answered at the endpoint in time."""


class _NotListening(Unreachable):
    """Nothing listens at the ipc endpoint (yet, or any more)."""


class ControlClient:
    def __init__(self, endpoint: str, timeout: float = 10.0,
                 curve_server_key: bytes | None = None,
                 curve_client_keys: tuple[bytes, bytes] | None = None,
                 context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_server_key is not None:
            if curve_client_keys is None:
                raise ValueError("a CURVE server key needs a client key pair")
            self.socket.curve_serverkey = curve_server_key
            self.socket.curve_publickey, self.socket.curve_secretkey = curve_client_keys
        if endpoint.startswith("tcp://["):
            self.socket.setsockopt(zmq.IPV6, 1)   # libzmq connects IPv4 only without it
        self._check_ipc()
        self._check_tcp()
        self.socket.connect(endpoint)

    def _check_ipc(self) -> None:
        # ZeroMQ connects lazily and would just time out; say what is wrong at once
        # -- unless it comes right: sockvisor upgrading itself (upgrade.py) has
        # its endpoint closed for a few hundred ms, and a call then must wait.
        if not self.endpoint.startswith("ipc://"):
            return
        deadline = time.monotonic() + min(self.timeout, GAP_WAIT)
        while True:
            try:
                return self._check_ipc_once()
            except _NotListening:
                if time.monotonic() >= deadline or not _upgrading(self.endpoint):
                    raise
                time.sleep(0.02)

    def _check_ipc_once(self) -> None:
        path = self.endpoint[len("ipc://"):]
        if path.startswith("@"):
            return
        directory = os.path.dirname(path) or "."
        if not os.path.exists(path):
            if os.path.isdir(directory) and not os.access(directory, os.X_OK):
                raise Unreachable(f"permission denied: {self.endpoint}")
            raise _NotListening(f"no sockvisor at {self.endpoint} (no such socket file)")
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path) or ".", os.X_OK):
            raise Unreachable(f"permission denied: {self.endpoint}")
        # A file left behind by a sockvisor that was killed: nobody accepts on it,
        # and ZeroMQ would retry quietly until the timeout (10 minutes for reload).
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            raise _NotListening(f"no sockvisor at {self.endpoint} (stale socket file: "
                              "nothing listens on it)") from None
        except OSError:
            pass   # let ZeroMQ try and report
        finally:
            probe.close()

    def _check_tcp(self) -> None:
        # As for ipc: nothing listening means a quiet wait until the timeout.
        if not self.endpoint.startswith("tcp://"):
            return
        host, _, port = self.endpoint[len("tcp://"):].rpartition(":")
        if not port.isdigit():
            return   # let ZeroMQ say what is wrong with it
        try:
            probe = socket.create_connection((host.strip("[]"), int(port)),
                                             timeout=min(self.timeout, 2.0))
        except ConnectionRefusedError:
            raise Unreachable(f"no sockvisor at {self.endpoint} "
                              "(nothing listens there)") from None
        except OSError:
            return   # unreachable, filtered, a name that does not resolve: ZeroMQ's to report
        with probe:
            self._check_listener(probe)

    def _check_listener(self, probe: socket.socket) -> None:
        """Any local user may listen on a free loopback port (while sockvisor is
        down, say) to read what we send -- `set web env SECRET=...` -- and answer
        what it likes.  So on loopback, talk only to a listener the kernel says
        is root's or ours.  (CURVE authenticates a non-loopback server.)"""
        from sockvisor.control import peer
        address = probe.getpeername()[0]
        if not peer.is_loopback(address):
            return
        uid = peer.peer_uid(probe)
        if uid in (0, os.geteuid()):
            return
        if uid is None:
            raise Unreachable(f"{self.endpoint}: the kernel could not say who listens "
                              "there; not sending it anything")
        import pwd
        try:
            who = f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
        except KeyError:
            who = f"uid {uid}"
        raise Unreachable(f"{self.endpoint} is served by {who}, neither root nor you: "
                          "not a sockvisor to trust; not sending it anything")

    def call(self, command: str, properties: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        self.socket.send(protocol.make_request(request_id, command, properties or {}))
        deadline_ms = int(1000 * (self.timeout if timeout is None else timeout))
        while True:
            if not self.socket.poll(deadline_ms, zmq.POLLIN):
                raise Unreachable(f"no answer from {self.endpoint} within "
                                  f"{deadline_ms / 1000:g}s")
            reply = protocol_decode(self.socket.recv())
            if reply.get("id") == request_id:
                return reply

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MARKER_SIZE = 32   # a pid and a newline, with room to spare


def _upgrading(endpoint: str) -> bool:
    """Is the sockvisor of this ipc endpoint exec'ing itself (upgrade.py)?  It
    leaves PATH.upgrading, holding its pid, while its endpoint is down.

    The endpoint's folder may be writable by others (a worker's /run/app): the
    marker is read only if it is a regular file, not through a symlink, without
    blocking on a FIFO (O_NONBLOCK: open() of a FIFO with no writer would wait),
    and at most MARKER_SIZE bytes -- no /dev/zero can make root's client hang or
    fill memory."""
    try:
        fd = os.open(endpoint[len("ipc://"):] + ".upgrading",
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        pid = int(os.read(fd, MARKER_SIZE).strip() or 0)
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):   # 32 digits fit; no pid is that big
        return False
    except PermissionError:
        pass
    return True


def protocol_decode(data: bytes) -> dict[str, Any]:
    import json
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
