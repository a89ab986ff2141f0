"""`ListeningSocket.ensure_listening` against what a worker can do to the socket it
shares with every other worker (sockets.py, "shutdown() acts on the socket"):
real sockets on loopback, the worker's system calls made here on a duplicate
of the fd, as a worker holds one.

The end-to-end attack (a `nobody` worker, sockvisor replacing the workers on the
dead socket) is tests/security/test_shared_socket_hijack.py.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

import pytest

from sockvisor.config import SocketConfig
from sockvisor.control import peer
from sockvisor.sockets import SocketError, adopt, bind, keep_listening

from conftest import free_port

_libc = ctypes.CDLL(None, use_errno=True)


def _disconnect(fd: int) -> None:
    """connect() with AF_UNSPEC: on a listening TCP socket, it leaves LISTEN."""
    unspec = struct.pack("=H14s", socket.AF_UNSPEC, b"")
    assert _libc.connect(fd, unspec, len(unspec)) == 0, os.strerror(ctypes.get_errno())


class Worker:
    """A worker's duplicate of the shared socket (fd 3 in a real one)."""

    def __init__(self, listening):
        self.sock = socket.socket(fileno=os.dup(listening.fd))
        self.peer = socket.socket(self.sock.family, socket.SOCK_STREAM)
        loopback = "::1" if self.sock.family == socket.AF_INET6 else "127.0.0.1"
        self.peer.bind((loopback, 0))
        self.peer.listen(1)

    def hijack(self, first: str = "unspec", clear_reuseaddr: bool = False) -> None:
        """Take it out of LISTEN, then make it a client connection."""
        if clear_reuseaddr:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        if first == "unspec":
            _disconnect(self.sock.fileno())
        else:
            self.sock.shutdown(socket.SHUT_RD)
        self.sock.setblocking(True)
        self.sock.connect(self.peer.getsockname())

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


@pytest.fixture
def workers():
    made: list[Worker] = []

    def make(listening) -> Worker:
        made.append(Worker(listening))
        return made[-1]
    yield make
    for worker in made:
        worker.close()


