"""Circus's `singleton = true` (issue 11, item 4): exactly one worker, whatever
the control channel asks -- `incr` and `set numprocesses` above one are refused
with an error reply, and nothing changes."""

from __future__ import annotations

import pytest

from conftest import wait_for
from control_helpers import control, ctl

pytestmark = pytest.mark.timeout(60)


def test_a_singleton_cannot_be_scaled_past_one(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        singleton = true
    """)
    sv.wait_workers(1, "worker.py")
    with control(sv) as client:
        reply = client.raw("incr", name="web", nb=1)
        assert reply["status"] == "error" and "singleton" in reply["reason"], reply
        reply = client.raw("set", name="web", options={"numprocesses": 2})
        assert reply["status"] == "error" and "singleton" in reply["reason"], reply
        assert "numprocesses" in reply["reason"]
        assert client.call("numprocesses", name="web")["numprocesses"] == 1
        # Down to none and back to one is what a singleton allows.
        client.call("decr", name="web")
        wait_for(lambda: sv.worker_pids("worker.py") == [], 10, message="no worker")
        assert client.call("incr", name="web")["numprocesses"] == 1
        sv.wait_workers(1, "worker.py")
    result = ctl(sv, "incr", "web")
    assert result.returncode != 0 and "singleton" in result.stderr + result.stdout
    assert sv.worker_pids("worker.py") != [] and len(sv.worker_pids("worker.py")) == 1
    assert sv.proc.poll() is None
