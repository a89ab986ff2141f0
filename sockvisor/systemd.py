"""Talking to the service manager that started sockvisor (usually systemd).

This module owns the three conversations sockvisor has with whatever
supervises *it*:

* **sd_notify** -- :class:`Notifier` sends ``READY=1``, ``RELOADING=1``,
  ``STOPPING=1``, ``STATUS=``, ``WATCHDOG=1``, ... as single datagrams to
  ``$NOTIFY_SOCKET``, and hands listening sockets to the manager's file
  descriptor store (``FDSTORE=1``) so they survive a supervisor restart.
  https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html
* **the watchdog** -- :func:`watchdog_interval` says how often ``WATCHDOG=1``
  is due (half of ``$WATCHDOG_USEC``), and :func:`fdstore_allowed` whether the
  manager will keep fds for us.
  https://www.freedesktop.org/software/systemd/man/latest/sd_watchdog_enabled.html
* **socket activation** -- :func:`listen_fds` adopts the sockets the manager
  passed as fds 3, 4, ... (``$LISTEN_FDS``, ``$LISTEN_FDNAMES``,
  ``$LISTEN_PID``).
  https://www.freedesktop.org/software/systemd/man/latest/sd_listen_fds.html

Everything here is stdlib only (no libsystemd) and none of it is specific to
systemd: any manager that speaks these protocols works, and without one
(``$NOTIFY_SOCKET`` unset) every call is a cheap no-op.

Notifications must never take the supervisor down: a manager that went away,
refuses, or whose queue is full costs a warning in the log (once per run of
failures), never an exception in the caller.  The socket is non-blocking
because sockvisor is an asyncio program; a message that would block is dropped
and logged like any other failure.  The notifier is meant to be used from the
event-loop thread and is not thread-safe.

The other direction -- workers sending ``READY=1`` to sockvisor -- lives in
:mod:`sockvisor.readiness`.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Mapping, MutableMapping

__all__ = [
    "Notifier",
    "fdstore_allowed",
    "valid_fdname",
    "listen_fds",
    "watchdog_interval",
    "LISTEN_FDS_START",
]

log = logging.getLogger("sockvisor.systemd")

#: The first fd a service manager passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

# Variables of the socket-activation protocol that must not leak into workers
# (LISTEN_PIDFDID is systemd >= 256's companion of LISTEN_PID).
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES")

_KEY = re.compile(r"^[A-Z0-9_]+$")


def valid_fdname(name: str) -> bool:
    """systemd's fdname_is_valid(): 1-255 printable ASCII characters, no ':'."""
    return (0 < len(name) <= 255
            and all(" " <= ch <= "~" and ch != ":" for ch in name))


