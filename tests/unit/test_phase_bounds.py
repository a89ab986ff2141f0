"""sockvisor.phase_bounds: what sockvisor asks systemd for (EXTEND_TIMEOUT_USEC)."""

from __future__ import annotations

import dataclasses

import pytest

from sockvisor import phase_bounds
from sockvisor.config import load

pytestmark = pytest.mark.timeout(10)


def config(tmp_path, body: str):
    path = tmp_path / "sv.ini"
    path.write_text("[sockvisor]\n" + body)
    return load(str(path), environ={"PATH": "/usr/bin:/bin"})


def test_the_slowest_watcher_bounds_each_phase(tmp_path):
    cfg = config(tmp_path, """
[watcher:quick]
cmd = sleep 1
ready_timeout = 5
graceful_timeout = 1

[watcher:slow]
cmd = sleep 1
numprocesses = 5
reload_batch = 2
ready_timeout = 30
ready_settle = 2
graceful_timeout = 20

[watcher:manual]
cmd = sleep 1
autostart = false
ready_timeout = 500
graceful_timeout = 3
""")
    margin = phase_bounds.MARGIN
    # Start-up: only autostart watchers start (ready, then settled).
    assert phase_bounds.start(cfg) == 30 + 2 + margin
    # slow: 3 batches (2, 2, 1) of ready_timeout + ready_settle + graceful_timeout;
    # manual: 1 batch (ready_settle: min_uptime, 1 s by default).
    assert phase_bounds.reload(cfg, cfg) == max(3 * (30 + 2 + 20), 500 + 1 + 3) + margin
    assert phase_bounds.stop(cfg) == 20 + margin


def test_reload_adds_up_its_steps(tmp_path):
    """Removed watchers stop, then kept ones roll, then added ones start: one
    after another, so their bounds add up."""
    old = config(tmp_path, """
[watcher:going]
cmd = sleep 1
graceful_timeout = 120

[watcher:web]
cmd = sleep 1
ready_timeout = 30
graceful_timeout = 60
""")
    new = config(tmp_path, """
[watcher:web]
cmd = sleep 1
ready_timeout = 30
graceful_timeout = 60

[watcher:api]
cmd = sleep 1
ready_timeout = 45
""")
    assert phase_bounds.reload(old, new) == (120 + (30 + 1 + 60) + (45 + 1)
                                             + phase_bounds.MARGIN)


def test_reload_batch_zero_is_one_batch_and_no_watcher_is_the_margin(tmp_path):
    cfg = config(tmp_path, """
[watcher:web]
cmd = sleep 1
numprocesses = 8
ready_timeout = 7
graceful_timeout = 4
""")
    assert phase_bounds.reload(cfg, cfg) == 7 + 1 + 4 + phase_bounds.MARGIN
    # A file without watchers does not load; a running sockvisor can get there by `rm`.
    empty = dataclasses.replace(cfg, watchers={})
    assert (phase_bounds.start(empty), phase_bounds.reload(empty, empty),
            phase_bounds.stop(empty)) == (phase_bounds.MARGIN,) * 3


def test_priorities_start_and_stop_one_after_another(tmp_path):
    """Circus's priority: each priority starts (and stops) after the other, so
    the bounds add up; equal priorities run together."""
    cfg = config(tmp_path, """
[watcher:db]
cmd = sleep 1
priority = 10
ready_timeout = 30
ready_settle = 2
graceful_timeout = 20

[watcher:web]
cmd = sleep 1
ready_timeout = 5
ready_settle = 1
graceful_timeout = 3

[watcher:worker]
cmd = sleep 1
ready_timeout = 7
ready_settle = 1
graceful_timeout = 4
""")
    margin = phase_bounds.MARGIN
    assert phase_bounds.start(cfg) == (30 + 2) + (7 + 1) + margin
    assert phase_bounds.stop(cfg) == 20 + 4 + margin
