"""`status`: the state of every watcher, or every worker of one watcher."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import (Command, duration, get_watcher, table,
                                             watcher_argument)

EXIT_UNHEALTHY = 3
RUNNING_STATES = ("active", "reloading")


def healthy(watcher: dict[str, Any]) -> bool:
    """Runs with every worker it should have ready (a status reply's summary), or
    is on_demand and waiting for a connection, as it should."""
    return watcher.get("state") == "waiting" or (
        watcher.get("state") in RUNNING_STATES
        and watcher.get("ready", 0) >= watcher.get("numprocesses", 0))


class Status(Command):
    """Show the state of every watcher, or of each worker of NAME.

    With NAME: each worker's pid, generation, state, readiness, uptime and
    restarts.  Exit status 0 only when every watcher shown runs (active, or
    reloading: the old workers serve meanwhile) with all its workers ready, or
    is waiting (on_demand: no worker until a connection comes); 3 when one is
    stopped, starting, stopping, FATAL or short of ready workers
    (supervisorctl's convention), so that `status` is a health check.

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
                "watchers": [w.summary() for w in supervisor.watchers.values()],
                "sockvisor": _itself(supervisor)}

    def exit_status(self, reply: dict[str, Any]) -> int:
        watchers = [reply["watcher"]] if "watcher" in reply else reply.get("watchers", [])
        return 0 if all(healthy(w) for w in watchers) else EXIT_UNHEALTHY

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
                     "yes" if w["ready"] else "no", duration(w["uptime"]), w["restarts"]]
                    for w in detail["workers"]]
            return head + "\n" + table(rows, ["PID", "WID", "GEN", "STATE", "READY",
                                              "UPTIME", "RESTARTS"])
        rows = [[w["name"], w["state"], f"{w['ready']}/{w['numprocesses']}",
                 w["processes"], w["generation"]] for w in reply.get("watchers", [])]
        text = table(rows, ["WATCHER", "STATE", "READY", "PROCESSES", "GEN"])
        itself = reply.get("sockvisor")
        if itself:
            text += (f"\nsockvisor {itself['version']} (pid {itself['pid']}), started "
                     f"{_when(itself['started_at'])}")
            if itself.get("last_upgrade_at"):
                text += (f", upgraded in place {itself['upgrades']} time(s), last "
                         f"{_when(itself['last_upgrade_at'])}")
        return text


def _itself(supervisor) -> dict[str, Any]:
    """sockvisor's own version, start and last upgrade in place (upgrade.py)."""
    import os
    from sockvisor import __version__
    last = supervisor.last_upgrade or {}
    return {"version": __version__, "pid": os.getpid(),
            "started_at": supervisor.started_at, "upgrades": supervisor.upgrades,
            "last_upgrade_at": last.get("at"), "last_upgrade_from": last.get("from")}


def _when(timestamp: float) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


COMMAND = Status()
