"""`logs`: the last lines a watcher's workers wrote."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, int_property, watcher_argument


class Logs(Command):
    """The last lines NAME's workers wrote to stdout and stderr, oldest first.

    sockvisorctl logs NAME [-n LINES]

    Only output that passes through sockvisor is kept (`stdout`/`stderr` =
    prefix or file; not inherit or null): the last 50 lines of each stream,
    each cut at 500 characters.
    """
    name = "logs"
    access = "operate"   # operators read what workers print, as on the console

    def add_arguments(self, parser):
        watcher_argument(parser)
        parser.add_argument("-n", "--lines", type=int, default=20, help="how many (max 100)")

    def properties(self, args):
        return {"name": args.name, "lines": args.lines}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        watcher = get_watcher(supervisor, props)
        count = int_property(props, "lines", 20, minimum=0, maximum=100)
        lines = watcher.recent_output()[-count:] if count else []
        captured = [stream for stream, sink in (("stdout", watcher.config.stdout),
                                                ("stderr", watcher.config.stderr))
                    if sink.kind.value in ("prefix", "file")]
        return {"name": watcher.name, "captured": captured,
                "lines": [{"time": round(t, 3), "stream": stream, "pid": pid, "line": text}
                          for t, stream, pid, text in lines]}

    def format(self, reply):
        if not reply["captured"]:
            return (f"{reply['name']}: no output passes through sockvisor "
                    "(stdout/stderr = inherit or null)")
        return "\n".join(f"{line['stream']} [{line['pid']}] {line['line']}"
                         for line in reply["lines"])


COMMAND = Logs()
