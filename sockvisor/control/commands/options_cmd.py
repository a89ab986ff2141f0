"""`options`: a watcher's effective options (what `get` and `set` work on)."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument


def watcher_options(watcher) -> dict[str, Any]:
    """The options `get`, `set` and `options` talk about, as JSON-friendly values:
    every option the registry (config/options.py) keeps, rendered as it declares."""
    from sockvisor.config import shown_options
    return shown_options(watcher)


class Options(Command):
    """Print every option of NAME with its current value.

    sockvisorctl options NAME
    """
    name = "options"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser)

    def properties(self, args):
        return {"name": args.name}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        return {"options": watcher_options(get_watcher(supervisor, props))}

    def format(self, reply):
        return "\n".join(f"{key}: {value}" for key, value in reply["options"].items())


COMMAND = Options()
