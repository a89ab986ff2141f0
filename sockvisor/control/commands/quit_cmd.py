"""`quit`: stop every watcher and exit, as SIGTERM does."""

from __future__ import annotations

from sockvisor.control.commands.base import Command


class Quit(Command):
    """Stop every watcher gracefully and exit sockvisor (same as SIGTERM).

    sockvisorctl quit

    The reply is sent before the stop begins.
    """
    name = "quit"
    access = "quit"

    async def execute(self, supervisor, props):
        import asyncio   # here, not at the top: sockvisorctl never needs it
        # Let the reply go out first.
        asyncio.get_running_loop().call_soon(supervisor.request_stop)
        return {}


COMMAND = Quit()
