"""`set`: change options of a watcher at run time."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher
from sockvisor.control.protocol import CommandError, ErrNo

# Which options need new processes, and which the group endpoint may set, is
# declared once per option in sockvisor/config/options.py (the registry).


def _normalised(options: dict[Any, Any]) -> dict[str, Any]:
    """Option names as the config reads them (case-insensitive on the wire)."""
    return {str(key).lower(): value for key, value in options.items()}


class Set(Command):
    """Set KEY to VALUE (several pairs allowed) on NAME.

    sockvisorctl set NAME KEY VALUE [KEY VALUE...]

    `numprocesses` scales at once; options that change what a worker is (cmd,
    args, env, uid, gid, working_dir, rlimit_*, ...) are applied with a
    zero-downtime rolling reload; the rest (graceful_timeout, ready_timeout,
    stop_signal, operator_signals, ...) apply from now on.  Values are merged into
    the watcher's config as values: env may be given as NAME=VALUE pairs or as an
    object, cmd and args as a string or a list of words; setting cmd alone
    replaces the whole command line, args alone the arguments.  On the group
    endpoint only numprocesses (within its maximum) and reload_batch may be set;
    everything else is the owner's.
    """
    name = "set"
    access = "operate"
    long_running = True

    def add_arguments(self, parser):
        parser.add_argument("name", help="watcher")
        parser.add_argument("pairs", nargs="+", metavar="KEY VALUE")

    def properties(self, args):
        if len(args.pairs) % 2:
            raise SystemExit("sockvisorctl set: expected KEY VALUE pairs")
        pairs = args.pairs
        return {"name": args.name,
                "options": {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}}

    def requires(self, props: dict[str, Any]) -> str:
        from sockvisor.control.access import OPERATOR_OPTIONS, OWNER
        options = props.get("options")
        # The keys as `execute` will read them: checking the raw keys let
        # {"CMD": ...} through the group endpoint.
        if isinstance(options, dict) and set(_normalised(options)) - OPERATOR_OPTIONS:
            return OWNER
        return self.access

    def describe(self, props: dict[str, Any]) -> str:
        from sockvisor.control.access import OPERATOR_OPTIONS
        options = props.get("options")
        denied = sorted(set(_normalised(options)) - OPERATOR_OPTIONS
                        if isinstance(options, dict) else ())
        return f"setting {', '.join(denied)[:200]}" if denied else repr(self.name)

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor import preflight
        from sockvisor.config import Change, ConfigError, changes, watcher_option, with_options
        from sockvisor.control import access
        from sockvisor.watcher import ReloadError
        watcher = get_watcher(supervisor, props)
        options = props.get("options")
        if not isinstance(options, dict) or not options:
            raise CommandError("'options' must be a non-empty object of KEY: VALUE")
        options = _normalised(options)
        if "hooks" in options:
            raise CommandError("hooks are not supported")
        sockets = {name: s.config for name, s in supervisor.sockets.items()}
        try:
            new_config = with_options(watcher.config, options, sockets)
            # How each option applies is the registry's (config/options.py).
            kinds = changes({watcher_option(key) or key for key in options})
            if Change.RESTART in kinds:   # what runs, or as whom: can it?
                await preflight.require([new_config], "<control>", supervisor.reaper)
        except ConfigError as exc:
            raise CommandError(f"{exc.key or ''}: {exc.message}".lstrip(": ")) from None
        if new_config.singleton and watcher.numprocesses > 1 and Change.SCALE not in kinds:
            # The config's count is 1, but `incr` scaled the watcher since.
            raise CommandError(f"singleton: {watcher.name} runs {watcher.numprocesses} "
                               "workers; scale it to 1 first")
        if Change.SCALE in kinds:
            async with access.scaling(watcher, lambda _: new_config.numprocesses):
                await watcher.set_numprocesses(new_config.numprocesses)
        try:
            if Change.RESTART in kinds:
                return {"watcher": await watcher.reload(new_config)}
            await watcher.replace_config(new_config)
        except ReloadError as exc:
            raise CommandError(str(exc), ErrNo.COMMAND_ERROR) from None
        return {"watcher": watcher.summary()}

COMMAND = Set()
