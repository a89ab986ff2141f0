"""`numwatchers`: how many watchers there are."""

from __future__ import annotations

from sockvisor.control.commands.base import Command


class NumWatchers(Command):
    """Print the number of watchers.

    sockvisorctl numwatchers
    """
    name = "numwatchers"
    access = "operate"

    async def execute(self, supervisor, props):
        return {"numwatchers": len(supervisor.watchers)}

    def format(self, reply):
        return str(reply["numwatchers"])


COMMAND = NumWatchers()
