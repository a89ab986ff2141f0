"""End to end: the watcher's lifecycle where a reload meets something else.

* A `reloadconfig` that renames or removes a socket and then fails (the new
  generation cannot start) rolls the watcher back to its previous generation,
  *with the sockets that generation was started with*: a worker of it that dies
  later is replaced on the same listening socket -- no KeyError in the reaper
  callback, no leaked worker id, the watcher back to N/N ready.
* A watcher that goes FATAL while a reload runs (max_restarts = 0 and an old
  worker dies) answers the reload with a clear error that says FATAL -- never
  "internal error" -- and sockvisor keeps running and serving.  The same when the
  reload was already aborting.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading

import pytest

from control_helpers import (ServeWorker, control, request_once, socket_section,
                             watcher_section, worker_pids)
from conftest import is_gone, wait_for


# A socket at another address than socket_section()'s: moving the watcher onto it
# removes `web` (the same address would be a takeover of web's listening socket).
OTHER_ADDRESS = "[socket:other]\nhost = 127.0.0.2\nport = 0\nblocking = false\n\n"


def rewrite(sv, body: str) -> None:
    """Replace everything after the fixture's [sockvisor] section of sv.conf."""
    text = sv.conf.read_text()
    head = text[:text.index("\n\n") + 2]
    sv.conf.write_text(head + textwrap.dedent(body).strip() + "\n")


def replaced_after_kill(sv, client, port: int, before: dict) -> None:
    """Kill one old worker: it is replaced, the watcher is 2/2 ready again, the
    replacement serves on `port`, and no callback failed."""
    victim = sorted(worker_pids(before))[0]
    sv.track(victim)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (lambda d: d if len(d["workers"]) == 2 and all(
        w["ready"] for w in d["workers"]) and victim not in worker_pids(d) else None)(
        client.status("web")), 10, message=lambda: f"{client.status('web')}\n{sv.describe()}")
    assert {w["wid"] for w in after["workers"]} == {1, 2}, after   # no wid leaked
    replacement = (worker_pids(after) - worker_pids(before)).pop()
    sv.wait_answering(port, {replacement})
    assert "KeyError" not in sv.log() and "Traceback" not in sv.log(), sv.log()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("change", ["rename", "remove"])
def test_failed_reloadconfig_changing_a_socket_keeps_replacing_workers(
        sockvisor, tmp_path, change):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="delay:0.3"))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        sv.wait_answering(port, worker_pids(before))

        worker.set_mode("crash")   # the new generation exits at once: the reload aborts
        if change == "rename":     # same address: the listening socket is taken over
            body = socket_section("front") + watcher_section(
                "web", worker, socket="front", numprocesses=2, ready="delay:0.3")
        else:                      # the watcher moves to a new socket; web is removed
            body = OTHER_ADDRESS + watcher_section(
                "web", worker, socket="other", numprocesses=2, ready="delay:0.3")
        rewrite(sv, body)
        reply = client.raw("reloadconfig", timeout=30)
        assert reply.get("status") == "error" and "aborted" in reply.get("reason", ""), reply
        rolled_back = client.wait_ready("web", 2)
        assert worker_pids(rolled_back) == worker_pids(before), rolled_back

        worker.set_mode("")
        replaced_after_kill(sv, client, port, rolled_back)


FATAL_WATCHER = dict(numprocesses=2, ready="notify", min_uptime=30,
                     max_restarts=0, ready_settle=0.2, reload_batch=1)


def reload_in_background(client_factory, results: list) -> threading.Thread:
    def run() -> None:
        with client_factory() as other:
            results.append(other.raw("reload", name="web", timeout=30))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.timeout(40)
