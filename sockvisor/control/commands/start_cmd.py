"""`start`: start a watcher (or all), waiting until its workers are ready."""

from __future__ import annotations

import asyncio
from typing import Any

from sockvisor.control.commands.base import (Command, get_watcher, raise_if_fatal,
                                             watcher_argument)


class Start(Command):
    """Start NAME (or every watcher) and wait until its workers are ready.

    sockvisorctl start [NAME]

    A FATAL watcher starts afresh (its failure count is reset).  Starting an
    active watcher does nothing.
    """
    name = "start"
    long_running = True

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" in props:
            return {"watcher": raise_if_fatal([await get_watcher(supervisor, props).start()])[0]}
        results = await asyncio.gather(*(w.start() for w in supervisor.watchers.values()))
        return {"watchers": raise_if_fatal(list(results))}


COMMAND = Start()
