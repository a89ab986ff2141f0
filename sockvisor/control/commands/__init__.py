"""The command registry: one module per command, each holding one `Command` class.

`load_commands()` imports them all (cheap: command modules import nothing heavy
at module level), so the server dispatches by name and sockvisorctl builds its
subcommands from the same table.
"""

from __future__ import annotations

import importlib

from sockvisor.control.commands.base import Command

COMMAND_MODULES = (
    "list", "status", "numprocesses", "numwatchers", "incr", "decr", "start", "stop",
    "restart", "reload", "reloadconfig", "signal", "listsockets", "stats", "dstats",
    "options", "get", "set", "quit", "add", "rm", "logs", "console", "console_token", "upgrade",
)

_registry: dict[str, Command] | None = None


def load_commands() -> dict[str, Command]:
    global _registry
    if _registry is None:
        registry: dict[str, Command] = {}
        for module_name in COMMAND_MODULES:
            module = importlib.import_module(f"sockvisor.control.commands.{module_name}_cmd")
            command: Command = module.COMMAND
            registry[command.name] = command
        _registry = registry
    return _registry
