"""The NOTIFY_SOCKET that sockvisor gives its workers.

A worker reports readiness exactly as it would to systemd: it sends a
datagram ``READY=1`` (or ``STATUS=...``, ``STOPPING=1``, ...) to the address
in its ``$NOTIFY_SOCKET`` (see sd_notify(3)).  So gunicorn, uvicorn, nginx
built with systemd support, or any program using libsystemd or its
re-implementations, work under sockvisor unchanged.

Why this design:

* **The abstract namespace.**  The socket is bound to an address such as
  ``\\0sockvisor/<supervisor pid>/<random hex>`` (``@sockvisor/...`` in
  $NOTIFY_SOCKET spelling).  Abstract AF_UNIX addresses have no inode, hence
  no permissions: a worker that dropped to ``nobody`` can still send to it,
  without sockvisor having to create, chmod or chown a socket file in a
  directory the worker can traverse, and nothing is left behind on disk when
  sockvisor dies.  (They are scoped to the network namespace: a worker in its
  own netns could not reach it.)
* **The kernel says who sent it.**  Anyone in the namespace can send to an
  abstract socket, so the payload is not trusted to say who the sender is.
  With SO_PASSCRED the kernel attaches the sender's pid, uid and gid
  (SCM_CREDENTIALS) to each datagram; an unprivileged process cannot forge
  them.  The listener only reports ``(pid, fields)``: mapping the pid to a
  worker, and ignoring pids that are not workers, is the supervisor's job.
  The pid is the sending process's, so a worker whose *child* sends
  ``READY=1`` shows up under the child's pid.
* **Datagrams, not a stream.**  One message per datagram, no framing, no
  per-worker connection state; one socket serves every worker, and the
  supervisor's event loop reads it with ``loop.add_reader``.

Hostile or broken senders cannot hurt the supervisor: messages longer than
4096 bytes (systemd's limit too) are dropped, malformed lines are skipped,
file descriptors passed with SCM_RIGHTS are closed at once, and an exception
in the callback is logged without stopping the reader.  Closing passed fds at
once is also what sd_notify_barrier(3) expects: a client (``systemd-notify``
does this after every message) sends ``BARRIER=1`` with a pipe and waits until
the receiver has closed it.  The ``BARRIER=1`` message itself still reaches
the callback, like every other key: callers act on the keys they know.
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import re
import secrets
import socket
import struct
from collections.abc import Callable

__all__ = ["ReadinessListener", "parse_notify_message", "MAX_MESSAGE"]

log = logging.getLogger("sockvisor.readiness")

#: Longest datagram accepted (systemd uses PIPE_BUF, 4096, too).
MAX_MESSAGE = 4096

# struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_UCRED = struct.Struct("iII")
# Room for the credentials and for as many fds as one message can carry
# (SCM_MAX_FD = 253), so that every passed fd reaches us and gets closed.
_ANCILLARY_SIZE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(253 * 4)
# A flood of datagrams must not starve the event loop: read at most this many
# per wake-up.  The reader is level-triggered, so the rest are read on the
# next iteration of the loop.
_MAX_PER_WAKEUP = 256

_KEY = re.compile(r"^[A-Za-z0-9_]+$")
_HINT = re.compile(r"[^A-Za-z0-9_.\-]")

Callback = Callable[[int, dict[str, str]], object]


def parse_notify_message(data: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` fields of one sd_notify datagram.

    Lines are separated by ``\\n``; a line without ``=``, with an empty key
    or a key that is not letters, digits and ``_``, or containing NUL, is
    skipped.  Values are decoded as UTF-8 (invalid bytes replaced).  When a
    key repeats, the last value wins.
    """
    fields: dict[str, str] = {}
    for raw in data.split(b"\n"):
        if b"\0" in raw:
            continue
        key, sep, value = raw.partition(b"=")
        if not sep:
            continue
        key_text = key.decode("ascii", "replace")
        if not _KEY.match(key_text):
            continue
        fields[key_text] = value.decode("utf-8", "replace")
    return fields


class ReadinessListener:
    """An abstract-namespace datagram socket that workers sd_notify to.

    ``listener.address`` goes into each worker's environment as
    NOTIFY_SOCKET; ``start(loop, callback)`` calls ``callback(pid, fields)``
    for every message, with the sender's pid as vouched for by the kernel.
    """

    def __init__(self, name_hint: str = "") -> None:
        """Bind a fresh socket.  `name_hint` (e.g. a watcher name) is put in
        the address to make it recognisable in ``ss -xl``; it is sanitised
        and shortened, never required to be unique."""
        hint = _HINT.sub("_", name_hint)[:40]
        prefix = f"sockvisor/{os.getpid()}/" + (f"{hint}/" if hint else "")
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            # Before bind, so that no datagram can arrive without credentials.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            for attempt in range(8):
                name = prefix + secrets.token_hex(8)
                try:
                    sock.bind("\0" + name)
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or attempt == 7:
                        raise
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: Callback | None = None

    @classmethod
    def from_fd(cls, fd: int, address: str) -> "ReadinessListener":
        """The listener an upgraded sockvisor inherited (handover.py): the very
        socket every running worker's $NOTIFY_SOCKET names."""
        listener = cls.__new__(cls)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listener._sock = sock
        listener._name = address[1:] if address.startswith("@") else address
        listener._loop = None
        listener._callback = None
        return listener

    @property
    def address(self) -> str:
        """The NOTIFY_SOCKET value for workers: ``@sockvisor/...``."""
        return "@" + self._name

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("the readiness listener is closed")
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def start(self, loop: asyncio.AbstractEventLoop, callback: Callback) -> None:
        """Read datagrams on `loop`; call ``callback(pid, fields)`` for each."""
        if self._sock is None:
            raise ValueError("the readiness listener is closed")
        if self._loop is not None:
            raise RuntimeError("the readiness listener is already started")
        self._loop = loop
        self._callback = callback
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._loop = None
        self._callback = None
        self._sock.close()
        self._sock = None

    def __enter__(self) -> ReadinessListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReadinessListener {self.address}{' closed' if self.closed else ''}>"

    # ------------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        for _ in range(_MAX_PER_WAKEUP):
            if self._sock is None:          # the callback closed us
                return
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(
                    MAX_MESSAGE, _ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("reading the readiness socket %s: %s", self.address, exc)
                return
            pid = _take_ancillary(ancdata)
            if flags & socket.MSG_TRUNC:
                log.warning("ignoring a notification longer than %d bytes from pid %s",
                            MAX_MESSAGE, pid)
                continue
            if pid is None:
                log.warning("ignoring a notification without sender credentials")
                continue
            fields = parse_notify_message(data)
            if not fields:
                log.debug("ignoring a notification without KEY=VALUE lines from pid %d", pid)
                continue
            try:
                assert self._callback is not None
                self._callback(pid, fields)
            except Exception:
                log.exception("readiness callback failed for pid %d %r", pid, fields)


def _take_ancillary(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's pid from SCM_CREDENTIALS; closes every fd in SCM_RIGHTS."""
    pid = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if len(fds):
                log.debug("closed %d file descriptors sent to the readiness socket", len(fds))
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            pid = _UCRED.unpack_from(payload)[0]
    return pid
