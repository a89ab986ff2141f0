"""What every control command is: its name, its CLI arguments, how it runs, how it prints.

A command's class docstring is its user documentation (`sockvisorctl help NAME`).
`add_arguments`/`properties` turn sockvisorctl's argv into the request; `execute`
runs in the supervisor; `format` renders a reply for humans.  Imports of anything
heavy belong inside `execute`, so that `sockvisorctl` starts fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sockvisor.control.protocol import CommandError, ErrNo

if TYPE_CHECKING:
    from sockvisor.control.host import Host
    from sockvisor.watcher import Watcher


class Command:
    name: str = ""
    # Who may run it (control/access.py): "operate" (endpoint_group members too),
    # "owner" (sockvisor's own endpoint only), or a word of endpoint_group_grants
    # (the owner, or the group if the config grants it).  Undeclared: the owner's.
    access: str = "owner"
    # Waits for processes (start, stop, reload...): sockvisorctl allows it longer.
    long_running: bool = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """sockvisorctl's arguments for this command (none by default)."""

    def properties(self, args: argparse.Namespace) -> dict[str, Any]:
        return {}

    def requires(self, props: dict[str, Any]) -> str:
        """What running it with `props` needs (see `access`); checked by the server."""
        return self.access

    def describe(self, props: dict[str, Any]) -> str:
        """The request, for a refusal message."""
        return repr(self.name)

    async def execute(self, supervisor: "Host", props: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def format(self, reply: dict[str, Any]) -> str:
        return "ok"

    def exit_status(self, reply: dict[str, Any]) -> int:
        """sockvisorctl's exit status for a successful reply (see `status`)."""
        return 0

    @classmethod
    def summary(cls) -> str:
        """The docstring's first line: one whole sentence (`sockvisorctl -h`)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def description(cls) -> str:
        """The whole docstring, dedented (`sockvisorctl help NAME`, the man page)."""
        import inspect
        return inspect.cleandoc(cls.__doc__ or "")


class WatcherLifecycleCommand(Command):
    """start / stop / restart: one watcher (NAME) or all of them, each a Watcher method.

    All of them go by Circus's `priority`, as start-up and shut-down do: highest
    first, each priority done before the next; `stop` lowest first."""
    long_running = True
    method = ""
    fatal_is_failure = False   # a start that ends FATAL fails the command
    lowest_priority_first = False

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        import asyncio

        from sockvisor.config import priority_groups
        watchers = ([get_watcher(supervisor, props)] if "name" in props
                    else list(supervisor.watchers.values()))
        groups = priority_groups(watchers, lambda w: w.config)
        if self.lowest_priority_first:
            groups.reverse()
        done: dict[int, Any] = {}
        for group in groups:
            replies = await asyncio.gather(*(getattr(w, self.method)() for w in group))
            done.update(zip(map(id, group), replies))
        results = [done[id(w)] for w in watchers]
        if self.fatal_is_failure:
            raise_if_fatal(results)
        return {"watcher": results[0]} if "name" in props else {"watchers": results}

    def format(self, reply):
        items = [reply["watcher"]] if "watcher" in reply else reply.get("watchers", [])
        return "\n".join(f"{w['name']}: {w['state']}, {w['ready']}/{w['numprocesses']} ready"
                         for w in items)


# ---------------------------------------------------------------- shared helpers

def whole_number(minimum: int | None = None, maximum: int | None = None):
    """An argparse `type` for a count or pid: the strict parser's rule and its
    bounds, so that sockvisorctl says "argument N: must be at least 1" (usage,
    exit 2) before anything is sent."""
    def parse(text: str) -> int:
        from sockvisor import wholenumber
        try:
            return wholenumber.parse(text, "it", minimum, maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("it ")) from None
    parse.__name__ = "whole number"
    return parse


def watcher_argument(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        parser.add_argument("name", nargs="?", metavar="NAME",
                            help="a watcher (all when omitted)")
    else:
        parser.add_argument("name", metavar="NAME", help="a watcher")


def get_watcher(supervisor: "Host", props: dict[str, Any]) -> "Watcher":
    name = props.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError("'name' (a watcher) is required")
    watcher = supervisor.watchers.get(name) or supervisor.watchers.get(name.lower())
    if watcher is None:
        known = ", ".join(sorted(supervisor.watchers)) or "none"
        raise CommandError(f"unknown watcher {name!r} (watchers: {known})")
    return watcher


# The most workers a watcher may have: config.py's bound on `numprocesses`.
MAX_NUMPROCESSES = 100_000


def int_property(props: dict[str, Any], key: str, default: int | None = None,
                 minimum: int | None = None, maximum: int | None = None,
                 what: str | None = None) -> int:
    """A whole-number property, by the one strict parser (sockvisor/wholenumber.py).
    `what` says in errors what the number is ("the number of workers to add"),
    after its key, which is what those who send the protocol themselves (the
    HTTP API, scripts) wrote; sockvisorctl checks its own arguments before
    sending, in the words of its usage line (`whole_number`)."""
    from sockvisor import wholenumber
    value = props.get(key, default)
    what = f"{key!r} ({what})" if what else repr(key)
    if value is None:
        raise CommandError(f"{what} is required")
    try:
        return wholenumber.parse(value, what, minimum, maximum)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def bool_property(props: dict[str, Any], key: str, default: bool) -> bool:
    value = props.get(key, default)
    if not isinstance(value, bool):
        raise CommandError(f"{key!r} must be true or false, got {value!r}")
    return value


def raise_if_fatal(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A start that ended in FATAL is a failed command, not an "ok"."""
    fatal = [s for s in summaries if s.get("state") == "fatal"]
    if fatal:
        raise CommandError("; ".join(f"{s['name']} is FATAL: {s.get('fatal_reason', '')}"
                                     for s in fatal), ErrNo.COMMAND_ERROR)
    return summaries


def duration(seconds: Any) -> str:
    """Seconds for a table, as operators read them: 0.4s, 8.0s, 3m05s, 2h03m,
    4d06h.  Anything not a number ("N/A") is shown as it is."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return str(seconds)
    if seconds < 59.95:   # (59.96 would print as 60.0s)
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)
