"""Worker output to journald by its native protocol, one entry per line.

Through sockvisor's stderr stream every worker line would be an entry of
sockvisor's (SYSLOG_IDENTIFIER=sockvisor, its pid).  Sent as a native datagram
to /run/systemd/journal/socket instead, each line carries the watcher as
SYSLOG_IDENTIFIER and the worker's pid as SYSLOG_PID, so `journalctl -t web`
and `journalctl SYSLOG_PID=1234` find them (and `_PID` stays sockvisor's: the
kernel vouches for that one).

The protocol (systemd's "Native Journal Protocol"): one datagram per entry, a
field per line `NAME=value\\n`; a value holding a newline is sent as `NAME\\n`,
its length as 64-bit little-endian, the bytes, `\\n`.

Never blocks, holds nothing: the socket is non-blocking and a datagram journald
cannot take now (EAGAIN: it is behind) is dropped and counted by the caller,
like a stalled stream (output.py).  No journal socket (not under systemd after
all, journald stopped): `send` returns None and the caller writes the line to
its stream as before.
"""

from __future__ import annotations

import errno
import socket
import struct

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_GONE = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN, errno.EPIPE}


def field(name: bytes, value: bytes) -> bytes:
    if b"\n" in value:
        return name + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name + b"=" + value + b"\n"


def entry(message: bytes, priority: int, identifier: str, pid: int, stream: str) -> bytes:
    return b"".join((
        field(b"MESSAGE", message),
        field(b"PRIORITY", str(priority).encode()),
        field(b"SYSLOG_IDENTIFIER", identifier.encode()),
        field(b"SYSLOG_PID", str(pid).encode()),
        field(b"SOCKVISOR_STREAM", stream.encode()),
    ))


class JournalSocket:
    """The one datagram socket to journald, shared by every sink."""

    def __init__(self, path: str = JOURNAL_SOCKET):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                  | socket.SOCK_NONBLOCK)

    def send(self, data: bytes) -> bool | None:
        """True: sent; False: journald is behind (dropped); None: no journald
        there (the caller falls back to its stream).  Other errors (EMSGSIZE)
        raise OSError."""
        try:
            self.sock.sendto(data, self.path)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            raise


_journal: JournalSocket | None = None


def journal() -> JournalSocket:
    global _journal
    if _journal is None:
        _journal = JournalSocket()
    return _journal
