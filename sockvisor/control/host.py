"""What the control commands, the control server and the web console may use of
the supervisor: the narrow view they are handed, not the arbiter itself.

A typing.Protocol: nothing here runs, and the supervisor satisfies it without
naming it.  It keeps the layers one-way -- supervisor -> control, http ->
commands -> this view -- so that no command, and no transport, imports the
arbiter that starts them (tests/unit/test_import_cycles.py).  A command that
needs something new from the supervisor adds it here, which is where a reviewer
sees what commands can reach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, MutableMapping, Protocol

if TYPE_CHECKING:
    import asyncio

    from sockvisor.config import Config, WatcherConfig
    from sockvisor.process import Worker
    from sockvisor.reaper import Reaper
    from sockvisor.sockets import ListeningSocket
    from sockvisor.watcher import Watcher


class Host(Protocol):
    config: "Config"
    sockets: "Mapping[str, ListeningSocket]"
    watchers: "MutableMapping[str, Watcher]"
    workers_by_pid: "Mapping[int, Worker]"
    reaper: "Reaper | None"
    # Called with every event (topic, data): the PUB socket, the console, metrics.
    subscribers: "list[Callable[[str, dict[str, Any]], None]]"
    started_at: float
    http: Any   # the web console, when `http` is set

    @property
    def stopping(self) -> "asyncio.Future[Any] | None":
        """Done once sockvisor is stopping."""

    def publish(self, topic: str, data: dict[str, Any]) -> None: ...

    def request_stop(self) -> None:
        """Stop gracefully (as SIGTERM)."""

    def add_watcher(self, config: "WatcherConfig") -> "Watcher": ...

    def remove_watcher(self, name: str) -> Awaitable[None]: ...

    def reload_config(self) -> Awaitable[dict[str, Any]]: ...

    # Upgrades in place (upgrade.py): how many, and the last one's report.
    upgrades: int
    last_upgrade: "dict[str, Any] | None"

    def upgrade(self, after: "asyncio.Task | None" = None) -> Awaitable[dict[str, Any]]:
        """Pre-flight the installed sockvisor, then exec it once `after` is done;
        upgrade.UpgradeRefused (nothing changed) if it cannot be."""
