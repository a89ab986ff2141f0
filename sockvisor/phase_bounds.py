"""How long start-up, a reload and a stop can take, by the config.

sockvisor tells systemd (EXTEND_TIMEOUT_USEC) at the start of each phase, so that
a unit's TimeoutStartSec= or TimeoutStopSec= shorter than what the config allows
does not cut short a start, reload or stop that is going as configured.  systemd
only uses an extension that goes beyond the unit's own timeout, so asking costs
nothing when the unit allows enough.  The bounds are for a phase that goes as
configured, not for the worst case: a watcher in backoff, or a reload queued
behind another, can take longer, and then the unit's own timeout decides.
"""

from __future__ import annotations

from typing import Iterable

from sockvisor.config import Config, WatcherConfig, priority_groups

# For what no option bounds: forking, reaping, the control round trip, one
# backoff step.  Generous, since the cost of too little is a killed supervisor.
MARGIN = 10.0


def start(config: Config) -> float:
    """First generation of every autostart watcher ready and settled: in
    parallel within a priority, one priority after the other."""
    return sum(_readiness(group) for group in _groups(config)) + MARGIN


def reload(old: Config, new: Config) -> float:
    """reloadconfig from `old` to `new`, in reconfigure/apply.py's order: removed watchers
    stop (graceful_timeout), then kept ones roll (per batch, the new workers get
    ready_timeout to be ready, then ready_settle to stay alive, and the old ones
    graceful_timeout to exit), then added ones start (ready_timeout, ready_settle);
    each step's watchers in parallel."""
    removed = [w for name, w in old.watchers.items() if name not in new.watchers]
    kept = [w for name, w in new.watchers.items() if name in old.watchers]
    added = [w for name, w in new.watchers.items() if name not in old.watchers]
    return (_stopping(removed) + max((_rolling(w) for w in kept), default=0.0)
            + _readiness(added) + MARGIN)


def stop(config: Config) -> float:
    """Every watcher stopped (graceful_timeout, then SIGKILL): in parallel
    within a priority, one priority after the other."""
    return sum(_stopping(group) for group in _groups(config)) + MARGIN


def _groups(config: Config) -> list[list[WatcherConfig]]:
    return priority_groups(config.watchers.values(), lambda w: w)


def _readiness(watchers: Iterable[WatcherConfig]) -> float:
    return max((w.ready.timeout + w.ready_settle for w in watchers if w.autostart),
               default=0.0)


def _stopping(watchers: Iterable[WatcherConfig]) -> float:
    return max((w.graceful_timeout for w in watchers), default=0.0)


def _rolling(watcher: WatcherConfig) -> float:
    count = max(watcher.numprocesses, 1)
    batch = watcher.reload_batch or count
    batches = -(-count // batch)
    return batches * (watcher.ready.timeout + watcher.ready_settle
                      + watcher.graceful_timeout)
