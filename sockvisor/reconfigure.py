"""reloadconfig: apply a re-read config to a running supervisor, without downtime.

The order matters:
  1. every socket that is new or whose address changed is bound *first*; if one
     fails, nothing has changed yet and the error is returned.  A socket that
     takes the address of one this config drops or moves (a renamed section, two
     sockets swapping addresses) takes over that listening socket instead: binding
     it anew would fail with EADDRINUSE, and its queue is as precious as any;
  2. removed watchers stop; changed watchers get a rolling reload, unless every
     change applies in place (config.change_kind: a new `numprocesses` is a
     plain scale, a new graceful_timeout is just taken); added watchers start;
  3. sockets no longer wanted close last, once the workers using them are gone.
A socket whose address did not change is never touched, whatever else changed:
its accept queue is what makes the reload invisible to clients.  A backlog
change is applied in place with listen(); a unix socket's new mode/owner/group
too, through the socket file's checked fd (sockets.py): its folder is often the
worker's, which may have swapped the name for a symlink, so the file is checked
to still be ours *before* anything changes, and a file that is not refuses the
whole reloadconfig.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import TYPE_CHECKING, Any

from sockvisor import preflight
from sockvisor.config import Change, Config, SocketConfig, change_kind
from sockvisor.sockets import ListeningSocket, SocketError, bind
from sockvisor.states import WatcherState
from sockvisor.watcher import ReloadError

if TYPE_CHECKING:
    from sockvisor.supervisor import Supervisor

log = logging.getLogger("sockvisor.reconfigure")


def same_address(old: SocketConfig, new: SocketConfig) -> bool:
    return (old.family, old.host, old.port, old.path) == (new.family, new.host, new.port,
                                                          new.path)


async def apply_new_config(supervisor: "Supervisor", new: Config) -> dict[str, Any]:
    old = supervisor.config
    if new.globals != old.globals:
        log.warning("reloadconfig: [sockvisor] settings changed; they take effect at "
                    "the next start of sockvisor")

    # Can the new and changed watchers' workers run at all?  Asked before anything
    # changes (preflight.py): a program the worker's user cannot reach is a
    # config error, not a reload that aborts.
    await preflight.require([w for name, w in new.watchers.items()
                             if old.watchers.get(name) != w], new.path, supervisor.reaper)

    added_sockets = [n for n in new.sockets if n not in old.sockets]
    removed_sockets = [n for n in old.sockets if n not in new.sockets]
    moved_sockets = [n for n in new.sockets if n in old.sockets
                     and not same_address(old.sockets[n], new.sockets[n])]

    # 1. Bind first: all or nothing.
    needed = added_sockets + moved_sockets
    taken_over = _takeovers(old, new, needed, moved_sockets + removed_sockets)
    in_place = [(supervisor.sockets[name], old.sockets[name], new.sockets[name])
                for name in new.sockets if name in old.sockets and name not in moved_sockets]
    in_place += [(supervisor.sockets[old_name], old.sockets[old_name], new.sockets[name])
                 for name, old_name in taken_over.items()]
    # Checked before anything changes; applied through these fds after the commit.
    permission_fds = _check_permissions(in_place)
    fresh: dict[str, ListeningSocket] = {}
    try:
        for name in needed:
            if name not in taken_over:
                fresh[name] = _bind_beside(supervisor, new.sockets[name],
                                           moved_sockets + removed_sockets)
    except SocketError:
        for listening in fresh.values():
            listening.close()
        for fd in permission_fds.values():
            os.close(fd)
        raise

    retiring: dict[str, ListeningSocket] = {}
    for name in moved_sockets + removed_sockets:
        retiring[name] = supervisor.sockets.pop(name)
    supervisor.sockets.update(fresh)
    for name, old_name in taken_over.items():
        listening = retiring.pop(old_name)
        log.info("socket %s takes over the listening socket of %s (%s)", name, old_name,
                 listening.address)
        supervisor.sockets[name] = listening
    permission_errors = []
    for listening, old_config, new_config in in_place:
        try:
            _apply_in_place(listening, old_config, new_config,
                            permission_fds.pop(id(listening), None))
        except SocketError as exc:   # chmod/chown itself failed (EPERM...)
            log.error("reloadconfig: %s", exc)
            permission_errors.append(str(exc))
    supervisor.config = new
    # The fd store: every name going away or moving is dropped *before* anything
    # is stored.  systemd ignores a stored fd's second FDSTORE=1 (it keeps the
    # first name), so a socket taken over under a new name must first leave the
    # store under its old one.
    for name in moved_sockets + removed_sockets:
        supervisor.unstore_socket(name)
    for name in needed:
        supervisor.store_socket(name)

    added = [n for n in new.watchers if n not in supervisor.watchers]
    removed = [n for n in supervisor.watchers if n not in new.watchers]
    changed, scaled, updated, unchanged = [], [], [], []
    for name, watcher_config in new.watchers.items():
        watcher = supervisor.watchers.get(name)
        if watcher is None:
            continue
        # How each option applies is the registry's (config/options.py).
        kinds = change_kind(watcher.config, watcher_config)
        if Change.RESTART in kinds or set(watcher_config.sockets) & set(moved_sockets):
            changed.append(name)
        elif Change.SCALE in kinds:
            scaled.append(name)
        elif kinds:
            updated.append(name)
        else:
            unchanged.append(name)

    # 2. Watchers: removed ones stop, changed ones roll, added ones start.
    await asyncio.gather(*(supervisor.remove_watcher(name) for name in removed))
    for name in scaled + updated:   # in place: no worker is replaced
        watcher = supervisor.watchers[name]
        await watcher.replace_config(new.watchers[name])
        if name in scaled:
            await watcher.set_numprocesses(new.watchers[name].numprocesses)
    results = await asyncio.gather(
        *(_reload_or_keep_stopped(supervisor.watchers[name], new.watchers[name])
          for name in changed),
        return_exceptions=True)
    failures = {name: result for name, result in zip(changed, results)
                if isinstance(result, BaseException)}
    # In parallel, as at start-up: each waits for its first generation to be ready.
    new_watchers = [supervisor.add_watcher(new.watchers[name]) for name in added]
    await asyncio.gather(*(w.start() for w in new_watchers if w.config.autostart))

    # 3. Close what nobody uses any more.  A watcher whose reload failed still runs
    # its old workers, which hold the retired socket: it stays open until the last
    # of them has exited (the next reload, a crash...), then closes.  Workers
    # spawned from now on get the new socket.
    for name, listening in retiring.items():
        holders = [worker for failed in failures
                   for worker in supervisor.watchers[failed].workers.values()
                   if name in worker.config.sockets and worker.alive]
        if holders:
            log.warning("socket %s (%s) kept open until its %d worker(s) exit", name,
                        listening.address, len(holders))
            supervisor.retired_sockets.append(listening)
            _close_when_unused(supervisor, name, listening, holders)
        else:
            log.info("socket %s (%s) closed", name, listening.address)
            listening.close()

    summary = {"added": added, "removed": removed, "reloaded": changed, "scaled": scaled,
               "updated": updated, "unchanged": unchanged, "sockets_added": added_sockets,
               "sockets_removed": removed_sockets, "sockets_changed": moved_sockets,
               "sockets_taken_over": taken_over}
    log.info("reloadconfig: %s", ", ".join(f"{k} {v}" for k, v in summary.items() if v)
             or "nothing changed")
    if permission_errors:
        raise ReloadError("reloadconfig: the new config is applied, but "
                          + "; ".join(permission_errors))
    if failures:
        reasons = "; ".join(str(exc) for exc in failures.values())
        if all(isinstance(exc, ReloadError) for exc in failures.values()):
            raise ReloadError(f"reloadconfig: {reasons}")
        raise next(iter(failures.values()))
    return summary


def _takeovers(old: Config, new: Config, needed: list[str], going: list[str]
               ) -> dict[str, str]:
    """new socket name -> the name of the old socket, going away or moving, that
    already listens on its address."""
    taken: dict[str, str] = {}
    for name in needed:
        for old_name in going:
            if old_name not in taken.values() and same_address(old.sockets[old_name],
                                                               new.sockets[name]):
                taken[name] = old_name
                break
    return taken


def _bind_beside(supervisor: "Supervisor", config: SocketConfig,
                 going: list[str]) -> ListeningSocket:
    """bind(), with a clearer error when what is in the way is one of our own sockets:
    a socket moved to an overlapping address on the same port (127.0.0.1:80 ->
    0.0.0.0:80) cannot be bound while the old one still serves."""
    try:
        return bind(config)
    except SocketError as exc:
        if exc.errno != errno.EADDRINUSE or config.is_unix:
            raise
        ours = [name for name, listening in supervisor.sockets.items()
                if _overlaps(listening, config)]
        if not ours:
            raise
        listening = supervisor.sockets[ours[0]]
        if ours[0] in going:
            why = ("which this config moves or removes, but which keeps listening "
                   "until its workers have moved: a reloadconfig cannot put an "
                   "overlapping address on the same port; use another port, or "
                   "restart sockvisor")
        else:
            why = "which this config keeps"
        raise SocketError(
            f"[socket:{config.name}] cannot bind {config.describe()}: sockvisor's own "
            f"[socket:{ours[0]}] listens on {listening.address}, {why}",
            exc.errno) from None


def _overlaps(listening: ListeningSocket, config: SocketConfig) -> bool:
    """Would `config`'s address conflict with `listening` in bind()?  The same port,
    and the same host or a wildcard on either side ("::" covers IPv4 too)."""
    if listening.port != config.port:
        return False
    held = listening.sock.getsockname()[0]
    wildcards = {"0.0.0.0", "::"}
    if listening.sock.family != config.family and "::" not in (held, config.host):
        return False
    return held == config.host or held in wildcards or config.host in wildcards


# Strong references to the tasks below (the event loop keeps only weak ones).
_pending_closes: set[asyncio.Task] = set()


def _close_when_unused(supervisor: "Supervisor", name: str, listening: ListeningSocket,
                       holders: list) -> None:
    """Close a retired socket once every worker holding it has exited.

    Kept open "until next time" instead, it stayed in the listen state for
    ever once those workers were gone: connections to the old address queued
    with nobody to accept them, and the address could not be bound again."""
    async def close_later() -> None:
        await asyncio.gather(*(asyncio.shield(worker.exited) for worker in holders),
                             return_exceptions=True)
        if listening in supervisor.retired_sockets:   # not closed by a shutdown
            supervisor.retired_sockets.remove(listening)
            log.info("socket %s (%s) closed: its last worker exited", name,
                     listening.address)
            listening.close()
    task = asyncio.ensure_future(close_later())
    _pending_closes.add(task)
    task.add_done_callback(_pending_closes.discard)


async def _reload_or_keep_stopped(watcher, config) -> dict[str, Any]:
    """A watcher the operator stopped stays stopped: it only takes the new config."""
    if watcher.state == WatcherState.STOPPED:
        return await watcher.replace_config(config)
    return await watcher.reload(config)


def _permissions_change(old: SocketConfig, new: SocketConfig) -> bool:
    return new.is_unix and (old.mode, old.owner, old.group) != (new.mode, new.owner,
                                                                 new.group)


def _check_permissions(in_place: list[tuple[ListeningSocket, SocketConfig, SocketConfig]]
                       ) -> dict[int, int]:
    """id(listening) -> a checked fd of its unix socket file, for each socket whose
    mode/owner/group changes; SocketError (nothing held) if a file is no longer ours."""
    fds: dict[int, int] = {}
    try:
        for listening, old, new in in_place:
            if _permissions_change(old, new):
                fds[id(listening)] = listening.unix_file()
    except SocketError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _apply_in_place(listening: ListeningSocket, old: SocketConfig, new: SocketConfig,
                    file_fd: int | None) -> None:
    """What can change on a socket without rebinding it."""
    listening.config = new
    if old.backlog != new.backlog:
        listening.set_backlog(new.backlog)
        log.info("socket %s: backlog %d -> %d", new.name, old.backlog, new.backlog)
    if old.blocking != new.blocking:
        listening.sock.setblocking(new.blocking)
    if file_fd is not None:
        try:
            listening.set_permissions(new, file_fd)
        finally:
            os.close(file_fd)
        log.info("socket %s: mode/owner of %s set", new.name, new.path)
