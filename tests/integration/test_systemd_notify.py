"""sockvisor under a service manager: what it says on $NOTIFY_SOCKET, and when.

The test is the service manager: it binds the datagram socket that NOTIFY_SOCKET
names (a path, or an @abstract address) and reads every message a real
`sockvisor start` sends: MAINPID, STATUS, READY=1 only once the workers are
ready, RELOADING=1 with MONOTONIC_USEC then READY=1 around a SIGHUP reload,
STOPPING=1 on SIGTERM, and WATCHDOG=1 every half of WATCHDOG_USEC when the
watchdog is ours.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import http_get  # noqa: E402
from systemd_helpers import (services, manager, SOCKVISOR, ServiceManager,  # noqa: E402,F401
                             boottime_started, clean_env, exec_as_self, monotonic_usec,
                             worker_states, write_config, write_worker)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def abstract_manager():
    made = ServiceManager(f"@sockvisor-test/{os.getpid()}/{secrets.token_hex(8)}")
    yield made
    made.close()


def web_config(tmp_path: Path, *, ready: str = "notify", worker_args: str = "",
               numprocesses: int = 2, globals_: str = "") -> tuple[Path, Path]:
    """A config with [socket:web] on an ephemeral port and `numprocesses` sd_workers."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    worker = write_worker(tmp_path)
    conf = write_config(tmp_path, f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {worker} --state {state} {worker_args}
        sockets = web
        numprocesses = {numprocesses}
        ready = {ready}
        ready_timeout = 10
        graceful_timeout = 2
    """, globals_=globals_)
    return conf, state


def bound_port(service) -> int:
    match = service.wait_log(r"socket web listening on 127\.0\.0\.1:(\d+)$")
    return int(match.group(1))


def test_mainpid_status_ready_after_workers_then_stopping(tmp_path, services, manager):
    conf, state = web_config(tmp_path, worker_args="--notify-after 0.3")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))

    mainpid = manager.expect_field("MAINPID", alive=sv.proc)
    assert mainpid.fields["MAINPID"] == str(sv.pid)
    assert mainpid.pid == sv.pid      # sent by sockvisor itself (NotifyAccess=main)
    ready = manager.expect_field("READY", "1", alive=sv.proc)

    # READY=1 only after both workers said READY=1 to sockvisor.
    workers = worker_states(state)
    assert len(workers) == 2 and all("ready" in w for w in workers), workers
    assert ready.monotonic >= max(w["ready"] for w in workers)
    before_ready = manager.messages[:manager.messages.index(ready)]
    assert not [m for m in before_ready if "READY" in m.fields]
    assert ready.fields.get("STATUS") == "web: 2/2 ready"
    # Progress was reported while starting.
    statuses = [m.fields["STATUS"] for m in before_ready if "STATUS" in m.fields]
    assert any(re.fullmatch(r"web: [01]/2 ready", s) for s in statuses), statuses
    # Start-up may take ready_timeout (10 s) + ready_settle (min_uptime, 1 s) + 10 s:
    # asked for in case the unit's TimeoutStartSec= is shorter.
    extensions = [m.fields["EXTEND_TIMEOUT_USEC"] for m in before_ready
                  if "EXTEND_TIMEOUT_USEC" in m.fields]
    assert extensions == ["21000000"], extensions

    # It serves, and nothing else goes to the manager without a reason.
    assert http_get(bound_port(sv))["ppid"] == sv.pid
    assert not manager.with_key("WATCHDOG")      # no WATCHDOG_USEC: no pings
    assert not manager.with_key("FDSTORE")       # no $FDSTORE, no fdstore = true

    sv.track()
    sv.signal(signal.SIGTERM)
    manager.expect_field("STOPPING", "1", timeout=10)
    # The stop may take graceful_timeout (2 s) + 10 s.
    manager.expect_field("EXTEND_TIMEOUT_USEC", "12000000", timeout=10)
    assert sv.wait_exit() == 0
    assert "Traceback" not in sv.log()


def test_abstract_notify_socket(tmp_path, services, abstract_manager):
    manager = abstract_manager
    conf, state = web_config(tmp_path, worker_args="--notify-after 0.2", numprocesses=1)
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    assert manager.expect_field("MAINPID", alive=sv.proc).fields["MAINPID"] == str(sv.pid)
    ready = manager.expect_field("READY", "1", alive=sv.proc)
    [worker] = worker_states(state)
    assert ready.monotonic >= worker["ready"]
    assert ready.fields["STATUS"] == "web: 1/1 ready"
    sv.signal(signal.SIGTERM)
    manager.expect_field("STOPPING", "1", timeout=10)
    assert sv.wait_exit() == 0


def test_ready_waits_for_delay_readiness(tmp_path, services, manager):
    """`ready = delay:0.3`: READY=1 no earlier than 0.3 s after each worker was forked."""
    conf, state = web_config(tmp_path, ready="delay:0.3")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    ready = manager.expect_field("READY", "1", alive=sv.proc)
    # The workers are still there (they may not even have written their state yet,
    # on a loaded machine: being alive is all delay:N asks): read their fork times.
    pids = [child.pid for child in psutil.Process(sv.pid).children()]
    assert len(pids) == 2
    forked = max(boottime_started(pid) for pid in pids)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert ready.boottime >= forked + 0.3 - tick, (ready.boottime, forked)
    assert ready.fields["STATUS"] == "web: 2/2 ready"


def test_sighup_reloading_with_monotonic_usec_then_ready(tmp_path, services, manager):
    conf, state = web_config(tmp_path, worker_args="--notify-after 0.1", numprocesses=1)
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect_field("READY", "1", alive=sv.proc)

    # A real change, so that the reload has work to do: a new generation of workers,
    # which must be ready before the reload is.
    conf.write_text(conf.read_text().replace("--notify-after 0.1", "--notify-after 0.2"))
    sent_after = monotonic_usec()
    sv.signal(signal.SIGHUP)
    reloading = manager.expect_field("RELOADING", "1", alive=sv.proc)
    received_by = monotonic_usec()
    stamp = int(reloading.fields["MONOTONIC_USEC"])
    assert sent_after <= stamp <= received_by, (sent_after, stamp, received_by)
    # One batch of one worker: ready_timeout 10 s + ready_settle 1 s +
    # graceful_timeout 2 s + 10 s.
    extend = manager.expect_field("EXTEND_TIMEOUT_USEC", "23000000", alive=sv.proc)
    assert extend.monotonic >= reloading.monotonic

    ready = manager.expect_field("READY", "1", alive=sv.proc)
    assert ready.monotonic >= reloading.monotonic
    assert ready.fields["STATUS"] == "web: 1/1 ready"
    old, new = worker_states(state)
    assert ready.monotonic >= new["ready"]

    sv.signal(signal.SIGTERM)
    manager.expect_field("STOPPING", "1", timeout=10)
    assert sv.wait_exit() == 0


def test_sighup_with_a_broken_config_still_ends_the_reload(tmp_path, services, manager):
    """Type=notify-reload waits for RELOADING=1 ... READY=1 even if the reload fails."""
    conf, _state = web_config(tmp_path, numprocesses=1, ready="started")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect_field("READY", "1", alive=sv.proc)
    conf.write_text(conf.read_text() + "\n[watcher:broken]\nnumprocesses = many\n")
    sv.signal(signal.SIGHUP)
    reloading = manager.expect_field("RELOADING", "1", alive=sv.proc)
    ready = manager.expect_field("READY", "1", alive=sv.proc)
    assert ready.monotonic >= reloading.monotonic
    sv.wait_log(r"config not reloaded.*numprocesses")
    assert sv.proc.poll() is None       # a bad config on SIGHUP does not stop anything
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_watchdog_pings_every_half_period(tmp_path, services, manager):
    conf, _state = web_config(tmp_path, numprocesses=1, ready="started")
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="200000"))
    manager.expect_field("READY", "1", alive=sv.proc)
    window = manager.collect(1.0)
    pings = [m for m in window if m.fields.get("WATCHDOG") == "1"]
    # Every 0.1 s: about 10 in the window; at least 3 even on a loaded machine,
    # and never a flood.
    assert 3 <= len(pings) <= 15, window
    assert all(m.pid == sv.pid for m in pings)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_watchdog_pid_equal_to_our_pid_arms_it(tmp_path, services, manager):
    """WATCHDOG_PID set to sockvisor's pid (as systemd sets it between fork and exec)."""
    conf, _state = web_config(tmp_path, numprocesses=1, ready="started")
    argv, extra = exec_as_self(SOCKVISOR + [str(conf)], own_pid=("WATCHDOG_PID",))
    sv = services.start(argv, clean_env(NOTIFY_SOCKET=manager.address,
                                        WATCHDOG_USEC="200000", **extra))
    manager.expect_field("READY", "1", alive=sv.proc)
    pings = [m for m in manager.collect(1.0) if m.fields.get("WATCHDOG") == "1"]
    assert len(pings) >= 3
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_watchdog_of_another_pid_is_not_ours(tmp_path, services, manager):
    conf, _state = web_config(tmp_path, numprocesses=1, ready="started")
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="200000",
                                  WATCHDOG_PID=str(os.getpid())))
    manager.expect_field("READY", "1", alive=sv.proc)
    # Half a second is five periods: any ping would have come by now.
    window = manager.collect(0.5)
    assert not [m for m in manager.messages if "WATCHDOG" in m.fields], window
    sv.signal(signal.SIGTERM)
    manager.expect_field("STOPPING", "1", timeout=10)
    assert sv.wait_exit() == 0