def _socket_address(value: str) -> str | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value, or None if unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``.

    Build one with :meth:`from_environ`.  When the variable is unset (or names
    an address family we do not speak, such as systemd's ``vsock:``), the
    notifier is disabled: :attr:`enabled` is False and every method returns
    False without doing anything.

    Every sending method returns True when the datagram was handed to the
    kernel, False otherwise.  Callers normally ignore the result.
    """

    def __init__(self, address: str | None) -> None:
        """`address` is a $NOTIFY_SOCKET value (``/path`` or ``@abstract``);
        None gives a disabled notifier."""
        self._address = address
        self._sockaddr = _socket_address(address) if address else None
        if address and self._sockaddr is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; "
                        "service manager notifications are disabled", address)
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ, *,
                     unset: bool = False) -> Notifier:
        """The notifier for ``environ["NOTIFY_SOCKET"]`` (disabled when unset).

        With `unset`, NOTIFY_SOCKET is removed from `environ` so that children
        do not inherit the manager's socket.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        if unset:
            environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    # ------------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        return self._sockaddr is not None

    @property
    def address(self) -> str | None:
        """The $NOTIFY_SOCKET value this notifier sends to."""
        return self._address

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"<Notifier {self._address or 'disabled'}>"

    # ------------------------------------------------------------------ messages

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines, in the order given.

        ``send(READY=1, STATUS="serving")``.  Keys are upper case letters,
        digits and ``_``; a value must not contain a newline; at least one
        field.  Breaking these rules is a programming error (ValueError), not
        a delivery failure.
        """
        return self._send(self._encode(fields))

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=_one_line(status))

    def reloading(self) -> bool:
        """A reload starts; follow it with :meth:`ready` when done.

        MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match the
        READY=1 to this reload; older managers ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status`` (newlines flattened)."""
        return self.send(STATUS=_one_line(text))

    def mainpid(self, pid: int) -> bool:
        return self.send(MAINPID=int(pid))

    def watchdog(self) -> bool:
        """Keep-alive; due every :func:`watchdog_interval` seconds."""
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the current start/stop/reload times out."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def fdstore(self, fds: list[int], name: str) -> bool:
        """Hand duplicates of `fds` to the manager's fd store under `name`.

        The manager keeps them across a restart of sockvisor and passes them
        back through LISTEN_FDS/LISTEN_FDNAMES.  Only useful when
        :func:`fdstore_allowed` (FileDescriptorStoreMax= > 0); otherwise the
        manager closes them.  An invalid name (see sd_pid_notify_with_fds(3))
        or an empty fd list is a ValueError.
        """
        if not valid_fdname(name):
            raise ValueError(f"invalid fd store name {name!r}: 1-255 printable "
                             "ASCII characters without ':'")
        if not fds:
            raise ValueError("fdstore() needs at least one fd")
        payload = self._encode({"FDSTORE": 1, "FDNAME": name})
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        return self._send(payload, ancillary)

    def fdstore_remove(self, name: str) -> bool:
        """Drop the fds stored under `name` from the manager's fd store."""
        if not valid_fdname(name):
            raise ValueError(f"invalid fd store name {name!r}")
        return self.send(FDSTOREREMOVE=1, FDNAME=name)

    # ------------------------------------------------------------------ delivery

    @staticmethod
    def _encode(fields: Mapping[str, str | int]) -> bytes:
        if not fields:
            raise ValueError("an sd_notify message needs at least one field")
        lines = []
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ValueError(f"invalid sd_notify key {key!r}")
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify value for {key} contains a newline")
            lines.append(f"{key}={text}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(self._sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    def _send(self, payload: bytes, ancillary: list | None = None) -> bool:
        if self._sockaddr is None:
            return False
        # A socket connected earlier may point at a manager that has since
        # re-created its socket (e.g. after daemon-reexec): on a failure that
        # is not "queue full", reconnect once and retry.
        for attempt in (1, 2):
            reused = self._sock is not None
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendmsg([payload], ancillary or [], socket.MSG_NOSIGNAL)
            except OSError as exc:
                self.close()
                if attempt == 1 and reused and exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                self._delivery_failed(payload, exc)
                return False
            else:
                if self._failing:
                    self._failing = False
                    log.info("notifications to the service manager at %s are delivered again",
                             self._address)
                return True
        return False  # pragma: no cover - the loop always returns

    def _delivery_failed(self, payload: bytes, exc: OSError) -> None:
        summary = payload.split(b"\n", 1)[0].decode("utf-8", "replace")
        if self._failing:
            log.debug("cannot notify the service manager at %s (%s...): %s",
                      self._address, summary, exc)
            return
        self._failing = True
        log.warning("cannot notify the service manager at %s (%s...): %s; further "
                    "failures are logged at debug level until a message gets through",
                    self._address, summary, exc)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


# --------------------------------------------------------------------------- environment

def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` messages, or None if no watchdog is armed.

    Half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends, and only
    when $WATCHDOG_PID is unset or is our own pid (otherwise the watchdog
    belongs to an ancestor that let the variables leak).
    """
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a pid", raw_pid)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("ignoring the watchdog: WATCHDOG_USEC=%r is not a positive integer",
                    raw_usec)
        return None
    return usec / 2 / 1_000_000


def fdstore_allowed(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the manager keeps fds for us: $FDSTORE is a positive integer.

    systemd sets $FDSTORE (to FileDescriptorStoreMax=) since version 254; with
    older managers this is False even when the store is configured, which is
    why ``[sockvisor] fdstore = true`` can say so instead.
    """
    try:
        return int(environ.get("FDSTORE", "")) > 0
    except ValueError:
        return False


def listen_fds(environ: MutableMapping[str, str] = os.environ,
               unset: bool = True) -> list[tuple[str, int]]:
    """The sockets passed by the service manager, as ``[(name, fd), ...]``.

    Implements sd_listen_fds_with_names(3): the fds are 3 .. 3+$LISTEN_FDS-1
    and are ours only when $LISTEN_PID is our pid.  Names come from the
    colon-separated $LISTEN_FDNAMES; a missing or empty name is ``"unknown"``.
    Each fd is made close-on-exec, so workers only ever get the duplicates
    sockvisor hands them on purpose.

    With `unset` (the default, as in libsystemd) the LISTEN_* variables are
    removed from `environ` whatever their content, so no child inherits them.
    Malformed values give an empty list and a warning.
    """
    try:
        return _listen_fds(environ)
    finally:
        if unset:
            for name in _LISTEN_VARIABLES:
                environ.pop(name, None)


def _listen_fds(environ: Mapping[str, str]) -> list[tuple[str, int]]:
    raw_pid = environ.get("LISTEN_PID")
    raw_fds = environ.get("LISTEN_FDS")
    if not raw_pid or raw_fds is None:
        return []
    try:
        pid = int(raw_pid)
    except ValueError:
        log.warning("ignoring socket activation: LISTEN_PID=%r is not a pid", raw_pid)
        return []
    if pid != os.getpid():
        log.debug("LISTEN_PID=%d is not our pid %d: the passed fds are not ours",
                  pid, os.getpid())
        return []
    try:
        count = int(raw_fds)
    except ValueError:
        count = -1
    if count < 0:
        log.warning("ignoring socket activation: LISTEN_FDS=%r is not a count", raw_fds)
        return []
    if count == 0:
        return []

    raw_names = environ.get("LISTEN_FDNAMES")
    names = raw_names.split(":") if raw_names else []
    if raw_names and len(names) != count:
        log.warning("LISTEN_FDNAMES has %d names for LISTEN_FDS=%d; the fds without a "
                    "name are called 'unknown'", len(names), count)
    names = [name or "unknown" for name in names[:count]]
    names += ["unknown"] * (count - len(names))

    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError as exc:
            log.warning("ignoring socket activation: LISTEN_FDS=%d but fd %d is "
                        "unusable: %s", count, fd, exc)
            return []
    return list(zip(names, fds))
