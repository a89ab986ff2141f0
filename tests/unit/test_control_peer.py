"""control/peer.py against the real kernel: who owns the other end of a loopback
TCP connection, and every way that question must come back "don't know".

Real sockets on 127.0.0.1 / ::1 (no mocks: the point is what the kernel answers).
The other-user case runs a client as `nobody` and needs root.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

import pytest

from sockvisor.control import peer


def _pair(family: int = socket.AF_INET, server_host: str = "127.0.0.1",
          client_host: str | None = None):
    """(listener, client, accepted) over loopback."""
    listener = socket.create_server((server_host, 0), family=family)
    port = listener.getsockname()[1]
    client_family = (socket.AF_INET6 if client_host and ":" in client_host else family)
    client = socket.socket(client_family, socket.SOCK_STREAM)
    client.connect((client_host or server_host, port))
    accepted, _ = listener.accept()
    return listener, client, accepted


def _has_ipv6() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


def test_our_own_connection_is_ours():
    listener, client, accepted = _pair()
    with listener, client, accepted:
        assert peer.peer_uid(accepted) == os.geteuid()


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")
def test_ipv6_loopback():
    listener, client, accepted = _pair(socket.AF_INET6, "::1")
    with listener, client, accepted:
        assert peer.peer_uid(accepted) == os.geteuid()


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 here")
def test_ipv4_mapped_client_on_an_ipv4_server():
    """A client's AF_INET6 socket connected to ::ffff:127.0.0.1: the kernel keeps
    it as an IPv6 socket with mapped addresses; it is found all the same."""
    listener, client, accepted = _pair(socket.AF_INET, "127.0.0.1", "::ffff:127.0.0.1")
    with listener, client, accepted:
        assert client.family == socket.AF_INET6 and accepted.family == socket.AF_INET
        assert peer.peer_uid(accepted) == os.geteuid()


def test_a_peer_that_has_closed_is_nobody_we_know():
    """Its end lingers (FIN_WAIT2, later TIME_WAIT with uid 0): not ESTABLISHED,
    so not an answer."""
    listener, client, accepted = _pair()
    with listener, accepted:
        client.close()
        assert peer.peer_uid(accepted) is None


def test_the_exact_lookup_falls_back_to_a_listener_and_we_refuse_that():
    """The kernel's exact lookup answers with a *listening* socket on the port when
    no connection has that 4-tuple (why peer_uid insists on ESTABLISHED and the
    exact 4-tuple): a gone peer whose port root now listens on must not read as root."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        entry = peer.lookup(socket.AF_INET, ("127.0.0.1", port), ("127.0.0.1", 9))
        assert entry is not None and entry.state != peer.TCP_ESTABLISHED
        assert entry.uid == os.geteuid()


def test_nothing_there():
    assert peer.lookup(socket.AF_INET, ("127.0.0.1", 1), ("127.0.0.1", 2)) is None


def test_not_a_connection():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unconnected:
        assert peer.peer_uid(unconnected) is None
    left, right = socket.socketpair()
    with left, right:
        assert peer.peer_uid(left) is None


def _non_loopback_address() -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))   # no packet is sent: picks a source address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if peer.is_loopback(address) else address


def test_a_non_loopback_connection_is_refused():
    """Only loopback is vouched for: the kernel's uid of a socket on another
    machine means nothing here."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    listener, client, accepted = _pair(socket.AF_INET, address)
    with listener, client, accepted:
        assert peer.peer_uid(accepted) is None


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
    ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("localhost", False),
    ("", False)])
def test_is_loopback(address, loopback):
    assert peer.is_loopback(address) is loopback


CLIENT_AS_NOBODY = r"""
import socket, sys
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write("connected\n"); sys.stdout.flush()
sys.stdin.read()
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a client as another user")
def test_another_users_socket_is_theirs():
    nobody = pwd.getpwnam("nobody")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child = subprocess.Popen(
            ["/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable,
             "-c", CLIENT_AS_NOBODY, str(listener.getsockname()[1])],
            user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "connected\n"
            accepted, _ = listener.accept()
            with accepted:
                assert peer.peer_uid(accepted) == nobody.pw_uid
        finally:
            child.stdin.close()
            child.wait(10)


def _unlisten(sock: socket.socket) -> None:
    """connect() with AF_UNSPEC, as a worker can do on its fd 3: out of LISTEN."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = ctypes.create_string_buffer(16)   # struct sockaddr, sa_family 0
    assert libc.connect(sock.fileno(), unspec, 16) == 0, ctypes.get_errno()


def test_a_listening_socket_we_hand_out_is_no_credential(monkeypatch):
    """A listening socket sockvisor shares with workers, taken out of LISTEN and
    connected: its kernel uid is ours (root's), yet the peer is a stranger."""
    monkeypatch.setattr(peer, "_SHARED_INODES", set())
    target = socket.create_server(("127.0.0.1", 0))
    shared = socket.create_server(("127.0.0.1", 0))
    other = socket.socket()
    with target, shared, other:
        peer.shared_by_us(shared)
        _unlisten(shared)
        shared.connect(target.getsockname())
        hijacked, _ = target.accept()
        other.connect(target.getsockname())
        honest, _ = target.accept()
        with hijacked, honest:
            assert peer.peer_uid(hijacked) is None
            assert peer.peer_uid(honest) == os.geteuid()


def test_the_sockets_we_handed_out_are_remembered_across_an_upgrade(monkeypatch):
    """What an upgrade carries (`shared_inodes`) and the new process takes back
    (`remember_shared`) refuses the peer again, though the socket was closed on
    our side before the exec: a worker may still hold it."""
    monkeypatch.setattr(peer, "_SHARED_INODES", set())
    target = socket.create_server(("127.0.0.1", 0))
    shared = socket.create_server(("127.0.0.1", 0))
    with target, shared:
        peer.shared_by_us(shared)
        carried = peer.shared_inodes()
        assert carried == [os.fstat(shared.fileno()).st_ino & 0xFFFFFFFF]
        monkeypatch.setattr(peer, "_SHARED_INODES", set())   # the exec'd process
        _unlisten(shared)
        shared.connect(target.getsockname())
        hijacked, _ = target.accept()
        with hijacked:
            assert peer.peer_uid(hijacked) == os.geteuid()   # forgotten: the hole
            peer.remember_shared(carried)
            assert peer.peer_uid(hijacked) is None
