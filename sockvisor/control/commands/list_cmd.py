"""`list`: the watchers, or the pids of one watcher."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument


class List(Command):
    """List the watchers, or with NAME the pids of that watcher's workers.

    sockvisorctl list [NAME]
    """
    name = "list"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" in props:
            watcher = get_watcher(supervisor, props)
            return {"pids": sorted(w.pid for w in watcher.workers.values())}
        return {"watchers": sorted(supervisor.watchers)}

    def format(self, reply):
        if "pids" in reply:
            return ",".join(str(pid) for pid in reply["pids"])
        return ",".join(reply.get("watchers", []))


COMMAND = List()
