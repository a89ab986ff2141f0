"""`incr`: more workers, started at once."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import (MAX_NUMPROCESSES, Command, get_watcher,
                                             int_property, watcher_argument, whole_number)
from sockvisor.control.protocol import CommandError


class Incr(Command):
    """Add N workers (default 1) to NAME; they are spawned at once.

    sockvisorctl incr NAME [N]

    In a watcher that is stopped or FATAL only the desired count changes.  During
    a backoff the new workers start when the backoff ends.  On the group
    endpoint, up to endpoint_group_max_numprocesses workers.  A watcher with
    `singleton = true` is refused above one worker.
    """
    name = "incr"
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
        if watcher.config.singleton and watcher.numprocesses >= 1:
            raise CommandError(f"{watcher.name} is a singleton (singleton = true): "
                               "it runs exactly one worker")
        # Bounded like numprocesses in the file: {"nb": 10**30} would otherwise
        # fork until the machine runs out, with the event loop stuck in the loop.
        room = MAX_NUMPROCESSES - watcher.numprocesses
        nb = int_property(props, "nb", 1, minimum=1, maximum=room,
                          what="the number of workers to add")
        async with access.scaling(watcher, lambda current: current + nb):
            # Checked again under the watcher's lock: incrs queued behind a running
            # command all saw the same room above.
            # A singleton's limit is one, checked there too: two incrs of a
            # stopped-down singleton must not both pass the check above.
            limit = 1 if watcher.config.singleton else MAX_NUMPROCESSES
            try:
                result = await watcher.incr(nb, limit=limit)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        return {"numprocesses": result["numprocesses"]}

    def format(self, reply):
        return str(reply["numprocesses"])


COMMAND = Incr()