def test_workers_do_not_inherit_the_managers_variables(tmp_path, services, manager):
    """Workers talk to sockvisor's NOTIFY_SOCKET, never to the manager's, and do not
    see its watchdog: an sd_notify-aware worker would otherwise ping for us."""
    conf, state = web_config(tmp_path, numprocesses=1, ready="notify",
                             worker_args="--notify-after 0")
    conf.write_text(conf.read_text().replace("sockets = web", "sockets = web\ncopy_env = true"))
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="200000"))
    manager.expect_field("READY", "1", alive=sv.proc)
    [worker] = worker_states(state)
    environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert env["NOTIFY_SOCKET"] != manager.address and env["NOTIFY_SOCKET"].startswith("@")
    assert "WATCHDOG_USEC" not in env and "WATCHDOG_PID" not in env
    # Only sockvisor itself ever sent anything to the manager.
    assert {m.pid for m in manager.messages} == {sv.pid}
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_without_notify_socket_nothing_is_sent_and_all_works(tmp_path, services):
    conf, _state = web_config(tmp_path, numprocesses=1, ready="started")
    # Watchdog and fd store variables without a NOTIFY_SOCKET: nowhere to send.
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(WATCHDOG_USEC="200000", FDSTORE="4"))
    sv.wait_log(r"sockvisor ready: web: 1/1 ready")
    assert http_get(bound_port(sv))["ppid"] == sv.pid
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    log = sv.log()
    assert "Traceback" not in log
    assert not re.search(r"WARNING|ERROR", log), log
    assert "sockvisor stopped" in log


