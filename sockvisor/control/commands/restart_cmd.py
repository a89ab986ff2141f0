"""`restart`: stop then start a watcher (or all).  Not zero-downtime: see `reload`."""

from __future__ import annotations

from sockvisor.control.commands.base import WatcherLifecycleCommand


class Restart(WatcherLifecycleCommand):
    """Stop every worker of NAME (or of every watcher), then start again.

    sockvisorctl restart [NAME]

    Connections queue on the held socket while no worker runs; use `reload` to
    replace workers without a gap.
    """
    name = "restart"
    access = "operate"
    method = "restart"
    fatal_is_failure = True


COMMAND = Restart()
