"""`stats`: CPU and memory of workers (psutil), in Circus's shape."""

from __future__ import annotations

import os
import time
from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, int_property
from sockvisor.control.protocol import CommandError


def process_info(pid: int) -> dict[str, Any]:
    """One process's figures, keyed as Circus's `stats` keys them."""
    import psutil
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            memory = proc.memory_info()
            cpu_times = proc.cpu_times()
            info = {
                "pid": pid,
                "cmdline": os.path.basename(proc.cmdline()[0]) if proc.cmdline() else "?",
                "username": proc.username(),
                "nice": proc.nice(),
                "mem_info1": memory.rss,
                "mem_info2": memory.vms,
                "rss": memory.rss,
                "cpu": proc.cpu_percent(interval=None),
                "mem": round(proc.memory_percent(), 3),
                "ctime": round(cpu_times.user + cpu_times.system, 3),
                "create_time": proc.create_time(),
                "age": round(time.time() - proc.create_time(), 3),
            }
    except psutil.NoSuchProcess:
        return {"pid": pid, "cmdline": "exited", "username": "-", "nice": "-",
                "mem_info1": 0, "mem_info2": 0, "rss": 0, "cpu": 0, "mem": 0,
                "ctime": 0, "age": 0}
    except psutil.AccessDenied:
        return {"pid": pid, "cmdline": "N/A", "username": "N/A", "nice": "N/A",
                "mem_info1": "N/A", "mem_info2": "N/A", "rss": "N/A", "cpu": "N/A",
                "mem": "N/A", "ctime": "N/A", "age": "N/A"}
    return info


class Stats(Command):
    """Show CPU and memory of each worker of NAME (or of every watcher) and its children.

    sockvisorctl stats [NAME [PID]]

    `cpu` is the percentage since the previous `stats` call for that process.
    `output` counts each watcher's worker output sockvisor had to drop (a stalled
    reader of its stdout, a full disk): `dropped_lines`, `dropped_bytes`.
    """
    name = "stats"
    access = "operate"

    def add_arguments(self, parser):
        parser.add_argument("name", nargs="?", help="watcher")
        parser.add_argument("process", nargs="?", type=int, help="pid")

    def properties(self, args):
        props: dict[str, Any] = {}
        if args.name:
            props["name"] = args.name
        if args.process:
            props["process"] = args.process
        return props

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if "name" not in props:
            return {"infos": {name: {str(pid): process_info(pid) for pid in watcher.workers}
                              for name, watcher in supervisor.watchers.items()},
                    "output": {name: watcher.output_stats()
                               for name, watcher in supervisor.watchers.items()}}
        watcher = get_watcher(supervisor, props)
        if "process" in props:
            pid = int_property(props, "process", what="the pid")
            if pid not in watcher.workers:
                raise CommandError(f"process {pid} not found in {watcher.name!r}")
            return {"process": pid, "info": process_info(pid)}
        return {"name": watcher.name,
                "info": {str(pid): process_info(pid) for pid in watcher.workers},
                "output": watcher.output_stats()}

    def format(self, reply):
        from sockvisor.control.commands.base import table
        groups = ({reply["name"]: reply["info"]} if "name" in reply
                  else reply.get("infos", {"": {str(reply.get("process")): reply.get("info")}}))
        rows = []
        for name, infos in groups.items():
            for info in infos.values():
                rss = info["rss"]
                rows.append([name, info["pid"], info["cpu"], info["mem"],
                             f"{rss / 1048576:.1f}M" if isinstance(rss, int) else rss,
                             info["ctime"], info["age"]])
        return table(rows, ["WATCHER", "PID", "CPU%", "MEM%", "RSS", "CPU-SECONDS", "AGE"])


COMMAND = Stats()
