"""`reload`: replace every worker of a watcher with zero downtime."""

from __future__ import annotations

from typing import Any

from sockvisor.control.commands.base import Command, get_watcher, watcher_argument
from sockvisor.control.protocol import CommandError, ErrNo


class Reload(Command):
    """Replace the workers of NAME (or of every watcher in turn) by a rolling reload.

    sockvisorctl reload [NAME]

    A new generation is spawned on the same sockets (`reload_batch` at a time);
    old workers are retired only once their replacements are ready.  If a new
    worker dies or is not ready within `ready_timeout`, the reload is aborted,
    the old workers keep serving and the command fails.  (With the default
    `ready = started`, "ready" means exec succeeded: a program that crashes
    after exec is only caught with `ready = notify` or `delay:N`.)  The reply comes when
    the reload is over.  (For circusctl: without `--waiting` the reply comes at
    once and the reload goes on in the background, as in Circus.)

    A watcher with `send_hup = true` (Circus's) is not replaced: its workers get
    SIGHUP, reload themselves and keep their pids; the reply lists them (`hup`).
    """
    name = "reload"
    access = "operate"
    long_running = True

    def add_arguments(self, parser):
        watcher_argument(parser, optional=True)

    def properties(self, args):
        props: dict[str, Any] = {"waiting": True}
        if args.name:
            props["name"] = args.name
        return props

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        import asyncio   # here, not at the top: sockvisorctl never needs it
        watchers = ([get_watcher(supervisor, props)] if "name" in props
                    else list(supervisor.watchers.values()))

        async def run() -> list[dict[str, Any]]:
            from sockvisor.watcher import ReloadError
            results = []
            for watcher in watchers:
                try:
                    results.append(await watcher.reload())
                except ReloadError as exc:
                    raise CommandError(str(exc), ErrNo.COMMAND_ERROR) from None
            return results

        if props.get("waiting", True) is False:
            task = asyncio.ensure_future(run())
            # The event loop keeps only a weak reference to a task: without ours, a
            # reload parked on a future nobody else holds could be collected mid-way.
            _background.add(task)
            task.add_done_callback(_background.discard)
            task.add_done_callback(_log_background_failure)
            return {"info": "reload started"}
        results = await run()
        if "name" in props:
            return {"watcher": results[0]}
        return {"watchers": results}

    def format(self, reply):
        items = [reply["watcher"]] if "watcher" in reply else reply.get("watchers", [])
        if not items:
            return reply.get("info", "ok")
        return "\n".join(
            f"{w['name']}: SIGHUP sent to {len(w['hup'])} worker(s) (send_hup), "
            f"{w['ready']}/{w['numprocesses']} ready" if "hup" in w else
            f"{w['name']}: generation {w['generation']}, {w['ready']}/{w['numprocesses']} "
            f"ready, {w.get('replaced', 0)} replaced in {w.get('seconds', 0)}s"
            for w in items)


# The reloads running with `waiting = false` (strong references; see above).
_background: set = set()


def _log_background_failure(task) -> None:
    if not task.cancelled() and task.exception() is not None:
        import logging
        logging.getLogger("sockvisor.control").error("background reload failed: %s", task.exception())


COMMAND = Reload()
