"""The restart policy: how long to wait before the next start, and when to give up.

Pure logic over an injectable clock, so it is tested without sleeping.  A worker
that dies before `min_uptime` is a *failed start*: the next start waits
`backoff_base * 2**(n-1)` seconds (capped at `backoff_max`), and more than
`max_restarts` failed starts inside `window` seconds make the watcher FATAL
(never, with UNLIMITED_RESTARTS: Circus's `max_retry = -1`).  A
worker that ran at least `min_uptime` was healthy: it is replaced at once and the
backoff starts over.  Counting only failed starts keeps a long-running worker
that is killed now and then (OOM, an operator's kill -9) from ever looking like
a crash loop.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable

from sockvisor.config import UNLIMITED_RESTARTS, RestartPolicy

# The doubling stops here: an unbounded 2**n raises OverflowError (as a float)
# after ~1000 failed starts in a row -- an endless crash loop with max_restarts
# unlimited, or a restart_window shorter than the backoff.  backoff_max caps the
# delay long before, for any base above 1e-18 s.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class Decision:
    delay: float          # seconds to wait before the replacement starts
    fatal: bool           # stop spawning: the watcher keeps failing
    reason: str = ""


class RestartTracker:
    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.failures: collections.deque[float] = collections.deque()
        self.consecutive = 0

    def on_exit(self, uptime: float) -> Decision:
        """Record a worker's death after `uptime` seconds and decide what follows."""
        if uptime >= self.policy.min_uptime:
            self.consecutive = 0
            return Decision(0.0, False)
        now = self.clock()
        self.consecutive += 1
        if self.policy.max_restarts == UNLIMITED_RESTARTS:
            return Decision(self._delay(), False)   # nothing to count: no history
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.policy.window:
            self.failures.popleft()
        if len(self.failures) > self.policy.max_restarts:
            return Decision(0.0, True,
                            f"{len(self.failures)} failed starts within "
                            f"{self.policy.window:g}s (max_restarts = "
                            f"{self.policy.max_restarts})")
        return Decision(self._delay(), False)

    def _delay(self) -> float:
        exponent = min(self.consecutive - 1, _MAX_EXPONENT)
        return min(self.policy.backoff_base * 2 ** exponent, self.policy.backoff_max)

    def reset(self) -> None:
        self.failures.clear()
        self.consecutive = 0

    def snapshot(self) -> dict:
        """The history, for an upgrade (handover.py): monotonic times survive exec."""
        return {"failures": list(self.failures), "consecutive": self.consecutive}

    def restore(self, data: dict) -> None:
        self.failures.extend(data["failures"])
        self.consecutive = data["consecutive"]