@pytest.mark.parametrize("path", ["rolling", "aborting"])
def test_watcher_going_fatal_during_a_reload_answers_clearly(sockvisor, tmp_path, path):
    worker = ServeWorker(tmp_path / "worker")
    ready_timeout = 10 if path == "rolling" else 1.5
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, **FATAL_WATCHER, ready_timeout=ready_timeout))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        # The candidate is slow to be ready (rolling) or never ready (aborting:
        # the ready_timeout then aborts the reload, after the watcher went FATAL).
        worker.set_mode("delay=1.5" if path == "rolling" else "noready")
        results: list = []
        thread = reload_in_background(lambda: control(sv), results)
        try:
            during = wait_for(lambda: (lambda d: d if d["state"] == "reloading" and any(
                w["generation"] > before["generation"] for w in d["workers"]) else None)(
                client.status("web")), 10)
            # An old worker dies: with max_restarts = 0 that is the end (FATAL).
            old = sorted(worker_pids(during, before["generation"]))[0]
            sv.track(old)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: client.status("web")["state"] == "fatal", 10,
                     message=lambda: f"{client.status('web')}\n{sv.describe()}")
        finally:
            thread.join(30)
        assert len(results) == 1, results
        reply = results[0]
        assert reply.get("status") == "error", reply
        assert "internal error" not in reply.get("reason", ""), reply
        assert "FATAL" in reply["reason"], reply
        assert "TransitionError" not in sv.log() and "Traceback" not in sv.log(), sv.log()
        # sockvisor still runs, says FATAL, and whoever is left still serves.
        status = client.status("web")
        assert status["state"] == "fatal" and status.get("fatal_reason"), status
        survivors = worker_pids(status)
        assert survivors, status
        sv.wait_answering(port, survivors)
        # `start` brings it back to numprocesses ready workers.
        worker.set_mode("")
        client.call("start", name="web", timeout=30)
        client.wait_ready("web", 2)
        assert request_once(port)["pid"]


GROUP_WORKER = r'''
import os, signal, sys, time
child = os.fork()
if child == 0:                  # stays in the worker's process group
    signal.signal(signal.SIGUSR1, lambda *a: os._exit(7))
    while True:
        signal.pause()
signal.signal(signal.SIGUSR1, signal.SIG_IGN)   # the worker itself ignores it
with open(sys.argv[1], "w") as out:
    out.write(str(child))
os.waitpid(child, 0)
while True:
    time.sleep(60)
'''


@pytest.mark.timeout(30)
def test_signal_to_the_process_group_reaches_what_the_worker_started(sockvisor, tmp_path):
    """`signal NAME SIG --children` goes to each worker's process group (through
    the Worker's own method): the worker's child gets it, and the worker, which
    ignores it, stays."""
    script = tmp_path / "group.py"
    script.write_text(GROUP_WORKER)
    child_file = tmp_path / "child"
    sv = sockvisor(socket_section() + f"[watcher:web]\ncmd = {sys.executable} {script} "
                   f"{child_file}\nsockets = web\nnumprocesses = 1\n\n")
    with control(sv) as client:
        before = client.wait_ready("web", 1)
        child = int(wait_for(lambda: child_file.exists() and child_file.read_text(), 5))
        sv.track(child)
        reply = client.call("signal", name="web", signum="USR1", children=True)
        assert worker_pids(before) <= set(reply.get("pids", worker_pids(before))), reply
        wait_for(lambda: is_gone(child), 5, message="the worker's child to get SIGUSR1")
        assert worker_pids(client.status("web")) == worker_pids(before)


@pytest.mark.timeout(60)
def test_a_rolled_back_generation_keeps_its_retired_socket_for_good(sockvisor, tmp_path):
    """The socket a failed reloadconfig removed stays open while the rolled-back
    generation spawns on it -- not only until the workers that held it at the
    reload are gone: each later replacement gets it too, and answers on it."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="delay:0.3"))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        sv.wait_answering(port, worker_pids(before))
        worker.set_mode("crash")
        rewrite(sv, OTHER_ADDRESS + watcher_section(
            "web", worker, socket="other", numprocesses=2, ready="delay:0.3"))
        reply = client.raw("reloadconfig", timeout=30)
        assert reply.get("status") == "error", reply
        worker.set_mode("")
        current = client.wait_ready("web", 2)
        # Every worker of the rolled-back generation replaced, twice over: the
        # workers that held the socket at the reload are long gone by the end.
        for _ in range(4):
            victim = sorted(worker_pids(current))[0]
            sv.track(victim)
            os.kill(victim, signal.SIGKILL)
            current = wait_for(lambda: (lambda d: d if len(d["workers"]) == 2 and all(
                w["ready"] for w in d["workers"]) and victim not in worker_pids(d)
                else None)(client.status("web")), 10,
                message=lambda: f"{client.status('web')}\n{sv.describe()}")
        assert not worker_pids(current) & worker_pids(before)
        sv.wait_answering(port, worker_pids(current))
        assert "Traceback" not in sv.log(), sv.log()
        # Never closed and bound again (a window in which the port refuses
        # connections, or another program takes it).
        assert "relisten" not in sv.log() and "closed" not in sv.log(), sv.log()
