"""`options`: a watcher's effective options (what `get` and `set` work on)."""

from __future__ import annotations

import signal
from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument


def watcher_options(watcher) -> dict[str, Any]:
    """The options `get`, `set` and `options` talk about, as JSON-friendly values."""
    from sockvisor.config import signal_names
    config = watcher.config
    ready = config.ready.kind.value
    if ready == "delay":
        ready = f"delay:{config.ready.delay:g}"
    return {
        "cmd": config.cmd,
        "args": list(config.args),
        "numprocesses": watcher.numprocesses,
        "sockets": list(config.sockets),
        "uid": config.uid,
        "gid": config.gid,
        "working_dir": config.working_dir,
        "env": dict(config.env),
        "umask": None if config.umask is None else oct(config.umask),
        "stop_signal": signal.Signals(config.stop_signal).name,
        "operator_signals": signal_names(config.operator_signals),
        "graceful_timeout": config.graceful_timeout,
        "ready": ready,
        "ready_timeout": config.ready.timeout,
        "ready_settle": config.ready_settle,
        "reload_batch": config.reload_batch,
        "respawn": config.restart.respawn,
        "min_uptime": config.restart.min_uptime,
        "backoff_base": config.restart.backoff_base,
        "backoff_max": config.restart.backoff_max,
        "max_restarts": config.restart.max_restarts,
        "restart_window": config.restart.window,
        "autostart": config.autostart,
    }


class Options(Command):
    """Print every option of NAME with its current value.

    sockvisorctl options NAME
    """
    name = "options"
    access = "operate"

    def add_arguments(self, parser):
        watcher_argument(parser)

    def properties(self, args):
        return {"name": args.name}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        return {"options": watcher_options(get_watcher(supervisor, props))}

    def format(self, reply):
        return "\n".join(f"{key}: {value}" for key, value in reply["options"].items())


COMMAND = Options()
