"""`decr`: fewer workers, retired at once."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import (Command, get_watcher, int_property,
                                             watcher_argument, whole_number)
from sockvisor.control.protocol import CommandError


class Decr(Command):
    """Retire N workers (default 1) of NAME: not-yet-ready ones first, then the newest.

    sockvisorctl decr NAME [N]

    The retired workers get stop_signal at once; the reply does not wait for
    them to exit.  Retiring more workers than NAME is set to have is an error.
    """
    name = "decr"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser)
        parser.add_argument("nb", nargs="?", type=whole_number(1), default=1, metavar="N",
                            help="how many workers (default 1)")

    def properties(self, args):
        return {"name": args.name, "nb": args.nb}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor.control import access
        watcher = get_watcher(supervisor, props)
        nb = int_property(props, "nb", 1, minimum=1, what="the number of workers to retire")
        # Below zero is a mistake to report, not to round away: the operator
        # meant some other watcher, or some other number.
        if nb > watcher.numprocesses:
            raise CommandError(f"{watcher.name} is set to {watcher.numprocesses} "
                               f"worker{'s' if watcher.numprocesses != 1 else ''}: "
                               f"cannot retire {nb}")
        # To 0 is a stop: on the group endpoint only with the `stop` grant.
        async with access.scaling(watcher, lambda current: max(0, current - nb)):
            result = await watcher.decr(nb)
        return {"numprocesses": result["numprocesses"]}

    def format(self, reply):
        return str(reply["numprocesses"])


COMMAND = Decr()
