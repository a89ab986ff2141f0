"""Lifecycle states of workers and watchers, and the only transitions allowed.

Pure data, no I/O: `process.Worker` and `watcher.Watcher` call `check_transition`
from the one method each has that changes state, so an impossible transition is
a bug caught where it happens rather than a confusing status later.
"""

from __future__ import annotations

import enum


class WorkerState(enum.Enum):
    STARTING = "starting"   # forked; exec not yet confirmed or not yet ready
    RUNNING = "running"     # ready: counted as serving
    STOPPING = "stopping"   # stop signal sent, waiting for the exit
    EXITED = "exited"       # reaped


class WatcherState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"     # spawning the first generation, waiting for readiness
    ACTIVE = "active"
    RELOADING = "reloading"   # a rolling replacement is in progress
    STOPPING = "stopping"
    FATAL = "fatal"           # kept failing to start; no more spawning until `start`


class TransitionError(RuntimeError):
    pass


WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.RUNNING, WorkerState.STOPPING,
                                     WorkerState.EXITED}),
    WorkerState.RUNNING: frozenset({WorkerState.STOPPING, WorkerState.EXITED}),
    WorkerState.STOPPING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}

WATCHER_TRANSITIONS: dict[WatcherState, frozenset[WatcherState]] = {
    WatcherState.STOPPED: frozenset({WatcherState.STARTING, WatcherState.STOPPING}),
    WatcherState.STARTING: frozenset({WatcherState.ACTIVE, WatcherState.STOPPING,
                                      WatcherState.FATAL}),
    WatcherState.ACTIVE: frozenset({WatcherState.RELOADING, WatcherState.STOPPING,
                                    WatcherState.FATAL, WatcherState.STARTING}),
    WatcherState.RELOADING: frozenset({WatcherState.ACTIVE, WatcherState.STOPPING,
                                       WatcherState.FATAL}),
    WatcherState.STOPPING: frozenset({WatcherState.STOPPED}),
    WatcherState.FATAL: frozenset({WatcherState.STARTING, WatcherState.STOPPING}),
}

# States in which a watcher wants its workers alive and replaces the dead.
WATCHER_WANTS_WORKERS = frozenset({WatcherState.STARTING, WatcherState.ACTIVE,
                                   WatcherState.RELOADING})


def check_transition(table: dict, current: enum.Enum, new: enum.Enum) -> None:
    if new not in table[current]:
        raise TransitionError(f"{current.value} -> {new.value} is not a valid transition")
