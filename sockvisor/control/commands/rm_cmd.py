"""`rm`: stop and remove a watcher."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher


class Rm(Command):
    """Stop NAME and remove it.

    sockvisorctl rm NAME

    Its sockets stay open (other watchers or a later `add` may use them).
    """
    name = "rm"
    access = "rm"
    long_running = True

    def add_arguments(self, parser):
        parser.add_argument("name", help="watcher")

    def properties(self, args):
        return {"name": args.name}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        watcher = get_watcher(supervisor, props)
        # Circus's `nostop` would leave processes nobody supervises: not offered.
        await supervisor.remove_watcher(watcher.name)
        return {"removed": watcher.name}


COMMAND = Rm()
