"""accept_queue(): what the kernel says about a listening socket's queue, read
from real sockets (TCP_INFO; sock_diag for unix sockets)."""

from __future__ import annotations

import socket

import pytest

from sockvisor.accept_queue import AcceptQueue, _parse_unix_reply, accept_queue


def test_tcp_queue_counts_unaccepted_connections():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(7)
        assert accept_queue(listener) == AcceptQueue(0, 7)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            assert accept_queue(listener) == AcceptQueue(3, 7)
            connection, _ = listener.accept()
            connection.close()
            assert accept_queue(listener) == AcceptQueue(2, 7)
        finally:
            for client in clients:
                client.close()


def test_not_listening_is_unknown():
    with socket.socket() as unbound:
        assert accept_queue(unbound) is None


def test_unix_queue(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(5)
        clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for client in clients:
                client.connect(path)
            queue = accept_queue(listener)
            if queue is None:
                pytest.skip("this kernel has no unix_diag (sock_diag for AF_UNIX)")
            assert queue == AcceptQueue(2, 5)
        finally:
            for client in clients:
                client.close()


def test_a_reply_for_another_socket_is_not_ours():
    assert _parse_unix_reply(b"\0" * 64, inode=1234) is None
    assert _parse_unix_reply(b"", inode=1) is None
