"""`logs`: the last lines a watcher's workers wrote, and following them live.

Following is a bounded long-poll over the control channel, not a subscription
to the PUB events endpoint, because:
  * who may read a worker's output is decided per command (access.py: `logs` is
    "operate"); the events endpoint has no such check, and publishing every
    line there would show it to every subscriber and cost sockvisor a copy of
    each line for each of them even when nobody follows;
  * a PUB socket drops silently when a subscriber is slow; the ring's sequence
    numbers let a follower say exactly how many lines it missed;
  * each request waits at most MAX_WAIT seconds and holds nothing but a timer,
    so a follower costs the supervisor one idle task, within the channel's
    per-peer and per-endpoint bounds (control/server.py), like any command.
    While it waits it holds one of its endpoint's in-flight places, as a
    running `reload` does: many followers on the group endpoint make the
    group's other requests wait their turn (back-pressure, not refusal); the
    owner's endpoint has places of its own.
"""

from __future__ import annotations

import sys
from typing import Any

from sockvisor.control.commands.base import (Command, get_watcher, int_property,
                                             watcher_argument, whole_number)

MAX_LINES = 100   # two streams of output.RECENT_LINES each
MAX_WAIT = 10     # seconds one follow request may wait for new lines


class Logs(Command):
    """Show the last lines a watcher's workers wrote, or follow them live.

    sockvisorctl logs NAME [-n LINES] [--pid PID] [-f]

    Every worker's output passes through sockvisor, whatever `stdout`/`stderr`
    say (inherit, null, prefix or file): the last 50 lines of each stream are
    kept, each cut at 500 characters, whatever happened to the watcher's
    settings since (set, reload, reloadconfig).  -f prints new lines as they come until
    interrupted or sockvisor stops; when more lines came between two looks
    than sockvisor keeps, it says how many were missed.
    """
    name = "logs"
    access = "operate"   # operators read what workers print, as on the console

    def add_arguments(self, parser):
        watcher_argument(parser)
        parser.add_argument("-n", "--lines", type=whole_number(0, MAX_LINES), default=20,
                            help=f"how many lines to show first (at most {MAX_LINES})")
        parser.add_argument("--pid", type=whole_number(1), help="only the lines of this worker")
        parser.add_argument("-f", "--follow", action="store_true",
                            help="keep printing new lines as they come")

    def properties(self, args):
        props: dict[str, Any] = {"name": args.name, "lines": args.lines}
        if args.pid is not None:
            props["pid"] = args.pid
        return props

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        watcher = get_watcher(supervisor, props)
        count = int_property(props, "lines", 20, minimum=0, maximum=MAX_LINES,
                             what="the number of lines")
        pid = int_property(props, "pid", minimum=1, what="the pid") if "pid" in props else None
        after = int_property(props, "after", 0, minimum=0,
                             what="the line number to follow from") if "after" in props else None
        ring = watcher.output
        stopping = False
        if after is not None:
            wait = int_property(props, "wait", 0, minimum=0, maximum=MAX_WAIT,
                                what="the time to wait")
            stopping = await _wait_for_lines(supervisor, ring, after, wait)
            lines = ring.lines(after, pid)
        else:
            lines = ring.lines(0, pid)[-count:] if count else []
        # "captured": the streams whose lines are kept -- every one now (a
        # field of the HTTP API, kept for its clients).
        reply = {"name": watcher.name, "captured": list(ring.STREAMS), "seq": ring.seq,
                 "lines": [{"seq": seq, "time": round(t, 3), "stream": stream, "pid": who,
                            "line": text} for seq, t, stream, who, text in lines]}
        if stopping:
            reply["stopping"] = True
        return reply

    def format(self, reply):
        return "\n".join(format_line(line) for line in reply["lines"])

    def follow(self, client, props: dict[str, Any], reply: dict[str, Any],
               timeout: float, as_json: bool = False) -> int:
        """sockvisorctl's side of -f: ask for what came after the last line seen,
        again and again, each request waiting up to MAX_WAIT seconds.  With
        --json, each new line is a JSON object of its own (JSON lines)."""
        import json
        from sockvisor.control.client import Unreachable
        after = reply.get("seq", 0)
        try:
            while not reply.get("stopping"):
                reply = client.call(self.name, {**props, "after": after, "wait": MAX_WAIT},
                                    timeout=MAX_WAIT + timeout)
                if reply.get("status") == "error":
                    if str(reply.get("reason", "")).startswith("cancelled: sockvisor is"):
                        break   # the request was in hand when sockvisor closed: it stops
                    print(f"sockvisorctl logs: {reply.get('reason', 'failed')}",
                          file=sys.stderr)
                    return 1
                lines = reply.get("lines", [])
                missed = reply.get("seq", after) - after - len(lines)
                if missed > 0 and "pid" not in props:   # (another pid's are not missed)
                    print(f"... {missed} lines missed ...", flush=True)
                for line in lines:
                    print(json.dumps(line) if as_json else format_line(line), flush=True)
                after = max(after, reply.get("seq", after))
        except Unreachable as exc:
            print(f"sockvisorctl logs: {exc}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:
            return 0
        print("sockvisorctl logs: sockvisor is stopping", file=sys.stderr)
        return 0


def format_line(line: dict[str, Any]) -> str:
    return f"{line['stream']} [{line['pid']}] {line['line']}"


async def _wait_for_lines(supervisor, ring, after: int, wait: int) -> bool:
    """Wait for lines after `after` (at most `wait` seconds); True if sockvisor
    began to stop meanwhile (the follower ends instead of timing out)."""
    import asyncio
    stop = supervisor.stopping
    if stop is not None and stop.done():
        return True   # no wait: the follower ends now, not after MAX_WAIT
    if stop is None:   # (not running yet)
        await ring.wait(after, wait)
        return False
    waiting = asyncio.ensure_future(ring.wait(after, wait))
    await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    return stop.done()


COMMAND = Logs()
