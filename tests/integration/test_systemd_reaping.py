"""Orphans: sockvisor as PID 1 of a PID namespace (a container), and as a subreaper.

A worker that daemonises the classic way (fork, the child forks again and
exits) leaves an orphaned grandchild.  The kernel re-parents it to the init of
its PID namespace, or to the nearest child subreaper.  When that is sockvisor,
sockvisor must reap it when it exits, or it stays a zombie for ever.

PID 1: `unshare --pid --fork --mount-proc sockvisor ...` makes sockvisor PID 1
of a new namespace.  The grandchild writes its pid as seen inside; the test
looks from outside (the host pid, found by NSpid in /proc) at who its parent
is and whether it is gone once it exits.  SIGTERM to PID 1 still stops
everything gracefully, with exit status 0.

Subreaper: `[sockvisor] subreaper = true` (PR_SET_CHILD_SUBREAPER) gives the
same behaviour without a namespace; the flag itself cannot be read from /proc,
so the test checks what it does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import http_get, is_gone, wait_for  # noqa: E402
from systemd_helpers import (services, SOCKVISOR, can_unshare_pid, clean_env, ns_pid,  # noqa: E402,F401
                             write_config, write_worker)

pytestmark = pytest.mark.timeout(90)


def daemonizing_watcher(directory: Path) -> tuple[str, Path]:
    state = directory / "state"
    state.mkdir(exist_ok=True)
    worker = write_worker(directory)
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {worker} --state {state} --daemonize
        sockets = web
        graceful_timeout = 2
    """, state


def grandchild_ns_pid(state: Path) -> int:
    path = state / "grandchild-1"
    return wait_for(lambda: path.exists() and int(path.read_text()), 10,
                    message=f"{path} (the daemonised grandchild's pid)")


def host_process(parent: int, pid_in_namespace: int) -> psutil.Process:
    """The child of `parent` whose innermost pid is `pid_in_namespace`."""
    def find() -> psutil.Process | None:
        for child in psutil.Process(parent).children():
            try:
                if ns_pid(child.pid)[-1] == pid_in_namespace:
                    return child
            except FileNotFoundError:
                pass
        return None
    return wait_for(find, 10, message=f"pid {pid_in_namespace} among {parent}'s children")


@pytest.mark.root
def test_pid1_reaps_orphans_and_stops_cleanly(tmp_path, services):
    probe = can_unshare_pid()
    if not probe.ok:
        pytest.skip(probe.reason)
    body, state = daemonizing_watcher(tmp_path)
    conf = write_config(tmp_path, body)
    sv = services.start(["unshare", "--pid", "--fork", "--mount-proc", *SOCKVISOR, str(conf)],
                        clean_env())
    sv.wait_log(r"sockvisor ready: web: 1/1 ready")

    # unshare forks sockvisor into the new namespace, where it is PID 1.
    [pid1] = [child.pid for child in psutil.Process(sv.pid).children()]
    assert ns_pid(pid1)[-1] == 1
    assert "sockvisor" in " ".join(psutil.Process(pid1).cmdline())
    sv.track()

    # The orphan was re-parented to sockvisor (in the namespace: to PID 1).
    orphan_ns = grandchild_ns_pid(state)
    orphan = host_process(pid1, orphan_ns)
    assert orphan.ppid() == pid1
    [worker] = [c for c in psutil.Process(pid1).children() if c.pid != orphan.pid]
    assert ns_pid(worker.pid)[-1] != orphan_ns

    # It exits: sockvisor reaps it, no zombie remains.
    orphan.terminate()
    wait_for(lambda: not psutil.pid_exists(orphan.pid), 10,
             message=lambda: f"the orphan {orphan.pid} to be reaped (status "
                             f"{orphan.status() if psutil.pid_exists(orphan.pid) else '-'})"
                             f"\n{sv.describe()}")
    sv.wait_log(rf"reaped orphan pid {orphan_ns} \(killed by SIGTERM\)")
    assert not [c for c in psutil.Process(pid1).children()
                if c.status() == psutil.STATUS_ZOMBIE]

    # SIGTERM to PID 1 (a signal it handles, so the kernel delivers it) stops
    # everything; unshare exits with sockvisor's status.
    os.kill(pid1, signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert "sockvisor stopped" in sv.log()
    assert is_gone(worker) and is_gone(pid1)


def test_subreaper_adopts_and_reaps_a_daemonised_grandchild(sockvisor, tmp_path):
    body, state = daemonizing_watcher(tmp_path)
    sv = sockvisor(body, globals="subreaper = true")
    orphan = psutil.Process(grandchild_ns_pid(state))
    sv.track(orphan)
    assert orphan.ppid() == sv.pid
    assert http_get(sv.port("web"))["ppid"] == sv.pid     # the worker still serves
    orphan.terminate()
    wait_for(lambda: not psutil.pid_exists(orphan.pid), 10,
             message=lambda: f"the orphan {orphan.pid} to be reaped\n{sv.describe()}")
    sv.wait_log(rf"reaped orphan pid {orphan.pid} \(killed by SIGTERM\)")
    assert sv.stop() == 0


def test_without_subreaper_the_grandchild_is_not_ours(sockvisor, tmp_path):
    """The control experiment: the same worker, no subreaper setting."""
    body, state = daemonizing_watcher(tmp_path)
    sv = sockvisor(body)
    orphan = psutil.Process(grandchild_ns_pid(state))
    sv.track(orphan)
    try:
        assert orphan.ppid() != sv.pid
    finally:
        orphan.kill()
    assert sv.stop() == 0
