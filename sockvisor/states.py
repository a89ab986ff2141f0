"""Lifecycle states of workers and watchers, and the only transitions allowed.

Pure data, no I/O.  A worker's life is a line (`WORKER_TRANSITIONS`).  A
watcher's is a table, as in s6-supervise: for every (state, event) pair one
`Cell` says what happens -- a transition (`GO`, to one of the listed states), an
event handled without a change of state (`STAY`), an event that means nothing in
that state (`IGNORED`), or one that cannot happen there (`IMPOSSIBLE`: a bug if
it does, raised as TransitionError where it happens).  `watcher.Watcher` sends
every event through `decide` and changes state nowhere else; `status NAME`
shows the row of its current state, `python3 -m sockvisor.states` prints the
whole table (docs/lifecycle.md is that output), and a unit test walks every cell.

Events are the control commands (start, stop, restart, reload, scale), what the
workers do (an unexpected exit the restart policy answers with a replacement
now, later, or never; a ready_timeout), the backoff timer, and the milestones of
a command that waits (the start is over, a reload batch settled, the reload is
over, the last worker exited).  A command that awaits anything sends its next
event on waking up and looks at the state it gets back: it never assumes that
the state it left is the one it finds (a worker may have died, the watcher gone
FATAL, in between).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class WorkerState(enum.Enum):
    STARTING = "starting"   # forked; exec not yet confirmed or not yet ready
    RUNNING = "running"     # ready: counted as serving
    STOPPING = "stopping"   # stop signal sent, waiting for the exit
    EXITED = "exited"       # reaped


class WatcherState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"     # spawning, until every worker is ready
    ACTIVE = "active"
    BACKOFF = "backoff"       # a start failed: no spawning until the delay is over
    RELOADING = "reloading"   # a rolling replacement is in progress
    STOPPING = "stopping"
    FATAL = "fatal"           # kept failing to start; no more spawning until `start`
    WAITING = "waiting"       # on_demand: no spawning until a connection is pending


class WatcherEvent(enum.Enum):
    # commands (serialised per watcher: one runs at a time, the others queue)
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    RELOAD = "reload"
    SCALE = "scale"                    # incr, decr, numprocesses
    HUP = "hup"                        # reload of a send_hup watcher: SIGHUP, no new workers
    # what the workers and the restart policy do
    WORKER_EXIT = "worker_exit"        # an unexpected exit; replaced at once (if at all)
    START_FAILED = "start_failed"      # an exit or fork failure the policy delays
    RESTART_LIMIT = "restart_limit"    # too many failed starts: give up
    BACKOFF_ELAPSED = "backoff_elapsed"
    READY_TIMEOUT = "ready_timeout"    # a worker not ready within ready_timeout
    # on_demand (Circus's): a connection pending on one of the watcher's sockets,
    # and the exit of a worker, which is replaced only at the next connection
    DEMAND = "demand"
    IDLE = "idle"
    # milestones of the command in progress
    STARTED = "started"                # every worker ready (or none coming)
    SETTLE_ELAPSED = "settle_elapsed"  # a reload batch is ready and settled
    RELOAD_DONE = "reload_done"        # the reload is over (finished or rolled back)
    ALL_EXITED = "all_exited"          # a stop's last worker is gone


class TransitionError(RuntimeError):
    pass


class Kind(enum.Enum):
    GO = "go"
    STAY = "stay"
    IGNORED = "ignored"
    IMPOSSIBLE = "impossible"


@dataclass(frozen=True)
class Cell:
    kind: Kind
    why: str
    to: tuple[WatcherState, ...] = ()   # GO: the possible next states, default first


def _go(*to: WatcherState, why: str) -> Cell:
    return Cell(Kind.GO, why, to)


def _stay(why: str) -> Cell:
    return Cell(Kind.STAY, why)


def _ignored(why: str) -> Cell:
    return Cell(Kind.IGNORED, why)


def _impossible(why: str) -> Cell:
    return Cell(Kind.IMPOSSIBLE, why)


S, E = WatcherState, WatcherEvent

_SERIALISED = ("commands on a watcher are serialised: the one queued behind a "
               "command sees the state that command left")
_NO_POLICY = "the restart policy is consulted only while the watcher wants workers"
_NO_TIMER = "the backoff timer exists only in BACKOFF (leaving BACKOFF cancels it)"
_NOT_WAITING = "no command of this state waits for it"
_HUP = "SIGHUP to every worker: each reloads itself and keeps its pid (send_hup)"
_NO_DEMAND = "only WAITING watches the sockets for a connection"
_IDLE_ONLY = ("sent only in STARTING and ACTIVE: elsewhere an on_demand worker's "
              "exit is a worker_exit like any other")

WATCHER_TABLE: dict[WatcherState, dict[WatcherEvent, Cell]] = {
    S.STOPPED: {
        E.START: _go(S.STARTING, S.WAITING, why="spawn numprocesses workers, wait until "
                     "ready; on_demand: wait for a connection first"),
        E.STOP: _ignored("nothing runs"),
        E.RESTART: _go(S.STARTING, S.WAITING, why="nothing to stop: a start"),
        E.RELOAD: _go(S.STARTING, S.WAITING, why="a start, with the new config"),
        E.SCALE: _stay("only the desired count changes"),
        E.HUP: _go(S.STARTING, S.WAITING, why="nothing to signal: a start, as Circus does"),
        E.WORKER_EXIT: _ignored("no replacement while stopped"),
        E.START_FAILED: _impossible(_NO_POLICY),
        E.RESTART_LIMIT: _impossible(_NO_POLICY),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _ignored("the worker is being stopped anyway"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.STARTED: _ignored(_NOT_WAITING),
        E.SETTLE_ELAPSED: _ignored(_NOT_WAITING),
        E.RELOAD_DONE: _impossible("a reload of a stopped watcher is a start"),
        E.ALL_EXITED: _ignored("already stopped"),
    },
    S.STARTING: {
        E.START: _stay("already starting: answers once the start is over"),
        E.STOP: _go(S.STOPPING, why="stop every worker"),
        E.RESTART: _go(S.STOPPING, why="stop every worker, then START"),
        E.RELOAD: _go(S.RELOADING, why="roll to a new generation"),
        E.SCALE: _stay("spawn or retire at once"),
        E.HUP: _stay("SIGHUP to every worker; the start goes on"),
        E.WORKER_EXIT: _stay("replaced at once"),
        E.START_FAILED: _go(S.BACKOFF, why="wait before the next start"),
        E.RESTART_LIMIT: _go(S.FATAL, why="too many failed starts: no more spawning"),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _stay("the worker is stopped; its exit counts as a failed start"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _go(S.WAITING, why="on_demand: a worker exited on its own; "
                                    "replacements wait for the next connection (Circus)"),
        E.STARTED: _go(S.ACTIVE, why="every worker ready"),
        E.SETTLE_ELAPSED: _ignored(_NOT_WAITING),
        E.RELOAD_DONE: _impossible("only RELOADING has a reload to end"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
    S.ACTIVE: {
        E.START: _ignored("already started"),
        E.STOP: _go(S.STOPPING, why="stop every worker"),
        E.RESTART: _go(S.STOPPING, why="stop every worker, then START"),
        E.RELOAD: _go(S.RELOADING, why="roll to a new generation"),
        E.SCALE: _stay("spawn or retire at once"),
        E.HUP: _stay(_HUP),
        E.WORKER_EXIT: _stay("replaced at once"),
        E.START_FAILED: _go(S.BACKOFF, why="wait before the next start"),
        E.RESTART_LIMIT: _go(S.FATAL, why="too many failed starts: no more spawning"),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _stay("the worker is stopped; its exit counts as a failed start"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _go(S.WAITING, why="on_demand: a worker exited on its own; "
                                    "replacements wait for the next connection (Circus)"),
        E.STARTED: _ignored("already started"),
        E.SETTLE_ELAPSED: _ignored(_NOT_WAITING),
        E.RELOAD_DONE: _impossible("only RELOADING has a reload to end"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
    S.BACKOFF: {
        E.START: _ignored("the backoff runs out first (or `restart` now)"),
        E.STOP: _go(S.STOPPING, why="stop every worker; the backoff is dropped"),
        E.RESTART: _go(S.STOPPING, why="stop every worker, then START"),
        E.RELOAD: _go(S.RELOADING, why="a reload is a fresh attempt: the backoff is dropped"),
        E.SCALE: _stay("retire at once; new workers start when the backoff ends"),
        E.HUP: _stay("SIGHUP to the workers alive; the backoff holds"),
        E.WORKER_EXIT: _stay("its replacement waits for the backoff"),
        E.START_FAILED: _go(S.BACKOFF, why="again: the delay starts over, longer"),
        E.RESTART_LIMIT: _go(S.FATAL, why="too many failed starts: no more spawning"),
        E.BACKOFF_ELAPSED: _go(S.STARTING, why="spawn what is missing"),
        E.READY_TIMEOUT: _stay("the worker is stopped; its exit counts as a failed start"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.STARTED: _ignored("the backoff holds; STARTING follows it"),
        E.SETTLE_ELAPSED: _ignored(_NOT_WAITING),
        E.RELOAD_DONE: _impossible("only RELOADING has a reload to end"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
    S.RELOADING: {
        E.START: _impossible(_SERIALISED),
        E.STOP: _go(S.STOPPING, why="sockvisor stops (the reload was cancelled)"),
        E.RESTART: _impossible(_SERIALISED),
        E.RELOAD: _impossible(_SERIALISED),
        E.SCALE: _impossible(_SERIALISED),
        E.HUP: _impossible(_SERIALISED),
        E.WORKER_EXIT: _stay("an old worker: replaced from the new generation; a "
                             "candidate: the reload aborts"),
        E.START_FAILED: _stay("its replacement waits; the reload's end goes to BACKOFF "
                              "if the delay is not over"),
        E.RESTART_LIMIT: _go(S.FATAL, why="no more spawning: the reload stops at its "
                                           "next step and fails saying so"),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _stay("a candidate: the reload aborts; an old worker: stopped"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.STARTED: _ignored("a reload waits for its batches to settle"),
        E.SETTLE_ELAPSED: _stay("retire as many old workers, next batch"),
        E.RELOAD_DONE: _go(S.ACTIVE, S.BACKOFF,
                           why="ACTIVE; BACKOFF if a failed start's delay is not over"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
    S.STOPPING: {
        # Only an immediate stop (SIGQUIT) holds no lock: a command queued behind
        # the one it cancelled then finds the watcher stopping.
        E.START: _ignored("sockvisor is stopping it"),
        E.STOP: _ignored("already stopping"),
        E.RESTART: _ignored("sockvisor is stopping it"),
        E.RELOAD: _ignored("sockvisor is stopping it"),
        E.SCALE: _stay("only the desired count changes"),
        E.HUP: _ignored("sockvisor is stopping it"),
        E.WORKER_EXIT: _ignored("no replacement while stopping"),
        E.START_FAILED: _impossible(_NO_POLICY),
        E.RESTART_LIMIT: _impossible(_NO_POLICY),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _ignored("the worker is being stopped anyway"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.STARTED: _ignored(_NOT_WAITING),
        E.SETTLE_ELAPSED: _ignored("the reload was cancelled by a stop"),
        E.RELOAD_DONE: _ignored("the reload was cancelled by a stop"),
        E.ALL_EXITED: _go(S.STOPPED, why="the last worker is gone"),
    },
    S.FATAL: {
        E.START: _go(S.STARTING, why="the restart policy starts over; spawn what is missing"),
        E.STOP: _go(S.STOPPING, why="stop the workers left"),
        E.RESTART: _go(S.STOPPING, why="stop the workers left, then START"),
        E.RELOAD: _go(S.RELOADING, S.STARTING,
                      why="the policy starts over: roll the workers left, or start "
                          "if none is left"),
        E.SCALE: _stay("only the desired count changes"),
        E.HUP: _go(S.STARTING, why="the policy starts over: SIGHUP to the workers "
                                   "left, spawn the missing ones"),
        E.WORKER_EXIT: _ignored("no replacement while FATAL"),
        E.START_FAILED: _impossible(_NO_POLICY),
        E.RESTART_LIMIT: _impossible(_NO_POLICY),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.READY_TIMEOUT: _stay("the worker is stopped: it will never be ready"),
        E.DEMAND: _ignored(_NO_DEMAND),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.STARTED: _ignored(_NOT_WAITING),
        E.SETTLE_ELAPSED: _ignored("went FATAL during a reload: the reload stops and "
                                   "fails saying so"),
        E.RELOAD_DONE: _ignored("went FATAL during a reload: FATAL wins, the reload "
                                "fails saying so"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
    S.WAITING: {
        # on_demand: no worker is spawned until a connection is pending on one of
        # the watcher's sockets (sockvisor watches them without accepting).  Workers
        # left from before (Circus stops replacing at a worker's exit) keep running.
        E.START: _ignored("already started: waiting for a connection"),
        E.STOP: _go(S.STOPPING, why="stop the workers left; stop watching the sockets"),
        E.RESTART: _go(S.STOPPING, why="stop the workers left, then START (waiting again)"),
        E.RELOAD: _go(S.WAITING, S.RELOADING,
                      why="no worker left: the next start takes the new config; else "
                          "roll the ones left"),
        E.HUP: _stay("SIGHUP to the workers left, if any"),
        E.SCALE: _stay("only the desired count changes: spawning waits for a connection"),
        E.WORKER_EXIT: _ignored("replacements wait for the next connection"),
        E.START_FAILED: _impossible(_NO_POLICY),
        E.RESTART_LIMIT: _impossible(_NO_POLICY),
        E.BACKOFF_ELAPSED: _impossible(_NO_TIMER),
        E.DEMAND: _go(S.STARTING, why="a connection is pending: spawn what is missing; "
                                      "a worker accepts it"),
        E.IDLE: _impossible(_IDLE_ONLY),
        E.READY_TIMEOUT: _stay("a worker left is stopped; its exit is replaced at the "
                               "next connection"),
        E.STARTED: _ignored(_NOT_WAITING),
        E.SETTLE_ELAPSED: _ignored(_NOT_WAITING),
        E.RELOAD_DONE: _impossible("only RELOADING has a reload to end"),
        E.ALL_EXITED: _impossible("only a stop waits for the last exit"),
    },
}

# States in which a watcher wants its workers alive (BACKOFF: but spawns later).
WATCHER_WANTS_WORKERS = frozenset({WatcherState.STARTING, WatcherState.ACTIVE,
                                   WatcherState.BACKOFF, WatcherState.RELOADING})


def decide(state: WatcherState, event: WatcherEvent,
           choice: WatcherState | None = None) -> tuple[Cell, WatcherState]:
    """The cell of (state, event) and the state that follows; `choice` picks one
    of a GO cell's targets (default: the first).  TransitionError if impossible."""
    cell = WATCHER_TABLE[state][event]
    if cell.kind is Kind.IMPOSSIBLE:
        raise TransitionError(f"{event.value} cannot happen in {state.value}: {cell.why}")
    if cell.kind is not Kind.GO:
        return cell, state
    target = cell.to[0] if choice is None else choice
    if target not in cell.to:
        raise TransitionError(f"{event.value} in {state.value} leads to "
                              f"{'/'.join(s.value for s in cell.to)}, not {target.value}")
    return cell, target


