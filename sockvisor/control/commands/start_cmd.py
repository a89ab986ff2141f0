"""`start`: start a watcher (or all), waiting until its workers are ready."""

from __future__ import annotations

from sockvisor.control.commands.base import WatcherLifecycleCommand


class Start(WatcherLifecycleCommand):
    """Start NAME (or every watcher) and wait until its workers are ready.

    sockvisorctl start [NAME]

    A FATAL watcher starts afresh (its failure count is reset).  Starting an
    active watcher does nothing.
    """
    name = "start"
    access = "operate"
    method = "start"
    fatal_is_failure = True


COMMAND = Start()
