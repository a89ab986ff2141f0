"""`numprocesses`: how many workers a watcher runs (or all watchers together)."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument


class NumProcesses(Command):
    """Print how many workers NAME (or every watcher together) should have.

    That is the number `incr`/`decr` set; `status` shows how many run and are ready.

    sockvisorctl numprocesses [NAME]
    """
    name = "numprocesses"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" in props:
            watcher = get_watcher(supervisor, props)
            return {"numprocesses": watcher.numprocesses, "watcher_name": watcher.name}
        return {"numprocesses": sum(w.numprocesses for w in supervisor.watchers.values())}

    def format(self, reply):
        return str(reply["numprocesses"])


COMMAND = NumProcesses()
