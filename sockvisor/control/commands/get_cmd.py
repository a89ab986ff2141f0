"""`get`: the value of some options of a watcher."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher
from sockvisor.control.commands.options_cmd import watcher_options
from sockvisor.control.protocol import CommandError


class Get(Command):
    """Print the value of each KEY of NAME (see `options` for the keys).

    sockvisorctl get NAME KEY [KEY...]
    """
    name = "get"
    access = "operate"

    def add_arguments(self, parser):
        parser.add_argument("name", help="watcher")
        parser.add_argument("keys", nargs="+", help="option names")

    def properties(self, args):
        return {"name": args.name, "keys": args.keys}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        watcher = get_watcher(supervisor, props)
        keys = props.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise CommandError("'keys' must be a non-empty list of option names")
        from sockvisor.config import watcher_option
        options = watcher_options(watcher)
        # A Circus spelling (user, max_retry, ...) answers for its option.
        canonical = {key: watcher_option(key) or key for key in keys}
        unknown = [key for key in keys if canonical[key] not in options]
        if unknown:
            raise CommandError(f"unknown option(s): {', '.join(unknown)}")
        return {"options": {key: options[canonical[key]] for key in keys}}

    def format(self, reply):
        return "\n".join(f"{key}: {value}" for key, value in reply["options"].items())


COMMAND = Get()
