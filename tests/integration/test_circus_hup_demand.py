"""Circus's send_hup and on_demand (issue 11, items 3 and 10), on a real sockvisor
with configs written as Circus users write them: what the workers see (a SIGHUP,
their pids kept; the very first connection answered).
"""

from __future__ import annotations

import os

import pytest

from conftest import http_get, wait_for
from control_helpers import control, ctl

pytestmark = pytest.mark.timeout(60)

def pids(c, name: str) -> set[int]:
    return {w["pid"] for w in c.status(name)["workers"]}


# --------------------------------------------------------------------------- send_hup

def test_send_hup_reload_signals_the_workers_which_keep_their_pids(sockvisor, hupper,
                                                                   tmp_path):
    out = tmp_path / "hups"
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {hupper} --out {out}
        numprocesses = 2
        send_hup = true
    """)
    with control(sv) as c:
        c.wait_ready("app", 2)
        before = pids(c, "app")
        reply = c.call("reload", name="app", waiting=True)
        assert sorted(reply["watcher"]["hup"]) == sorted(before), reply
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 2,
                 10, message="both workers got SIGHUP")
        assert {int(line.split()[1]) for line in out.read_text().splitlines()} == before
        status = c.status("app")
        assert pids(c, "app") == before and status["state"] == "active"
        assert status["generation"] == 1            # no new generation
        # Circus's `restart` is a stop and a start, send_hup or not.
        c.call("restart", name="app")
        c.wait_ready("app", 2)
        assert not pids(c, "app") & before


def test_send_hup_with_a_changed_command_starts_new_workers(sockvisor, hupper, tmp_path):
    """Circus would only SIGHUP the old program (`set cmd` then keeps running
    the old code); sockvisor rolls new workers when what runs changed."""
    out = tmp_path / "hups"
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {hupper} --out {out}
        send_hup = true
    """)
    with control(sv) as c:
        c.wait_ready("app", 1)
        before = pids(c, "app")
        c.call("set", name="app", options={"cmd": f"{hupper} --out {out} --changed"})
        c.wait_ready("app", 1, generation=2)
        assert not pids(c, "app") & before


# --------------------------------------------------------------------------- on_demand

def test_on_demand_starts_at_the_first_connection_and_answers_it(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--fd", "$(circus.sockets.web)")}
        use_sockets = true
        on_demand = true
        numprocesses = 2
    """)
    with control(sv) as c:
        status = c.status("web")
        assert status["state"] == "waiting" and status["workers"] == [], status
        shown = ctl(sv, "status")                # waiting is as it should be: healthy
        assert shown.returncode == 0 and "waiting" in shown.stdout, shown
        port = c.port("web")
        # The very first request is answered: the pending connection is the one
        # that wakes the watcher, and a worker accepts it.
        assert http_get(port, timeout=15)["pid"]
        c.wait_ready("web", 2)


def test_on_demand_watcher_goes_back_to_waiting_when_its_workers_exit(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--fd", "$(circus.sockets.web)")}
        use_sockets = true
        on_demand = true
        min_uptime = 0
    """)
    with control(sv) as c:
        port = c.port("web")
        first = http_get(port, timeout=15)["pid"]
        c.wait_ready("web", 1)
        os.kill(first, 9)
        wait_for(lambda: c.status("web")["state"] == "waiting", 10)
        assert c.status("web")["workers"] == []
        second = http_get(port, timeout=15)["pid"]
        assert second != first


def test_on_demand_without_sockets_is_refused(tmp_path):
    from sockvisor.config import ConfigError, load
    path = tmp_path / "circus.ini"
    path.write_text("[watcher:app]\ncmd = /bin/sleep 100\non_demand = true\n")
    with pytest.raises(ConfigError) as error:
        load(str(path))
    text = str(error.value)
    assert "circus.ini" in text and "watcher:app" in text and "on_demand" in text