def row(state: WatcherState) -> dict[str, str]:
    """What each event does in `state`: a next state, "stay" or "ignored"
    (impossible events are left out), as `status NAME` shows it."""
    shown = {}
    for event, cell in WATCHER_TABLE[state].items():
        if cell.kind is Kind.GO:
            shown[event.value] = "/".join(s.value for s in cell.to)
        elif cell.kind is not Kind.IMPOSSIBLE:
            shown[event.value] = cell.kind.value
    return shown


def table_markdown() -> str:
    """The whole table, one section per state (docs/lifecycle.md)."""
    lines = ["# Watcher lifecycle", "",
             "Generated by `python3 -m sockvisor.states` from `WATCHER_TABLE` "
             "(sockvisor/states.py): every (state, event) pair, decided.", ""]
    for state, cells in WATCHER_TABLE.items():
        lines += [f"## {state.value}", "", "| event | outcome | why |", "|---|---|---|"]
        for event, cell in cells.items():
            outcome = ("→ " + " / ".join(s.value for s in cell.to) if cell.kind is Kind.GO
                       else cell.kind.value)
            lines.append(f"| {event.value} | {outcome} | {cell.why} |")
        lines.append("")
    return "\n".join(lines)


WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.RUNNING, WorkerState.STOPPING,
                                     WorkerState.EXITED}),
    WorkerState.RUNNING: frozenset({WorkerState.STOPPING, WorkerState.EXITED}),
    WorkerState.STOPPING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}


def check_transition(table: dict, current: enum.Enum, new: enum.Enum) -> None:
    if new not in table[current]:
        raise TransitionError(f"{current.value} -> {new.value} is not a valid transition")


if __name__ == "__main__":
    print(table_markdown())
