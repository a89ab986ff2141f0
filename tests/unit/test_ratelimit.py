"""The rate limiter behind output warnings: one line per kind per interval, and
the next line says how many were kept quiet (a fake clock, no waiting)."""

from __future__ import annotations

import logging

from sockvisor.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_warning_per_kind_per_interval(caplog):
    clock = Clock()
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        # A full disk: a failure per 64 kB chunk, 60 a second, for 10 seconds.
        logged = 0
        for _ in range(600):
            logged += limiter.warning(("out.log", 28), "cannot write %s", "out.log")
            clock.now += 1 / 60
        assert logged == 1
        # Another kind of failure is not hidden behind the first.
        assert limiter.warning(("err.log", 28), "cannot write %s", "err.log")
        clock.now += 25   # 35 s after the first: the next one is logged, with the count
        assert limiter.warning(("out.log", 28), "cannot write %s", "out.log")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["cannot write out.log", "cannot write err.log",
                        "cannot write out.log (and 599 more like it in the last 35s)"]


def test_nothing_suppressed_says_nothing_extra(caplog):
    clock = Clock()
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        limiter.warning("k", "gone")
        clock.now += 31
        limiter.warning("k", "gone")
    assert [r.getMessage() for r in caplog.records] == ["gone", "gone"]
