"""`reloadconfig`: re-read the config file and apply the difference (also SIGHUP)."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command
from sockvisor.control.protocol import CommandError, ErrNo


class ReloadConfig(Command):
    """Re-read the INI file and apply what changed, without downtime.

    sockvisorctl reloadconfig

    A broken file changes nothing and the error is returned; so does a socket
    that cannot be bound, or whose file's mode/owner cannot be changed: what
    was done for it is undone.  Added watchers start, removed ones stop,
    changed ones get a rolling reload unless every change applies in place (a
    new numprocesses scales them, a new graceful_timeout, signal or restart
    policy is just taken).  Unchanged sockets stay open untouched; a socket
    whose address changed is bound anew and the old one closed once no worker
    uses it; a backlog, blocking or unix mode/owner change is applied
    in place.
    """
    name = "reloadconfig"
    access = "operate"
    long_running = True

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor.config import ConfigError
        from sockvisor.sockets import SocketError
        from sockvisor.watcher import ReloadError
        try:
            return await supervisor.reload_config()
        except ConfigError as exc:
            raise CommandError(f"config not reloaded: {exc}", ErrNo.MESSAGE_ERROR) from None
        except SocketError as exc:
            raise CommandError(f"config not reloaded: {exc}", ErrNo.OS_ERROR) from None
        except ReloadError as exc:
            raise CommandError(str(exc), ErrNo.COMMAND_ERROR) from None

    def format(self, reply):
        lines = []
        for key in ("added", "removed", "reloaded", "scaled", "updated", "unchanged"):
            if reply.get(key):
                lines.append(f"{key} watchers: {', '.join(reply[key])}")
        for key in ("sockets_added", "sockets_removed", "sockets_changed"):
            if reply.get(key):
                lines.append(f"{key.replace('_', ' ')}: {', '.join(reply[key])}")
        return "\n".join(lines) or "nothing changed"


COMMAND = ReloadConfig()
