"""sockvisor.backoff: when a dead worker comes back, and when a watcher gives up.

Pure logic on a fake clock: no process, no sleep.
"""

from __future__ import annotations

import pytest

from sockvisor.backoff import RestartTracker
from sockvisor.config import UNLIMITED_RESTARTS, RestartPolicy

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(**policy) -> tuple[RestartTracker, Clock]:
    clock = Clock()
    return RestartTracker(RestartPolicy(**policy), clock), clock


def test_failed_starts_back_off_exponentially_up_to_the_cap():
    restarts, _ = tracker(backoff_base=0.1, backoff_max=1.0, max_restarts=100)
    delays = [restarts.on_exit(uptime=0.0).delay for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_a_healthy_worker_is_replaced_at_once_and_the_backoff_starts_over():
    restarts, _ = tracker(backoff_base=0.1, min_uptime=1.0, max_restarts=100)
    restarts.on_exit(uptime=0.0)
    restarts.on_exit(uptime=0.0)
    healthy = restarts.on_exit(uptime=5.0)
    assert (healthy.delay, healthy.fatal) == (0.0, False)
    assert restarts.on_exit(uptime=0.0).delay == pytest.approx(0.1)


def test_too_many_failed_starts_within_the_window_is_fatal():
    restarts, clock = tracker(max_restarts=2, window=60.0)
    assert not restarts.on_exit(uptime=0.0).fatal
    clock.now += 10
    assert not restarts.on_exit(uptime=0.0).fatal
    clock.now += 10
    third = restarts.on_exit(uptime=0.0)
    assert third.fatal and "3 failed starts within 60s" in third.reason


def test_failed_starts_older_than_the_window_are_forgotten():
    restarts, clock = tracker(max_restarts=2, window=60.0)
    for _ in range(10):
        assert not restarts.on_exit(uptime=0.0).fatal
        clock.now += 31      # never three within 60 s


def test_unlimited_restarts_never_go_fatal_and_the_backoff_stays_finite():
    """An endless crash loop (Circus's max_retry = -1): thousands of failed starts
    in a row, each still spaced by backoff_max -- 2**n must not overflow."""
    restarts, clock = tracker(max_restarts=UNLIMITED_RESTARTS, backoff_base=0.1,
                              backoff_max=10.0, window=60.0)
    for _ in range(5000):
        decision = restarts.on_exit(uptime=0.0)
        assert not decision.fatal
        clock.now += decision.delay
    assert decision.delay == 10.0
    assert not restarts.failures     # nothing is counted, so nothing is kept


def test_a_window_shorter_than_the_backoff_survives_a_long_crash_loop():
    """max_restarts is never reached when failures fall out of a short window; the
    consecutive count still grows without bound."""
    restarts, clock = tracker(max_restarts=1, window=1.0, backoff_base=2.0,
                              backoff_max=5.0)
    for _ in range(3000):
        decision = restarts.on_exit(uptime=0.0)
        assert not decision.fatal
        clock.now += decision.delay
    assert decision.delay == 5.0
