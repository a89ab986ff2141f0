"""`add`: a new watcher at run time."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, bool_property
from sockvisor.control.protocol import CommandError


class Add(Command):
    """Add watcher NAME running CMD; --start starts it at once.

    sockvisorctl add [--start] NAME CMD...

    Everything after NAME is the command line, options included (`add web sh -c
    'exec x' --json` runs `sh -c 'exec x' --json`): sockvisorctl's own options go
    before NAME.

    Only on sockvisor's owner endpoint: it decides what runs, and as whom.
    Options (numprocesses, sockets, ...) may follow in the request's `options`;
    they are validated like the INI file (text), or taken as values (env as an
    object, args as a list of words: see `set`).  Not written to the config file: the
    next reloadconfig removes a watcher the file does not have.
    """
    name = "add"
    access = "owner"   # decides what runs, and as whom: never granted
    long_running = True

    def add_arguments(self, parser):
        import argparse
        parser.add_argument("--start", action="store_true", help="start it at once")
        parser.add_argument("name", help="watcher")
        parser.add_argument("cmd", nargs=argparse.REMAINDER, help="command line")

    def properties(self, args):
        import shlex
        if not args.cmd:
            raise ValueError("add: CMD is required after NAME")
        return {"name": args.name, "cmd": shlex.join(args.cmd), "start": args.start}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor import preflight
        from sockvisor.config import ConfigError, watcher_from_options
        name = props.get("name")
        cmd = props.get("cmd")
        if not isinstance(name, str) or not name:
            raise CommandError("'name' is required")
        if not isinstance(cmd, str) or not cmd.strip():
            raise CommandError("'cmd' is required")
        if name in supervisor.watchers:
            raise CommandError(f"watcher {name!r} exists already")
        options = props.get("options") or {}
        if not isinstance(options, dict):
            raise CommandError("'options' must be an object")
        options = {**options, "cmd": cmd}
        if "args" in props and "args" not in options:
            options["args"] = props["args"]
        sockets = {n: s.config for n, s in supervisor.sockets.items()}
        try:
            watcher_config = watcher_from_options(supervisor.config.path, name, options,
                                                  sockets)
            # As the worker's user: can it run at all?
            await preflight.require([watcher_config], "<control>", supervisor.reaper)
        except ConfigError as exc:
            raise CommandError(f"{exc.key or ''}: {exc.message}".lstrip(": ")) from None
        watcher = supervisor.add_watcher(watcher_config)
        if bool_property(props, "start", False):
            await watcher.start()
        return {"watcher": watcher.summary()}


COMMAND = Add()
