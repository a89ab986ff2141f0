"""`restart`: stop then start a watcher (or all).  Not zero-downtime: see `reload`."""

from __future__ import annotations

import asyncio
from typing import Any

from sockvisor.control.commands.base import (Command, get_watcher, raise_if_fatal,
                                             watcher_argument)


class Restart(Command):
    """Stop every worker of NAME (or of every watcher), then start again.

    sockvisorctl restart [NAME]

    Connections queue on the held socket while no worker runs; use `reload` to
    replace workers without a gap.
    """
    name = "restart"
    long_running = True

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" in props:
            return {"watcher": raise_if_fatal([await get_watcher(supervisor, props).restart()])[0]}
        results = await asyncio.gather(*(w.restart() for w in supervisor.watchers.values()))
        return {"watchers": raise_if_fatal(list(results))}


COMMAND = Restart()
