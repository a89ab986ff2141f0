"""Rate-limited warnings: one line per kind of failure per interval, not one per event.

A failure that repeats with every chunk of worker output (a full disk, a log
folder that is gone, a reader that stalls) would otherwise write a warning
60 times a second, drowning everything else and filling the journal.  The first
occurrence of a kind is logged at once; repeats within `interval` seconds are
only counted, and the next line logged for that kind says how many were kept
quiet.  A kind is whatever the caller says identifies "the same failure", e.g.
(file, errno).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Hashable

DEFAULT_INTERVAL = 30.0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def warning(self, kind: Hashable, message: str, *args: Any) -> bool:
        """Log `message % args` unless `kind` was logged less than `interval` ago;
        True if it was logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed and last is not None:
            message += " (and %d more like it in the last %ds)"
            args = (*args, suppressed, round(now - last))
        self.logger.warning(message, *args)
        return True