def test_sighup_during_startup_does_not_report_ready_early(tmp_path, services, manager):
    """A reload asked for while sockvisor is still starting must not end in a
    READY=1 before the workers are ready: that READY=1 would tell the manager
    that start-up is over."""
    conf, state = web_config(tmp_path, worker_args="--notify-after 1.5", numprocesses=1)
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect_field("MAINPID", alive=sv.proc)
    sv.signal(signal.SIGHUP)
    ready = manager.expect_field("READY", "1", alive=sv.proc, timeout=30)
    workers = [w for w in worker_states(state) if "ready" in w]
    assert workers and ready.monotonic >= min(w["ready"] for w in workers), \
        (manager.messages, worker_states(state))
    assert ready.fields["STATUS"] == "web: 1/1 ready"
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_sigterm_during_startup_stops_without_ready(tmp_path, services, manager):
    conf, state = web_config(tmp_path, worker_args="--notify-after 30", numprocesses=1)
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect(lambda m: m.fields.get("STATUS") == "web: 0/1 ready",
                   what="the start-up under way", alive=sv.proc)
    sv.signal(signal.SIGTERM)
    manager.expect_field("STOPPING", "1", alive=sv.proc, timeout=10)
    assert sv.wait_exit() == 0
    assert not manager.with_key("READY"), manager.messages
