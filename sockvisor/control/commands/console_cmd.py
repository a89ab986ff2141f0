"""`console`: where the web console listens."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command
from sockvisor.control.protocol import CommandError


def console_of(supervisor) -> Any:
    console = getattr(supervisor, "http", None)
    if console is None:
        raise CommandError("the web console is off: set `http = 127.0.0.1:9180` in "
                           "[sockvisor]")
    return console


class Console(Command):
    """Print the URL of the web console, HTTP API and /metrics (`http` in [sockvisor]).

    sockvisorctl console

    Reading is open to whoever can reach a loopback or unix address; actions
    (reload, restart, incr, ...) need the bearer token `console-token` prints,
    as does everything on a non-loopback address.  The token is never part of
    the URL: paste it into the page, or send `Authorization: Bearer TOKEN`.
    """
    name = "console"
    access = "operate"

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        console = console_of(supervisor)
        return {"url": console.url, "address": console.address,
                "token_needed_to_read": console.token_needed_to_read}

    def format(self, reply):
        return reply["url"]


COMMAND = Console()
