"""When a log file rotates by time, and what its rotated copies are called.

Circus's TimedRotatingFileStream, which follows Python's
`logging.handlers.TimedRotatingFileHandler`: `rotate_when` is S, M, H (every
`rotate_interval` seconds, minutes, hours), D (days), MIDNIGHT (at midnight), or
W0-W6 (at the midnight that ends that weekday, Monday = 0); NAME is renamed to
NAME.SUFFIX, the start of the period it covers (`%Y%m%d%H%M%S` for S,
`%Y%m%d%H%M` for M, `%Y%m%d%H` for H, `%Y%m%d` for the others), in local time or
UTC; the oldest copies beyond `backup_count` are deleted (0: all are kept).  As
in Circus, the rotation happens at the first write after the time is reached,
and the first period of an existing file counts from its mtime.

Pure computation: output.py's LogFile does the renames (inside its folder fd).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_DAY = 24 * 60 * 60
_UNITS = {"S": (1, "%Y%m%d%H%M%S", r"\d{14}"), "M": (60, "%Y%m%d%H%M", r"\d{12}"),
          "H": (60 * 60, "%Y%m%d%H", r"\d{10}"), "D": (_DAY, "%Y%m%d", r"\d{8}"),
          "MIDNIGHT": (_DAY, "%Y%m%d", r"\d{8}")}
WHEN_VALUES = "S, M, H, D, midnight or W0-W6"


def parse_when(raw: str) -> str:
    """`rotate_when`, upper-cased (Python's logging accepts any case)."""
    when = raw.strip().upper()
    if when in _UNITS or re.fullmatch(r"W[0-6]", when):
        return when
    raise ValueError(f"expected {WHEN_VALUES}, got {raw.strip()!r}")


@dataclass(frozen=True)
class Schedule:
    when: str
    interval: int = 1     # rotate_interval: how many units per period
    utc: bool = False

    @property
    def seconds(self) -> int:
        unit = 7 * _DAY if self.when.startswith("W") else _UNITS[self.when][0]
        return unit * self.interval

    @property
    def suffix_format(self) -> str:
        return "%Y%m%d" if self.when.startswith("W") else _UNITS[self.when][1]

    def is_rotated_name(self, name: str, base: str) -> bool:
        """Is `name` a copy of `base` this schedule made (NAME.SUFFIX)?"""
        pattern = r"\d{8}" if self.when.startswith("W") else _UNITS[self.when][2]
        return (name.startswith(base + ".")
                and re.fullmatch(pattern, name[len(base) + 1:]) is not None)

    def _struct(self, when: float) -> time.struct_time:
        return time.gmtime(when) if self.utc else time.localtime(when)

    def next_rollover(self, now: float) -> float:
        """The first rotation time after a period that starts at `now`."""
        if self.when != "MIDNIGHT" and not self.when.startswith("W"):
            return now + self.seconds
        t = self._struct(now)
        midnight = now + _DAY - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)
        if self.when == "MIDNIGHT":
            return midnight
        # The midnight that ends weekday N (as logging does: on that weekday
        # itself, tonight's).
        return midnight + ((int(self.when[1]) - t.tm_wday) % 7) * _DAY

    def after(self, now: float) -> float:
        """The rotation time following one done at `now`."""
        following = self.next_rollover(now)
        while following <= now:
            following += self.seconds
        return following

    def suffix(self, rollover_at: float) -> str:
        """NAME.SUFFIX for the period that ends at `rollover_at`: its start."""
        return time.strftime(self.suffix_format, self._struct(rollover_at - self.seconds))
