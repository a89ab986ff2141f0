"""Which sockvisor is behind an ipc endpoint, and which ones run on this machine.

`listener_pid` asks the kernel (SO_PEERCRED on a unix-socket connection: the
credentials the listener had when it called listen) rather than a pidfile,
which a killed sockvisor would leave behind and which a worker could rewrite.
A second `sockvisor start` of a running config uses it to say "already running
(pid N)"; sockvisorctl uses `running` to find the one sockvisor there is when
it is given no endpoint.  Light on purpose: sockvisorctl imports it.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from sockvisor import paths


class Running(NamedTuple):
    endpoint: str   # the one this user may use: the owner endpoint if writable
    pid: int | None


def listener_pid(path: str) -> int | None:
    """The pid of whoever listens on the unix socket `path`; None if nobody
    does (no file, a stale one) or we may not connect."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid
    except OSError:
        return None
    finally:
        probe.close()


def running(bases: list[str]) -> list[Running]:
    """The sockvisors with a default endpoint (paths.py: BASE/NAME-HASH/control)
    under `bases` that someone listens on and that we may reach, sorted."""
    found = []
    for base in bases:
        try:
            names = sorted(os.listdir(base))
        except OSError:   # none there, or not ours to list
            continue
        for name in names:
            directory = os.path.join(base, name)
            if paths.unsafe_place(directory):
                continue   # another user could have put a fake sockvisor there
            admin, control = f"{directory}/admin", f"{directory}/control"
            for path in (admin, control):
                if not os.access(path, os.W_OK):
                    continue
                pid = listener_pid(path)
                if pid is not None:
                    found.append(Running(f"ipc://{path}", pid))
                    break
    return found


def describe_pid(pid: int | None) -> str:
    """"pid N: sockvisor start conf.ini" as far as /proc tells us."""
    if pid is None:
        return "pid unknown"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    # python3 -m sockvisor start x.ini, or the console script: from the verb on.
    words = [os.fsdecode(word) for word in argv]
    if "start" in words:
        words = ["sockvisor"] + words[words.index("start"):]
    return f"pid {pid}: {' '.join(words)}"
