"""`status`: the state of every watcher, or every worker of one watcher."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, table, watcher_argument


class Status(Command):
    """Show watcher states; with NAME, each worker: pid, generation, state, ready,
    uptime and restarts.

    sockvisorctl status [NAME]

    The reply keeps Circus's shape (`status`/`statuses` hold the state names) and
    adds `watchers` (or `watcher`) with the details.
    """
    name = "status"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        return {"name": args.name} if args.name else {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor.sockets import keep_listening   # not at import: sockvisorctl
        # A cheap check of every socket's listen state (see `listsockets`): a
        # monitoring loop calling status repairs a socket a worker shut down.
        keep_listening(supervisor.sockets.values(), supervisor.publish)
        if "name" in props:
            watcher = get_watcher(supervisor, props)
            return {"status": watcher.state.value, "watcher": watcher.status()}
        return {"statuses": {name: w.state.value for name, w in supervisor.watchers.items()},
                "watchers": [w.summary() for w in supervisor.watchers.values()]}

    def format(self, reply):
        if "watcher" in reply:
            detail = reply["watcher"]
            head = (f"{detail['name']}: {detail['state']}, {detail['ready']}/"
                    f"{detail['numprocesses']} ready, generation {detail['generation']}, "
                    f"{detail['restarts']} restarts")
            if detail.get("fatal_reason"):
                head += f"\n  fatal: {detail['fatal_reason']}"
            if "backoff" in detail:
                head += f"\n  next start in {detail['backoff']}s (backoff)"
            rows = [[w["pid"], w["wid"], w["generation"], w["state"],
                     "yes" if w["ready"] else "no", f"{w['uptime']:.1f}s", w["restarts"]]
                    for w in detail["workers"]]
            return head + "\n" + table(rows, ["PID", "WID", "GEN", "STATE", "READY",
                                              "UPTIME", "RESTARTS"])
        rows = [[w["name"], w["state"], f"{w['ready']}/{w['numprocesses']}",
                 w["processes"], w["generation"]] for w in reply.get("watchers", [])]
        return table(rows, ["WATCHER", "STATE", "READY", "PROCESSES", "GEN"])


COMMAND = Status()
