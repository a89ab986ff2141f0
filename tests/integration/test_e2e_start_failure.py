"""End to end: what `check` refuses and what `start` does when a watcher cannot start
(issue 8, defects 5 and 16).

* A missing or non-executable `cmd`, a config with no watcher, two sockets on one
  address: `check` and `start` exit 2, naming file, section and key, and `start`
  binds nothing.
* A watcher whose program exists but cannot get going (it exits at once, over and
  over, until the watcher is FATAL) fails sockvisor's start: no READY=1 to the
  service manager, the reason in the log, every worker stopped, the sockets closed
  (the port is free again) and exit status 4.  `start_failure = continue` keeps
  the old behaviour: serve the other watchers and say READY=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import free_port, port_is_free, run_cli, wait_for  # noqa: E402
from systemd_helpers import (services, manager, SOCKVISOR, clean_env,  # noqa: E402,F401
                             write_config)

pytestmark = pytest.mark.timeout(60)

EXIT_CONFIG = 2
EXIT_START_FAILED = 4


def assert_config_error(tmp_path: Path, conf: Path, port: int | None, says: str) -> None:
    """`check` and `start` both refuse `conf` with exit 2 and `says`; nothing bound."""
    for command in ("check", "start"):
        result = run_cli(command, str(conf))
        assert result.returncode == EXIT_CONFIG, result
        assert says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "listening on" not in result.stderr
    assert not (tmp_path / "ctl").exists()
    if port is not None:
        assert port_is_free(port)


# --------------------------------------------------------------------------- check

def test_missing_cmd_is_a_config_error(tmp_path):
    port = free_port()
    conf = write_config(tmp_path, f"""
        [socket:web]
        port = {port}

        [watcher:web]
        cmd = {tmp_path}/no/such/server --listen-fd 3
        sockets = web
    """)
    assert_config_error(tmp_path, conf, port,
                        f"{conf}: [watcher:web]: cmd: {tmp_path}/no/such/server: not found")


def test_non_executable_cmd_is_a_config_error(tmp_path, scripts):
    port = free_port()
    script = scripts.path("worker.py")        # mode 0644: python runs it, exec cannot
    conf = write_config(tmp_path, f"""
        [socket:web]
        port = {port}

        [watcher:web]
        cmd = {script}
        sockets = web
    """)
    assert_config_error(tmp_path, conf, port,
                        f"{conf}: [watcher:web]: cmd: {script}: not executable")


def test_cmd_not_in_path_is_a_config_error(tmp_path):
    conf = write_config(tmp_path, """
        [watcher:web]
        cmd = sockvisor-no-such-program --serve
    """)
    assert_config_error(tmp_path, conf, None, "[watcher:web]: cmd: sockvisor-no-such-"
                                              "program: not found in PATH")


def test_config_without_watchers_is_a_config_error(tmp_path):
    port = free_port()
    conf = write_config(tmp_path, f"""
        [socket:web]
        port = {port}
    """)
    assert_config_error(tmp_path, conf, port, "no [watcher:NAME]")


def test_two_sockets_on_one_address_is_a_config_error(tmp_path, scripts):
    port = free_port()
    conf = write_config(tmp_path, f"""
        [socket:web]
        host = 0.0.0.0
        port = {port}

        [socket:admin]
        host = 127.0.0.1
        port = {port}

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web, admin
    """)
    assert_config_error(tmp_path, conf, port, "[socket:admin]: same address as [socket:web]")


@pytest.mark.timeout(30)
def test_ten_megabyte_args_is_a_config_error(tmp_path):
    conf = write_config(tmp_path, """
        [watcher:web]
        cmd = /bin/true
    """)
    with open(conf, "a") as handle:
        handle.write("args = " + "x" * (10 << 20) + "\n")
    assert_config_error(tmp_path, conf, None, "[watcher:web]: args: value too long")


# --------------------------------------------------------------------------- start

def leftovers(tmp_path: Path) -> list[int]:
    """Live processes running a script from this test's directory."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(tmp_path) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.info["pid"])
    return found


def crash_config(tmp_path: Path, scripts, port: int, *, globals_: str = "") -> Path:
    """[watcher:crash] runs a program that exists and exits 1 at once, and keeps
    failing until FATAL; [watcher:web] is healthy."""
    return write_config(tmp_path, f"""
        [socket:web]
        host = 127.0.0.1
        port = {port}

        [watcher:crash]
        cmd = {scripts.cmd("worker.py")} --role crash --exit 1
        sockets = web
        backoff_base = 0.01
        backoff_max = 0.05
        max_restarts = 2
        ; every exit is a failed start, however long a loaded machine takes to
        ; start Python
        min_uptime = 30

        [watcher:web]
        cmd = {scripts.cmd("worker.py")} --role web
        sockets = web
        graceful_timeout = 2
    """, globals_=globals_)


def test_watcher_fatal_at_start_fails_the_start(tmp_path, scripts, services, manager):
    port = free_port()
    conf = crash_config(tmp_path, scripts, port)
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    # Read as systemd does, while it runs: the datagram queue holds only a few.
    wait_for(lambda: manager.collect(0.05) is not None and sv.proc.poll() is not None,
             30, message=lambda: f"sockvisor to exit\n{sv.describe()}")
    messages = manager.collect(0.2)
    status = sv.wait_exit(1)
    log = sv.log()
    assert status == EXIT_START_FAILED, sv.describe()
    assert not manager.with_key("READY"), manager.messages
    assert manager.with_key("STOPPING"), manager.messages
    assert any("crash" in m.fields.get("STATUS", "") and "FATAL" in m.fields["STATUS"]
               for m in manager.messages), messages
    assert "watcher crash is FATAL" in log
    assert "start-up failed: watcher crash is FATAL" in log
    assert "Traceback" not in log
    # Nothing left behind: no worker of either watcher, the port free.
    assert port_is_free(port)
    wait_for(lambda: not leftovers(tmp_path), 5,
             message=lambda: f"every worker gone (left: {leftovers(tmp_path)})")


def test_start_without_a_service_manager_fails_too(tmp_path, scripts):
    port = free_port()
    conf = crash_config(tmp_path, scripts, port)
    result = run_cli("start", str(conf), timeout=45)
    assert result.returncode == EXIT_START_FAILED, result
    assert "sockvisor ready" not in result.stderr
    assert "start-up failed: watcher crash is FATAL" in result.stderr
    assert port_is_free(port)
    assert not leftovers(tmp_path)


def test_start_failure_continue_serves_the_other_watchers(tmp_path, scripts, services,
                                                          manager):
    port = free_port()
    conf = crash_config(tmp_path, scripts, port, globals_="start_failure = continue")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect_field("READY", "1", alive=sv.proc, timeout=30)
    sv.wait_log(r"watcher crash is FATAL")
    assert sv.proc.poll() is None
    assert not port_is_free(port)
    sv.signal(15)
    assert sv.wait_exit(15) == 0
