"""`console-token`: the bearer token the web console's actions need."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command
from sockvisor.control.commands.console_cmd import console_of


class ConsoleToken(Command):
    """Print the web console's bearer token (owner endpoint only).

    sockvisorctl console-token

    Made afresh at each start (0600, in sockvisor's own runtime directory)
    unless `http_token_file` names the operator's own.  Send it as
    `Authorization: Bearer TOKEN`, or paste it into the console page; it is
    never accepted in a URL or a cookie.
    """
    name = "console-token"
    # Whoever holds the token may reload/stop/signal over HTTP: a group operator
    # on the shared endpoint may do that here already, but the token also works
    # from wherever the console is reachable, so only the owner gets it.
    access = "owner"

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        return {"token": console_of(supervisor).token}

    def format(self, reply):
        return reply["token"]


COMMAND = ConsoleToken()
