"""`dstats`: the supervisor's own CPU and memory."""

from __future__ import annotations

import os

from sockvisor.control.commands.base import Command


class DStats(Command):
    """Show sockvisor's own figures: CPU, memory, open fds, workers, orphans reaped.

    sockvisorctl dstats
    """
    name = "dstats"
    access = "operate"

    async def execute(self, supervisor, props):
        from sockvisor.control.commands.stats_cmd import process_info
        info = process_info(os.getpid())
        info["fds"] = len(os.listdir("/proc/self/fd"))
        info["workers"] = sum(len(w.workers) for w in supervisor.watchers.values())
        info["orphans_reaped"] = supervisor.reaper.orphans_reaped if supervisor.reaper else 0
        return {"info": info}

    def format(self, reply):
        return "\n".join(f"{key}: {value}" for key, value in sorted(reply["info"].items()))


COMMAND = DStats()
