"""`stop`: stop a watcher (or all) gracefully; sockets stay open."""

from __future__ import annotations

import asyncio
from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument


class Stop(Command):
    """Stop NAME (or every watcher): stop_signal, graceful_timeout, then SIGKILL.

    sockvisorctl stop [NAME]

    The listening sockets stay open, so clients queue until the watcher starts
    again.  Queued behind a running command on the same watcher.
    """
    name = "stop"
    long_running = True

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" in props:
            return {"watcher": await get_watcher(supervisor, props).stop()}
        results = await asyncio.gather(*(w.stop() for w in supervisor.watchers.values()))
        return {"watchers": list(results)}


COMMAND = Stop()
