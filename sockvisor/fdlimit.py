"""sockvisor's own open-files limit, and the one its workers get back.

Every worker's stdout and stderr are pipes sockvisor reads (output.py): two fds
per worker in sockvisor, on top of its sockets and control channel.  The usual
soft limit (1024) would stop a supervisor of a few hundred workers with EMFILE.

systemd's advice (systemd.exec(5), LimitNOFILE=): a program that does not use
select() raises its own soft RLIMIT_NOFILE to the hard limit when it starts,
and hands the soft limit it was given back to the programs it starts, because
select() cannot watch an fd above 1023 (FD_SETSIZE) and programs that use it
break when a high soft limit lets them open one.  sockvisor waits with epoll
(asyncio) and poll() only, so it raises its own; a worker gets the soft limit
sockvisor was started with (and the hard limit unchanged) unless its watcher
sets `rlimit_nofile`.

Across an upgrade (upgrade.py) the exec'd process starts with the raised limit
already, so the soft limit to give back travels in the state (`started_with`,
`resume`).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("sockvisor")

_started_with: int | None = None   # sockvisor's soft limit before `raise_own`


def raise_own() -> None:
    """At start: the soft limit up to the hard one (a failure is only a warning:
    sockvisor runs, with fewer workers possible)."""
    global _started_with
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s "
                    "(each worker takes 2 fds for its output)", soft, hard, exc)
        return
    _started_with = soft
    log.info("open-files limit raised from %d to %d; workers get %d", soft, hard, soft)


def started_with() -> int | None:
    """The soft limit workers get back (None: their own, unchanged), for the
    upgrade's state."""
    return _started_with


def resume(soft: int | None) -> None:
    """After an upgrade's exec: the soft limit the first process was started with
    (`raise_own` here found it raised already)."""
    global _started_with
    if soft is not None:
        _started_with = soft


def give_back() -> None:
    """In a worker, between fork and exec (only os-level calls): the soft limit
    sockvisor was started with.  After the fds are in place: a dup above the
    lower limit would fail."""
    if _started_with is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_started_with, hard))
