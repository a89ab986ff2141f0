"""`stop`: stop a watcher (or all) gracefully; sockets stay open."""

from __future__ import annotations

from sockvisor.control.commands.base import WatcherLifecycleCommand


class Stop(WatcherLifecycleCommand):
    """Stop NAME (or every watcher): stop_signal, graceful_timeout, then SIGKILL.

    sockvisorctl stop [NAME]

    The listening sockets stay open, so clients queue until the watcher starts
    again.  Queued behind a running command on the same watcher.
    """
    name = "stop"
    access = "stop"
    method = "stop"
    lowest_priority_first = True


COMMAND = Stop()
