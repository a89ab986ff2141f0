"""End to end: incr / decr / numprocesses, and scaling in every watcher state.

As watcher.py's table says: in an active watcher `incr` spawns at once and `decr`
retires at once (not-yet-ready first, then the newest); during a backoff the new
count waits for the backoff to end; in a FATAL watcher only the desired count
changes, until `start`.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import wait_for
from control_helpers import (ServeWorker, control, ctl, is_reaped, socket_section,
                             watcher_section, worker_pids)


@pytest.mark.timeout(30)
def test_incr_and_decr_scale_at_once(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2))
    with control(sv) as client:
        port = client.port("web")
        first = client.wait_ready("web", 2)

        began = time.monotonic()
        result = ctl(sv, "incr", "web", "2")
        assert result.returncode == 0 and result.stdout.strip() == "4", result
        four = client.wait_ready("web", 4, timeout=2)
        took = time.monotonic() - began
        assert worker_pids(first) < worker_pids(four)
        assert four["generation"] == first["generation"]
        # All four serve, the two new ones included.
        sv.wait_answering(port, worker_pids(four))
        print(f"\nincr web 2: 4 ready {took * 1000:.0f} ms after sockvisorctl started")

        result = ctl(sv, "decr", "web", "3")
        assert result.returncode == 0 and result.stdout.strip() == "1", result
        result = ctl(sv, "numprocesses", "web")
        assert result.returncode == 0 and result.stdout.strip() == "1", result
        one = client.wait_ready("web", 1, timeout=5)
        # The newest go first: the one left is one of the first two.
        [left] = worker_pids(one)
        assert left in worker_pids(first), (left, first)
        retired = worker_pids(four) - {left}
        wait_for(lambda: all(is_reaped(pid) for pid in retired), 5,
                 message=f"the retired workers {retired} to be reaped")
        answered = {sv.http_get(port)["pid"] for _ in range(10)}
        assert answered == {left}

        # decr below zero is an error that changes nothing (issue 10: the operator
        # meant another number or watcher); to zero is a stop; incr brings
        # workers back.
        refused = client.raw("decr", name="web", nb=5)
        assert refused["status"] == "error" and "cannot retire 5" in refused["reason"]
        assert client.call("numprocesses", name="web")["numprocesses"] == 1
        assert client.call("decr", name="web", nb=1)["numprocesses"] == 0
        wait_for(lambda: is_reaped(left), 5, message=f"{left} to be reaped")
        assert client.call("numprocesses", name="web")["numprocesses"] == 0
        assert client.call("incr", name="web")["numprocesses"] == 1
        again = client.wait_ready("web", 1, timeout=2)
        assert sv.http_get(port)["pid"] in worker_pids(again)


@pytest.mark.timeout(30)
def test_incr_during_backoff_waits_for_the_backoff(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=1, min_uptime=0.2, backoff_base=1.5,
        max_restarts=5))
    with control(sv) as client:
        [healthy] = worker_pids(client.wait_ready("web", 1))
        wait_for(lambda: client.status("web")["workers"][0]["uptime"] >= 0.3, 2,
                 message="the worker to count as healthy")
        worker.set_mode("crash")
        os.kill(healthy, signal.SIGKILL)
        # Replaced at once (it was healthy); the replacement crashes: backoff.
        in_backoff = wait_for(lambda: (lambda d: d if "backoff" in d else None)(
            client.status("web")), 3, message="a backoff")
        assert in_backoff["workers"] == [], in_backoff

        reply = client.call("incr", name="web", nb=2)
        assert reply["numprocesses"] == 3
        detail = client.status("web")
        assert "backoff" in detail and detail["processes"] == 0, detail
        worker.set_mode("")
        # When the backoff ends, all three start.
        ready = client.wait_ready("web", 3, timeout=5)
        assert healthy not in worker_pids(ready)
        assert ready["numprocesses"] == 3


@pytest.mark.timeout(30)
def test_scaling_a_fatal_watcher_changes_only_the_count_until_start(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    worker.set_mode("crash")   # crash loop from the start
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=1, min_uptime=0.5, backoff_base=0.05,
        max_restarts=1), globals="start_failure = continue")
    with control(sv) as client:
        port = client.port("web")
        fatal = wait_for(lambda: (lambda d: d if d["state"] == "fatal" else None)(
            client.status("web")), 5, message="the watcher to go FATAL")
        assert fatal["workers"] == [], fatal

        assert client.call("incr", name="web", nb=2)["numprocesses"] == 3
        assert client.call("decr", name="web", nb=1)["numprocesses"] == 2
        detail = client.status("web")
        assert detail["state"] == "fatal" and detail["numprocesses"] == 2, detail
        assert detail["processes"] == 0 and sv.worker_pids() == [], detail
        # numprocesses is the desired count (as in Circus), not the running one.
        assert client.call("numprocesses", name="web")["numprocesses"] == 2

        worker.set_mode("")
        result = ctl(sv, "start", "web")
        assert result.returncode == 0, result.stderr
        started = client.wait_ready("web", 2, timeout=5)
        sv.wait_answering(port, worker_pids(started))


@pytest.mark.timeout(30)
def test_decr_during_backoff_retires_at_once(sockvisor, tmp_path):
    """A backoff holds back spawning, not retiring: `decr` stops extras at once."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=3, min_uptime=0.2, backoff_base=5,
        max_restarts=5))
    with control(sv) as client:
        port = client.port("web")
        first = client.wait_ready("web", 3)
        wait_for(lambda: min(w["uptime"] for w in client.status("web")["workers"]) >= 0.3,
                 2, message="the workers to count as healthy")
        worker.set_mode("crash")
        victim = max(worker_pids(first))
        os.kill(victim, signal.SIGKILL)
        in_backoff = wait_for(lambda: (lambda d: d if "backoff" in d else None)(
            client.status("web")), 3, message="a backoff")
        survivors = worker_pids(in_backoff)
        assert len(survivors) == 2 and victim not in survivors, in_backoff

        assert client.call("decr", name="web", nb=2)["numprocesses"] == 1
        assert client.call("numprocesses", name="web")["numprocesses"] == 1
        # BACKOFF is the watcher's state until the delay is over (states.py).
        one = wait_for(lambda: (lambda d: d if d["state"] == "backoff" and len(
            d["workers"]) == 1 and d["workers"][0]["ready"] else None)(
            client.status("web")), 2, message=lambda: client.status("web"))
        assert "backoff" in one, "the backoff ended: the test proves nothing"
        [left] = worker_pids(one)
        assert left in survivors
        wait_for(lambda: all(is_reaped(pid) for pid in survivors - {left}), 3,
                 message="the retired worker to be reaped")
        assert sv.http_get(port)["pid"] == left


@pytest.mark.timeout(30)
def test_worker_ids_are_the_lowest_free_slots(sockvisor, tmp_path):
    """$(sockvisor.wid) names a slot: a replacement takes the dead worker's id, and
    scaling up fills the lowest free ids before new ones."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=3))
    with control(sv) as client:
        def wids(detail):
            return {w["pid"]: w["wid"] for w in detail["workers"]}

        three = wids(client.wait_ready("web", 3))
        assert sorted(three.values()) == [1, 2, 3]
        victim = next(pid for pid, wid in three.items() if wid == 2)
        os.kill(victim, signal.SIGKILL)
        replaced = wids(wait_for(
            lambda: (d := client.status("web"))["ready"] == 3 and victim not in wids(d)
            and d, 10, message="a replacement for wid 2"))
        assert sorted(replaced.values()) == [1, 2, 3]
        assert replaced[next(p for p in replaced if p not in three)] == 2

        client.call("decr", name="web", nb=2)          # the newest go: wids 2 and 3
        one = wids(client.wait_ready("web", 1, timeout=5))
        client.call("incr", name="web", nb=3)
        four = wids(client.wait_ready("web", 4, timeout=5))
        assert sorted(four.values()) == [1, 2, 3, 4], (one, four)
