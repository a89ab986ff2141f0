"""Pure formatting in sockvisorctl's tables: durations as operators read them."""

from __future__ import annotations

import pytest

from sockvisor.control.commands.base import duration
from sockvisor.control.commands.stats_cmd import totals
from sockvisor.control.commands.status_cmd import healthy


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0s"), (0.44, "0.4s"), (8.0, "8.0s"), (59.9, "59.9s"), (59.96, "1m00s"),
    (60, "1m00s"), (185, "3m05s"), (3599, "59m59s"), (3600, "1h00m"),
    (2 * 3600 + 3 * 60 + 59, "2h03m"), (86399, "23h59m"), (86400, "1d00h"),
    (4 * 86400 + 6 * 3600, "4d06h"), ("N/A", "N/A"), (None, "None"),
])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_totals_add_workers_and_children_and_skip_unreadable():
    infos = {"1": {"pid": 1, "rss": 100, "cpu": 1.5, "mem": 0.1, "ctime": 2.0,
                   "children": [{"pid": 2, "rss": 50, "cpu": 0.5, "mem": 0.05, "ctime": 1.0}]},
             "3": {"pid": 3, "rss": "N/A", "cpu": "N/A", "mem": "N/A", "ctime": "N/A"}}
    assert totals(infos) == {"processes": 3, "cpu": 2.0, "mem": 0.15, "rss": 150,
                             "ctime": 3.0}


@pytest.mark.parametrize("watcher, ok", [
    ({"state": "active", "ready": 2, "numprocesses": 2}, True),
    ({"state": "reloading", "ready": 2, "numprocesses": 2}, True),
    ({"state": "active", "ready": 1, "numprocesses": 2}, False),
    ({"state": "stopped", "ready": 0, "numprocesses": 2}, False),
    ({"state": "fatal", "ready": 0, "numprocesses": 1}, False),
    ({"state": "starting", "ready": 1, "numprocesses": 1}, False),
])
def test_healthy(watcher, ok):
    assert healthy(watcher) is ok
