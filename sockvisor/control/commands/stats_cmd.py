"""`stats`: CPU and memory of workers (psutil), in Circus's shape."""

from __future__ import annotations

import os
import time
from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, int_property
from sockvisor.control.protocol import CommandError


# psutil.Process objects by pid, kept between calls: cpu_percent(None) measures
# since the previous call *on the same object* (a new one always says 0.0).
# Those that ended are dropped at each call: bounded by what runs.
_processes: dict[int, Any] = {}


def _process(pid: int) -> Any:
    import psutil
    proc = _processes.get(pid)
    if proc is None or not proc.is_running():   # is_running: the pid was not reused
        proc = _processes[pid] = psutil.Process(pid)
    return proc


def process_info(pid: int, children: bool = True) -> dict[str, Any]:
    """One process's figures, keyed as Circus's `stats` keys them; with
    `children`, those of every process it started (gunicorn's, uwsgi's workers)
    under "children"."""
    import psutil
    try:
        proc = _process(pid)
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
        if children:
            info["children"] = [process_info(child.pid, children=False)
                                for child in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        _processes.pop(pid, None)
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
    Each worker's children (a gunicorn or uwsgi master's workers) are listed
    under it, and each watcher gets a total of all of them; in the table, times
    read like 8.0s or 2h03m, in --json they are seconds.
    --extended adds what a watcher's extended_stats hook (Circus's Python
    hook) puts in each worker's figures, such as uwsgi's request counts.
    `output` counts each watcher's worker output sockvisor had to drop (a stalled
    reader of its stdout, a full disk): `dropped_lines`, `dropped_bytes`.
    """
    name = "stats"
    access = "operate"

    def add_arguments(self, parser):
        parser.add_argument("name", nargs="?", help="watcher")
        parser.add_argument("process", nargs="?", type=int, help="pid")
        parser.add_argument("--extended", action="store_true",
                            help="with what each watcher's extended_stats hook adds")

    def properties(self, args):
        props: dict[str, Any] = {}
        if args.name:
            props["name"] = args.name
        if args.process:
            props["process"] = args.process
        if args.extended:
            props["extended"] = True
        return props

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        extended = props.get("extended") is True   # Circus's `stats --extended`
        if "name" not in props:
            _prune()
            infos = {name: await _infos(watcher, list(watcher.workers), extended)
                     for name, watcher in supervisor.watchers.items()}
            return {"infos": infos,
                    "totals": {name: totals(info) for name, info in infos.items()},
                    "output": {name: watcher.output_stats()
                               for name, watcher in supervisor.watchers.items()}}
        watcher = get_watcher(supervisor, props)
        _prune()
        if "process" in props:
            pid = int_property(props, "process", what="the pid")
            if pid not in watcher.workers:
                raise CommandError(f"process {pid} not found in {watcher.name!r}")
            return {"process": pid,
                    "info": (await _infos(watcher, [pid], extended))[str(pid)]}
        info = await _infos(watcher, list(watcher.workers), extended)
        return {"name": watcher.name, "info": info, "totals": totals(info),
                "output": watcher.output_stats()}

    def format(self, reply):
        from sockvisor.control.commands.base import duration, table
        groups = ({reply["name"]: reply["info"]} if "name" in reply
                  else reply.get("infos", {"": {str(reply.get("process")): reply.get("info")}}))
        all_totals = ({reply["name"]: reply.get("totals")} if "name" in reply
                      else reply.get("totals", {}))
        rows = []
        for name, infos in groups.items():
            for info in infos.values():
                rows.append(_row(name, info["pid"], info))
                for child in info.get("children", []):
                    rows.append(_row("", f"  {child['pid']}", child))
            total = all_totals.get(name)
            if total and total["processes"] > 1:
                rows.append([name, f"total ({total['processes']})", round(total["cpu"], 1),
                             round(total["mem"], 3), _megabytes(total["rss"]),
                             duration(total["ctime"]), ""])
        return table(rows, ["WATCHER", "PID", "CPU%", "MEM%", "RSS", "CPU-TIME", "AGE"])


async def _infos(watcher, pids: list[int], extended: bool) -> dict[str, dict[str, Any]]:
    """pid -> process_info; with `extended`, as the watcher's extended_stats hook
    (a Circus Python hook: hooks.py) edited each, all hooks at once."""
    import asyncio   # here: sockvisorctl imports this module and must start fast
    infos = {pid: process_info(pid) for pid in pids}
    if extended and "extended_stats" in watcher.config.hooks:
        edited = await asyncio.gather(*(
            watcher.hook_runner.extended_stats(watcher.config, pid, info)
            for pid, info in infos.items()))
        infos = dict(zip(infos, edited))
    return {str(pid): info for pid, info in infos.items()}


def totals(infos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A watcher's workers and their children together: the figures that add up."""
    processes = [p for info in infos.values() for p in [info, *info.get("children", [])]]
    # Only figures psutil could read -- and, under --extended, that a hook did not
    # turn into something else.
    counted = [p for p in processes if isinstance(p.get("rss"), int)
               and all(isinstance(p.get(key), (int, float)) for key in ("cpu", "mem", "ctime"))]
    return {"processes": len(processes),
            "cpu": round(sum(p["cpu"] for p in counted), 1),
            "mem": round(sum(p["mem"] for p in counted), 3),
            "rss": sum(p["rss"] for p in counted),
            "ctime": round(sum(p["ctime"] for p in counted), 3)}


def _prune() -> None:
    """Forget the processes that ended (see `_processes`)."""
    for pid, proc in list(_processes.items()):
        if not proc.is_running():
            del _processes[pid]


def _megabytes(rss: Any) -> str:
    return f"{rss / 1048576:.1f}M" if isinstance(rss, int) else str(rss)


def _row(name: str, pid: Any, info: dict[str, Any]) -> list[Any]:
    from sockvisor.control.commands.base import duration
    return [name, pid, info["cpu"], info["mem"], _megabytes(info["rss"]),
            duration(info["ctime"]), duration(info["age"])]


COMMAND = Stats()
