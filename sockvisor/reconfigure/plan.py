"""What a reloadconfig has to do: a pure function of the running config and the new one.

`plan(old, new)` compares two `Config`s and says, by section name:

sockets
  * `bind`: new sections, and sections whose address changed, that nobody
    listens on yet: bound afresh.
  * `take_over`: a new or moved section whose address an old section that goes
    away or moves already listens on (a renamed section, two sections swapping
    addresses) takes that listening socket: binding it anew would fail with
    EADDRINUSE, and its accept queue is as precious as any.
  * `retire`: old sections whose listening socket nobody takes: closed once
    the workers holding it are gone.
  * `in_place`: a listening socket that stays (same address, or taken over)
    but whose settings differ: backlog (listen() again), blocking, a unix
    socket's mode/owner/group.  `unchanged`: same section, same settings.
  A socket whose address did not change is never rebound, whatever else changed.

watchers
  * `add`, `remove`; `roll` (a rolling reload: new workers, then the old ones
    retire); `scale` (a new `numprocesses`: workers started or stopped, none
    replaced); `update` (the watcher takes the new settings, e.g. a new
    graceful_timeout, and its workers are left alone); `unchanged`.
  Which of these a changed section needs is the option registry's answer
  (config/options.py, `change_kind`), read in one place, `_watcher_change`;
  besides that, a watcher whose socket moves rolls, since its workers hold
  the old socket.

`old` is what runs, not what the file said last time: the applier passes the
running watchers' configs (`set` and `add` change those without touching the
file).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from sockvisor.config import Change, Config, SocketConfig, WatcherConfig, change_kind


def same_address(old: SocketConfig, new: SocketConfig) -> bool:
    return (old.family, old.host, old.port, old.path) == (new.family, new.host, new.port,
                                                          new.path)


def _watcher_change(old: WatcherConfig, new: WatcherConfig) -> Change | None:
    """The one step that takes a running watcher from `old` to `new` (None:
    nothing changed): the heaviest of what the registry says its changed
    options need."""
    kinds = change_kind(old, new)
    for step in (Change.RESTART, Change.SCALE, Change.IN_PLACE):
        if step in kinds:
            return step
    return None


@dataclass(frozen=True)
class SocketPlan:
    bind: tuple[str, ...] = ()
    take_over: Mapping[str, str] = dataclasses.field(default_factory=dict)  # new <- old
    retire: tuple[str, ...] = ()
    in_place: Mapping[str, str] = dataclasses.field(default_factory=dict)   # new <- old
    unchanged: tuple[str, ...] = ()
    # For the reply: sections added, removed, and whose address changed.
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()

    @property
    def going(self) -> tuple[str, ...]:
        """Old sections whose listening socket leaves its name (moved or removed)."""
        return self.moved + self.removed


@dataclass(frozen=True)
class WatcherPlan:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    roll: tuple[str, ...] = ()
    scale: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    sockets: SocketPlan
    watchers: WatcherPlan

    def summary(self) -> dict[str, Any]:
        """The reloadconfig reply (its keys predate the plan)."""
        s, w = self.sockets, self.watchers
        return {"added": list(w.add), "removed": list(w.remove), "reloaded": list(w.roll),
                "scaled": list(w.scale), "updated": list(w.update),
                "unchanged": list(w.unchanged),
                "sockets_added": list(s.added), "sockets_removed": list(s.removed),
                "sockets_changed": list(s.moved), "sockets_taken_over": dict(s.take_over)}


def plan(old: Config, new: Config) -> Plan:
    sockets = _plan_sockets(old.sockets, new.sockets)
    return Plan(sockets, _plan_watchers(old.watchers, new.watchers, sockets.moved))


def _plan_sockets(old: Mapping[str, SocketConfig], new: Mapping[str, SocketConfig]
                  ) -> SocketPlan:
    added = tuple(n for n in new if n not in old)
    removed = tuple(n for n in old if n not in new)
    moved = tuple(n for n in new if n in old and not same_address(old[n], new[n]))
    going = moved + removed
    take_over: dict[str, str] = {}
    bind = []
    for name in added + moved:
        donor = next((g for g in going if g not in take_over.values()
                      and same_address(old[g], new[name])), None)
        if donor is None:
            bind.append(name)
        else:
            take_over[name] = donor
    retire = tuple(g for g in going if g not in take_over.values())
    in_place = {}
    unchanged = []
    for name in new:
        if name in old and name not in moved:
            if old[name] == new[name]:
                unchanged.append(name)
            else:
                in_place[name] = name
    # A taken-over socket always changes in place: at least its name.
    in_place.update(take_over)
    return SocketPlan(bind=tuple(bind), take_over=take_over, retire=retire,
                      in_place=in_place, unchanged=tuple(unchanged), added=added,
                      removed=removed, moved=moved)


def _plan_watchers(old: Mapping[str, WatcherConfig], new: Mapping[str, WatcherConfig],
                   moved_sockets: tuple[str, ...]) -> WatcherPlan:
    steps: dict[Change | None, list[str]] = {
        Change.RESTART: [], Change.SCALE: [], Change.IN_PLACE: [], None: []}
    for name, config in new.items():
        if name not in old:
            continue
        step = _watcher_change(old[name], config)
        if set(config.sockets) & set(moved_sockets):
            step = Change.RESTART   # its workers hold the old socket
        steps[step].append(name)
    return WatcherPlan(add=tuple(n for n in new if n not in old),
                       remove=tuple(n for n in old if n not in new),
                       roll=tuple(steps[Change.RESTART]),
                       scale=tuple(steps[Change.SCALE]),
                       update=tuple(steps[Change.IN_PLACE]),
                       unchanged=tuple(steps[None]))
