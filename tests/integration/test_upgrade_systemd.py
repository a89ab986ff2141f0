"""An upgrade in place (upgrade.py) under a service manager and as PID 1.

The test plays systemd (systemd_helpers.ServiceManager): MAINPID never changes,
RELOADING=1 ... READY=1 bracket the upgrade, the watchdog is pinged across the
exec within its period, and the fd store is left as it was.  As PID 1 of a PID
namespace (unshare), the workers are still its children after the exec: their
exits are reaped and they are replaced.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import wait_for  # noqa: E402
from control_helpers import call, run_ctl  # noqa: E402
from systemd_helpers import (services, manager, SOCKVISOR, can_unshare_pid,  # noqa: E402,F401
                             clean_env, ns_pid, write_config, write_worker)

pytestmark = pytest.mark.timeout(90)


def web_config(directory: Path, globals_: str = "") -> Path:
    worker = write_worker(directory)
    return write_config(directory, f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {worker}
        sockets = web
        numprocesses = 2
        graceful_timeout = 2
        backoff_base = 0.05
    """, globals_=globals_, loglevel="info")


def upgrade(directory: Path) -> dict:
    result = run_ctl("--endpoint", f"ipc://{directory}/ctl", "--json", "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def workers(directory: Path) -> set[tuple[int, int, int]]:
    reply = call(f"ipc://{directory}/ctl", "status", {"name": "web"})
    return {(w["pid"], w["wid"], w["generation"]) for w in reply["watcher"]["workers"]}


def test_under_a_service_manager_mainpid_notify_watchdog_and_fdstore_hold(
        tmp_path, services, manager):
    conf = web_config(tmp_path, globals_="fdstore = true")
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="2000000"))
    manager.expect_field("READY", "1", alive=sv.proc)
    store = manager.fd_store()
    assert list(store) == ["web"]
    store_messages = len(manager.with_key("FDSTORE") + manager.with_key("FDSTOREREMOVE"))
    before = workers(tmp_path)
    for _ in range(3):
        done = upgrade(tmp_path)
        assert done["workers"] == 2
        reloading = manager.expect_field("RELOADING", "1", alive=sv.proc)
        ready = manager.expect_field("READY", "1", alive=sv.proc)
        assert ready.monotonic > reloading.monotonic
        assert ready.fields["STATUS"] == "web: 2/2 ready"
    manager.collect(2.2)   # pings go on after the last upgrade
    assert workers(tmp_path) == before
    # Everything came from the one pid, and MAINPID always named it.
    assert {m.pid for m in manager.messages} == {sv.pid}
    assert {m.fields["MAINPID"] for m in manager.with_key("MAINPID")} == {str(sv.pid)}
    assert len(manager.with_key("MAINPID")) == 4   # start, and each resume
    # The watchdog (2 s) was pinged across every exec within its period.
    pings = [m.monotonic for m in manager.messages if m.fields.get("WATCHDOG") == "1"]
    assert len([p for p in pings if p > ready.monotonic]) >= 2
    longest = max(b - a for a, b in zip(pings, pings[1:]))
    assert longest < 2.0, (f"the watchdog went {longest:.3f}s without a ping: "
                           f"{[(round(m.monotonic, 3), sorted(m.fields)) for m in manager.messages]}")
    # The fd store was not touched: no FDSTOREREMOVE, no second FDSTORE.
    assert manager.fd_store() == store
    assert len(manager.with_key("FDSTORE") + manager.with_key("FDSTOREREMOVE")) == \
        store_messages
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


@pytest.mark.root
def test_as_pid1_of_a_pid_namespace_workers_survive_and_are_still_reaped(tmp_path, services):
    probe = can_unshare_pid()
    if not probe.ok:
        pytest.skip(probe.reason)
    conf = web_config(tmp_path)
    sv = services.start(["unshare", "--pid", "--fork", "--mount-proc", *SOCKVISOR, str(conf)],
                        clean_env())
    sv.wait_log(r"sockvisor ready: web: 2/2 ready")
    [pid1] = [child.pid for child in psutil.Process(sv.pid).children()]
    assert ns_pid(pid1)[-1] == 1
    sv.track()
    before = workers(tmp_path)
    for _ in range(2):
        done = upgrade(tmp_path)
        assert done["workers"] == 2
    assert [child.pid for child in psutil.Process(sv.pid).children()] == [pid1]
    assert "--resume" in " ".join(psutil.Process(pid1).cmdline())
    assert workers(tmp_path) == before
    # Still their parent: a worker killed now is reaped and replaced, no zombie.
    victim_ns = min(pid for pid, _, _ in before)
    victim = next(c for c in psutil.Process(pid1).children() if ns_pid(c.pid)[-1] == victim_ns)
    victim.kill()
    wait_for(lambda: len(workers(tmp_path)) == 2 and victim_ns not in
             {pid for pid, _, _ in workers(tmp_path)}, 15, message="a replacement")
    assert not [c for c in psutil.Process(pid1).children()
                if c.status() == psutil.STATUS_ZOMBIE]
    os.kill(pid1, signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert "sockvisor stopped" in sv.log()
