"""Faults: a worker breaks the listening socket every worker shares.

The workers' fd 3 are duplicates of sockvisor's socket: same open file
description, same socket.  So one worker can

* `shutdown(SHUT_RD)` it: a TCP socket leaves LISTEN (every connection refused;
  with port 0 the kernel even lets the port go), a unix socket refuses every
  connection while still saying it listens.  sockvisor notices (on the worker's
  exit at the latest), listens again — on the same port — or binds a new unix
  socket at the path, and reports it: `relistened` in `listsockets`, a log line.
* set O_NONBLOCK on it: that flag is the file's, so another watcher's plain
  blocking accept() loop gets EAGAIN and dies; restarted on the same
  non-blocking file it would die at once, again and again, until FATAL.
  sockvisor clears the flag before each spawn.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

from sockvisor.control.client import ControlClient

from conftest import http_get, unix_http_get, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from control_helpers import endpoint_of, subscribed, sync_events  # noqa: E402

# Runs once (the marker says so): shut fd 3 down, then exit; with --on-usr1, only
# once SIGUSR1 came (MARKER.waiting says it waits for it).  Later runs just wait.
SHUTDOWN_WORKER = r'''
import os, signal, socket, sys
marker = sys.argv[-1]
if not os.path.exists(marker):
    if "--on-usr1" in sys.argv:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        open(marker + ".waiting", "w").close()
        signal.sigwait({signal.SIGUSR1})
    open(marker, "w").close()
    socket.socket(fileno=3).shutdown(socket.SHUT_RD)
    sys.exit(1)
while True:
    signal.pause()
'''

# Set O_NONBLOCK on fd 3 (as asyncio or Go would), say so, never accept.
NONBLOCKING_WORKER = r'''
import os, signal, sys
os.set_blocking(3, False)
open(sys.argv[1], "w").close()
while True:
    signal.pause()
'''


def _script(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def _call(sv, command: str, properties: dict | None = None) -> dict:
    with ControlClient(f"ipc://{sv.directory}/ctl", 30.0) as client:
        reply = client.call(command, properties or {})
    assert reply["status"] != "error", reply
    return reply


def _sockets(sv) -> dict[str, dict]:
    return {entry["name"]: entry for entry in _call(sv, "listsockets")["sockets"]}


def _config(socket_lines: list[str], scripts, breaker: str, marker, **good: str) -> str:
    return "\n".join([
        "[socket:web]", *socket_lines, "",
        "[watcher:good]", f"cmd = {scripts.cmd('worker.py')}", "sockets = web",
        "numprocesses = 2", "graceful_timeout = 1",
        *(f"{key} = {value}" for key, value in good.items()), "",
        "[watcher:bad]", f"cmd = {scripts.python} {breaker} {marker}", "sockets = web",
        "graceful_timeout = 1", ""])


def test_a_workers_tcp_shutdown_is_repaired_on_the_same_port(sockvisor, scripts,
                                                            tmp_path):
    marker = tmp_path / "shut-down"
    breaker = _script(tmp_path, "shutdown_worker.py", SHUTDOWN_WORKER)
    sv = sockvisor(_config(["host = 127.0.0.1", "port = 0"], scripts,
                           f"{breaker} --on-usr1", marker))
    port = sv.port("web")
    with subscribed(f"ipc://{sv.directory}/ctl.events") as events:
        sync_events(events, endpoint_of(sv), "good")
        wait_for((tmp_path / "shut-down.waiting").exists, 10)
        _call(sv, "signal", {"name": "bad", "signum": "USR1"})
        wait_for(marker.exists, 10, message=lambda: f"the bad worker's shutdown\n"
                                                    f"{sv.describe()}")
        event = events.wait("socket.web.relisten")
    assert (event["address"], event["relistened"]) == (f"127.0.0.1:{port}", 1), event
    sv.wait_log(r"socket web \(127\.0\.0\.1:\d+\) was shut down by a worker", 10)

    answered = wait_for(lambda: _answers(port), 10,
                        message=lambda: f"an answer on port {port}\n{sv.describe()}")
    assert answered["pid"] in sv.worker_pids("worker.py")
    entry = _sockets(sv)["web"]
    assert (entry["port"], entry["listening"]) == (port, True)
    assert entry["relistened"] == 1
    for _ in range(20):   # and it stays so
        http_get(port)


def test_a_workers_unix_shutdown_is_repaired_by_a_new_socket(sockvisor, scripts,
                                                            tmp_path):
    marker = tmp_path / "shut-down"
    path = tmp_path / "web.sock"
    breaker = _script(tmp_path, "shutdown_worker.py", SHUTDOWN_WORKER)
    sv = sockvisor(_config([f"path = {path}"], scripts, breaker, marker,
                           backoff_base="0.05"))
    wait_for(marker.exists, 10, message="the bad worker's shutdown")

    def answers() -> dict | None:
        try:
            return unix_http_get(str(path))
        except OSError:
            return None
    wait_for(answers, 15, message=lambda: f"an answer on {path}\n{sv.describe()}")
    entry = _sockets(sv)["web"]
    assert entry["listening"] and entry["relistened"] == 1
    # The workers that held the dead socket are replaced by a rolling reload:
    # `good` is active again once it is done.
    wait_for(lambda: _call(sv, "status", {"name": "good"})["status"] == "active", 15,
             message=lambda: sv.describe())
    for _ in range(20):
        unix_http_get(str(path))


def test_o_nonblock_set_by_one_watcher_does_not_crash_loop_another(sockvisor, scripts,
                                                                  tmp_path):
    """`good` runs a plain blocking accept() loop, which dies on EAGAIN as real
    code would; `bad` shares its socket and makes the file non-blocking."""
    marker = tmp_path / "nonblocking"
    breaker = _script(tmp_path, "nonblocking_worker.py", NONBLOCKING_WORKER)
    sv = sockvisor(_config(["host = 127.0.0.1", "port = 0"], scripts, breaker, marker,
                           max_restarts="4", restart_window="60", backoff_base="0.05"))
    port = sv.port("web")
    wait_for(marker.exists, 10, message="the bad worker's O_NONBLOCK")

    # Every request is answered: the two workers started before the flag was set
    # may each die once (their next accept() is non-blocking), their
    # replacements get a blocking file again.
    for _ in range(30):
        wait_for(lambda: _answers(port, timeout=5.0), 15,
                 message=lambda: f"an answer on port {port}\n{sv.describe()}")
    status = _call(sv, "status", {"name": "good"})
    assert status["status"] == "active", status
    assert status["watcher"]["restarts"] <= 2, status


def _answers(port: int, timeout: float = 2.0) -> dict | None:
    try:
        return http_get(port, timeout=timeout)
    except (OSError, socket.timeout):
        return None
