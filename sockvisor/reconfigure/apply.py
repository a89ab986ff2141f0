"""reloadconfig, applied: a plan (plan.py) carried out with one commit point.

1. Check, changing nothing: can the new and changed watchers' workers run at
   all (preflight.py)?  A program the worker's user cannot reach is a config
   error, not a reload that aborts.
2. Prepare: every step that can fail because of the new config, each recorded
   so that it can be undone -- bind the sockets the plan binds; change in place
   what changes on the listening sockets that stay (a unix socket file's
   mode/owner/group through its checked fd (sockets.py): its folder is often the
   worker's, which may have swapped the name for a symlink; backlog; blocking);
   set up the added watchers (their output files).  If one fails, what was done
   is undone -- fresh sockets closed, backlog, blocking, modes and owners put
   back (all before anything awaits), then the new watchers' outputs closed --
   and the error is returned: the supervisor's config, socket table and
   watchers are exactly as they were.
3. Commit, in one synchronous step (no other command runs in between): the new
   config, the socket table (fresh sockets in, taken-over ones under their new
   names, moved and removed ones out), the service manager's fd store, the added
   watchers.  Nothing in it can fail for a reason the config gave.
4. The watchers move to the committed config: removed ones stop, scaled and
   updated ones take the new settings (a new `numprocesses` scales), changed
   ones roll, added ones start.  A roll that aborts keeps that watcher's old workers serving and
   is reported as an error; the config stays committed.
5. Sockets retired close last, once the workers using them are gone.
A socket whose address did not change is never rebound: its accept queue is
what makes the reload invisible to clients.

The applier does not know the supervisor: it works on the `Host` below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
from typing import Any, Callable, Mapping, Protocol

from sockvisor import preflight
from sockvisor.config import Config, SocketConfig, WatcherConfig, priority_groups
from sockvisor.process import Worker
from sockvisor.reconfigure.plan import Plan, plan
from sockvisor.sockets import ListeningSocket, PermissionChange, SocketError, bind
from sockvisor.states import WatcherState
from sockvisor.watcher import ReloadError, Watcher

log = logging.getLogger("sockvisor.reconfigure")


class Host(Protocol):
    """What reloadconfig needs of the supervisor, which stays the one writer of
    its config, socket table and watchers: this module reads them, and changes
    them only through `commit_config`, `remove_watcher` and `retire_socket`."""
    config: Config
    sockets: Mapping[str, ListeningSocket]
    watchers: Mapping[str, Watcher]
    reaper: Any

    def new_watcher(self, config: WatcherConfig) -> Watcher:
        """A watcher for `config`, not registered (and not started) yet."""

    def commit_config(self, config: Config, sockets: dict[str, ListeningSocket],
                      added_watchers: dict[str, Watcher]) -> dict[str, ListeningSocket]:
        """The commit point: returns the listening sockets taken out of the table."""

    async def remove_watcher(self, name: str) -> None: ...

    def retire_socket(self, name: str, listening: ListeningSocket,
                      holders: list[Worker]) -> None: ...


async def apply_config(host: Host, new: Config) -> dict[str, Any]:
    old = host.config
    if new.globals != old.globals:
        log.warning("reloadconfig: [sockvisor] settings changed; they take effect at "
                    "the next start of sockvisor")
    running = _running(host)
    await preflight.require([w for name, w in new.watchers.items()
                             if running.watchers.get(name) != w], new.path, host.reaper)

    # From here to the commit nothing awaits: the plan is made from what runs now,
    # and no other command can change that before it is carried out.
    the_plan = plan(_running(host), new)
    prepared = _Prepared()
    try:
        _prepare(host, new, the_plan, prepared)
    except BaseException:
        prepared.undo_sync()
        await prepared.undo_watchers()
        raise
    retiring = _commit(host, new, the_plan, prepared)
    failures = await _move_watchers(host, new, the_plan, prepared)
    _retire(host, retiring, failures)

    summary = the_plan.summary()
    log.info("reloadconfig: %s", ", ".join(f"{k} {v}" for k, v in summary.items() if v)
             or "nothing changed")
    if failures:
        reasons = "; ".join(str(exc) for exc in failures.values())
        if all(isinstance(exc, ReloadError) for exc in failures.values()):
            raise ReloadError(f"reloadconfig: {reasons}")
        raise next(iter(failures.values()))
    return summary


def _running(host: Host) -> Config:
    """The supervisor's config with the watchers as they run (`set`, `add` and
    `rm` change those without touching the file)."""
    return dataclasses.replace(host.config, watchers={
        name: watcher.config for name, watcher in host.watchers.items()})


# ---------------------------------------------------------------------- 2. prepare

class _Prepared:
    """What step 2 did, to be committed or undone."""

    def __init__(self) -> None:
        self.fresh: dict[str, ListeningSocket] = {}
        self.permissions: list[PermissionChange] = []
        self.undo_steps: list[Callable[[], None]] = []   # in the order done
        self.watchers: dict[str, Watcher] = {}

    def undo_sync(self) -> None:
        """The kernel side (sockets, files); nothing here awaits."""
        for listening in self.fresh.values():
            listening.close()
        for step in reversed(self.undo_steps):
            try:
                step()
            except OSError as exc:
                log.error("reloadconfig: undoing a socket change failed: %s", exc)
        for change in reversed(self.permissions):
            change.undo()

    async def undo_watchers(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.watchers.values()))

    def committed(self) -> None:
        for change in self.permissions:
            change.close()


def _prepare(host: Host, new: Config, the_plan: Plan, prepared: _Prepared) -> None:
    old = host.config
    sockets = the_plan.sockets
    for name, old_name in sockets.in_place.items():
        _change_in_place(host.sockets[old_name], old.sockets[old_name], new.sockets[name],
                         prepared)
    for name in sockets.bind:
        prepared.fresh[name] = _bind_beside(host, new.sockets[name], sockets.going)
    for name in the_plan.watchers.add:
        try:
            prepared.watchers[name] = host.new_watcher(new.watchers[name])
        except OSError as exc:   # e.g. an output file it may not open
            raise ReloadError(f"config not reloaded: [watcher:{name}] cannot set up its "
                              f"output: {exc}") from None


def _change_in_place(listening: ListeningSocket, old: SocketConfig, new: SocketConfig,
                     prepared: _Prepared) -> None:
    """What can change on a listening socket without rebinding it; the config
    object itself is swapped at the commit."""
    if new.is_unix and (old.mode, old.owner, old.group) != (new.mode, new.owner, new.group):
        prepared.permissions.append(listening.change_permissions(new))
        log.info("socket %s: mode/owner of %s set", new.name, new.path)
    try:
        if old.backlog != new.backlog:
            listening.set_backlog(new.backlog)
            prepared.undo_steps.append(lambda: listening.set_backlog(old.backlog))
            log.info("socket %s: backlog %d -> %d", new.name, old.backlog, new.backlog)
        if old.blocking != new.blocking:
            listening.sock.setblocking(new.blocking)
            prepared.undo_steps.append(lambda: listening.sock.setblocking(old.blocking))
    except OSError as exc:
        raise SocketError(f"[socket:{new.name}] cannot change {listening.address} in "
                          f"place: {exc.strerror}") from None


def _bind_beside(host: Host, config: SocketConfig,
                 going: tuple[str, ...]) -> ListeningSocket:
    """bind(), with a clearer error when what is in the way is one of our own sockets:
    a socket moved to an overlapping address on the same port (127.0.0.1:80 ->
    0.0.0.0:80) cannot be bound while the old one still serves."""
    try:
        return bind(config)
    except SocketError as exc:
        if exc.errno != errno.EADDRINUSE or config.is_unix:
            raise
        ours = [name for name, listening in host.sockets.items()
                if _overlaps(listening, config)]
        if not ours:
            raise
        listening = host.sockets[ours[0]]
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


# ---------------------------------------------------------------------- 3. commit

def _commit(host: Host, new: Config, the_plan: Plan, prepared: _Prepared
            ) -> dict[str, ListeningSocket]:
    """The commit point: synchronous, and nothing here fails for the config's
    sake.  Returns the listening sockets retired (by their old names)."""
    sockets = the_plan.sockets
    table: dict[str, ListeningSocket] = {}
    for name in new.sockets:
        if name in prepared.fresh:
            table[name] = prepared.fresh[name]
        elif name in sockets.take_over:
            table[name] = host.sockets[sockets.take_over[name]]
            log.info("socket %s takes over the listening socket of %s (%s)", name,
                     sockets.take_over[name], table[name].address)
        else:
            table[name] = host.sockets[name]
    for name in sockets.in_place:
        table[name].config = new.sockets[name]
    retiring = host.commit_config(new, table, prepared.watchers)
    prepared.committed()
    return retiring


# ---------------------------------------------------------------------- 4. watchers

async def _move_watchers(host: Host, new: Config, the_plan: Plan, prepared: _Prepared
                         ) -> dict[str, BaseException]:
    """Removed watchers stop, scaled and updated ones take the new settings,
    changed ones roll, added ones start; the rolls that failed, by watcher name."""
    watchers = the_plan.watchers
    await asyncio.gather(*(host.remove_watcher(name) for name in watchers.remove))
    for name in watchers.scale + watchers.update:   # in place: no worker replaced
        watcher = host.watchers.get(name)
        if watcher is None:   # removed by a command meanwhile
            continue
        await watcher.replace_config(new.watchers[name])
        if name in watchers.scale:
            await watcher.set_numprocesses(new.watchers[name].numprocesses)
    rolling = [(name, host.watchers[name]) for name in watchers.roll
               if name in host.watchers]
    results = await asyncio.gather(
        *(_reload_or_keep_stopped(watcher, new.watchers[name]) for name, watcher in rolling),
        return_exceptions=True)
    failures = {name: result for (name, _), result in zip(rolling, results)
                if isinstance(result, BaseException)}
    # As at start-up: by Circus's priority, highest first, each group together
    # (each waits for its first generation to be ready) before the next.
    added = [w for w in prepared.watchers.values() if w.config.autostart]
    for group in priority_groups(added, lambda w: w.config):
        await asyncio.gather(*(w.start() for w in group))
    return failures


async def _reload_or_keep_stopped(watcher: Watcher, config: WatcherConfig
                                  ) -> dict[str, Any]:
    """A watcher the operator stopped stays stopped: it only takes the new config."""
    if watcher.state == WatcherState.STOPPED:
        return await watcher.replace_config(config)
    return await watcher.reload(config)


# ---------------------------------------------------------------------- 5. retire

def _retire(host: Host, retiring: dict[str, ListeningSocket],
            failures: dict[str, BaseException]) -> None:
    """Close what nobody uses any more.  A watcher whose reload failed still runs
    its old workers, which hold the retired socket: it stays open until the last
    of them has exited (the next reload, a crash...) and the watcher no longer
    spawns on it (its rolled-back generation keeps the sockets it was started
    with: supervisor.retire_socket), then closes."""
    for name, listening in retiring.items():
        holders = [worker for failed in failures if failed in host.watchers
                   for worker in host.watchers[failed].workers.values()
                   if name in worker.config.sockets and worker.alive]
        host.retire_socket(name, listening, holders)