def _serves(listening) -> None:
    """A connection to the address it was bound at is accepted on its socket."""
    family = listening.sock.family
    host, port = listening.bound_at[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with socket.create_connection((host, port), timeout=2) as client:
        listening.sock.settimeout(2)
        try:
            accepted, _ = listening.sock.accept()
        finally:
            listening.sock.setblocking(listening.config.blocking)
        accepted.close()
        assert client.family == family


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "::"])
@pytest.mark.parametrize("first", ["unspec", "shutrd"])
@pytest.mark.parametrize("explicit_port", [False, True])
def test_a_connected_socket_is_bound_anew_at_the_same_address(workers, host, first,
                                                              explicit_port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    port = free_port() if explicit_port else 0
    listening = bind(SocketConfig("web", family, host=host, port=port))
    try:
        address = listening.address
        old_inode = os.fstat(listening.fd).st_ino
        workers(listening).hijack(first, clear_reuseaddr=explicit_port)
        events: list = []
        keep_listening([listening], lambda topic, data: events.append((topic, data)))
        assert [t for t, _ in events] == ["socket.web.relisten"], events
        data = events[0][1]
        assert data["replaced"] is True and data["how"].startswith("bound anew"), data
        assert data["address"] == address == listening.address
        assert listening.sock.getsockname()[:2] == listening.bound_at[:2]
        assert os.fstat(listening.fd).st_ino != old_inode
        assert listening.listening and listening.relistened == 1
        # The new socket is root's too, in workers' hands: no credential (peer.py).
        assert os.fstat(listening.fd).st_ino & 0xFFFFFFFF in peer._SHARED_INODES
        assert os.get_blocking(listening.fd) == listening.config.blocking
        _serves(listening)
        assert listening.ensure_listening() is None   # and it stays repaired
    finally:
        listening.close()


def test_a_port_0_socket_a_worker_moved_to_another_port_comes_back(workers):
    """shutdown() lets a kernel-chosen port go; the worker's own listen() then picks
    another one.  Listening, but not where clients were told to connect."""
    listening = bind(SocketConfig("web", socket.AF_INET, host="127.0.0.1", port=0))
    try:
        port = listening.bound_at[1]
        worker = workers(listening)
        worker.sock.shutdown(socket.SHUT_RD)
        worker.sock.listen(8)
        assert worker.sock.getsockname()[1] != port
        assert listening.ensure_listening().startswith("bound anew")
        assert listening.port == port
        _serves(listening)
    finally:
        listening.close()


def test_a_shutdown_alone_is_still_repaired_in_place(workers):
    listening = bind(SocketConfig("web", socket.AF_INET, host="127.0.0.1", port=0))
    try:
        inode = os.fstat(listening.fd).st_ino
        workers(listening).sock.shutdown(socket.SHUT_RD)
        assert listening.ensure_listening() == "listen() again"
        assert os.fstat(listening.fd).st_ino == inode
        _serves(listening)
    finally:
        listening.close()


def test_a_port_taken_meanwhile_is_an_error_naming_it(workers):
    listening = bind(SocketConfig("web", socket.AF_INET, host="127.0.0.1", port=0))
    squatter = socket.socket()
    try:
        inode = os.fstat(listening.fd).st_ino
        workers(listening).hijack("unspec")   # a kernel-chosen port is let go
        squatter.bind(listening.bound_at)
        squatter.listen(1)
        with pytest.raises(SocketError, match=r"\[socket:web\] .*cannot be bound at "
                                              r"127\.0\.0\.1:\d+: Address already in use"):
            listening.ensure_listening()
        assert os.fstat(listening.fd).st_ino == inode   # nothing swapped
        events: list = []
        keep_listening([listening], lambda topic, data: events.append(topic))
        assert events == ["socket.web.broken"] and not listening.listening
    finally:
        squatter.close()
        listening.close()


def test_an_adopted_socket_is_not_recreated(workers):
    """The service manager's socket has an identity we cannot make again."""
    original = socket.socket()
    original.bind(("127.0.0.1", 0))
    original.listen(8)
    listening = adopt(SocketConfig("web", socket.AF_INET, host="127.0.0.1", port=0),
                      original.detach())
    try:
        workers(listening).hijack("unspec")
        with pytest.raises(SocketError, match=r"restart its \.socket unit"):
            listening.ensure_listening()
    finally:
        listening.close()


def test_an_upgrade_hands_over_where_the_socket_was_bound(workers, tmp_path):
    """A worker moved a port 0 socket elsewhere just before an upgrade: the resumed
    sockvisor still repairs it to the port the kernel first chose."""
    from types import SimpleNamespace

    from sockvisor import config as config_module
    from sockvisor import upgrade
    from sockvisor.sockets import take_back
    path = tmp_path / "c.ini"
    path.write_text("[sockvisor]\nendpoint = ipc:///nonexistent/ctl\n\n"
                    "[socket:web]\nhost = 127.0.0.1\nport = 0\n\n"
                    "[watcher:web]\ncmd = /bin/true\nsockets = web\n")
    config = config_module.load(str(path))
    listening = bind(config.sockets["web"])
    port = listening.bound_at[1]
    supervisor = SimpleNamespace(config=config, watchers={}, control=None,
                                 sockets={"web": listening}, readiness=None, cgroups=None,
                                 adopts_orphans=False, _ready_reported=False,
                                 started_at=0.0, upgrades=0)
    try:
        worker = workers(listening)
        worker.sock.shutdown(socket.SHUT_RD)
        worker.sock.listen(8)   # listening, on another port
        [entry] = upgrade.capture(supervisor)["sockets"]
        entry = dict(entry, fd=os.dup(entry["fd"]))   # the resumed process's own
        resumed = take_back(config.sockets["web"], entry)
        try:
            assert resumed.bound_at[:2] == ("127.0.0.1", port)
            assert resumed.address == f"127.0.0.1:{port}"
            assert resumed.ensure_listening().startswith("bound anew")
            assert resumed.port == port
            _serves(resumed)
        finally:
            resumed.close()
    finally:
        listening.close()
