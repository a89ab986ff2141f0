"""End to end: what happens when workers die — replacement, crash loops, zombies.

The listening socket belongs to sockvisor, so a worker's death must not close
it: a connection waiting in the accept queue when a worker is killed is answered
by the replacement.  A worker that keeps failing to start makes its watcher
FATAL (and nothing else), and no dead child is ever left unreaped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from pathlib import Path

import psutil

from conftest import (listening_inodes, parse_http_response, read_until_eof,
                      socket_inodes, wait_for)


def test_killed_worker_is_replaced_and_queued_connection_survives(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        backoff_base = 0.05
        graceful_timeout = 1
    """)
    port = sv.port("web")
    [old] = sv.wait_workers(1, "worker.py")
    assert sv.http_get(port)["pid"] == old
    [inode] = listening_inodes(port)
    assert inode in socket_inodes(sv.pid).values()

    # Freeze the only worker, then connect: the connection waits in the accept queue.
    os.kill(old, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(old).status() == psutil.STATUS_STOPPED, 5,
             message=f"worker {old} to stop")
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        client.sendall(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
        os.kill(old, signal.SIGKILL)
        [new] = sv.wait_workers(1, "worker.py", exclude=[old])
        reply = parse_http_response(read_until_eof(client))
    finally:
        client.close()
    assert reply["pid"] == new != old
    assert sv.http_get(port)["pid"] == new
    sv.wait_log(rf"web\[{old}\] exited unexpectedly .*killed by SIGKILL")
    # The same listening socket, still held by sockvisor, never closed or re-bound.
    assert listening_inodes(port) == {inode}
    assert inode in socket_inodes(sv.pid).values()


def test_crash_loop_goes_fatal_and_other_watchers_keep_serving(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:crash]
        cmd = {scripts.cmd("worker.py")} --role crash --exit 1
        ready = delay:0.3
        backoff_base = 0.01
        backoff_max = 0.05
        max_restarts = 3
        restart_window = 30
        stderr = null

        [watcher:web]
        cmd = {scripts.cmd("worker.py")} --role web
        sockets = web
        graceful_timeout = 1
    """, globals="start_failure = continue")
    sv.wait_log(r"watcher crash is FATAL: 4 failed starts within 30s \(max_restarts = 3\)")
    sv.wait_log(r"watcher crash: \w+ -> fatal")
    spawns = sv.log_count(r"watcher crash: spawned ")
    assert spawns == 4   # the first start and max_restarts restarts, no more

    # Observe for a while, doing something useful: the other watcher serves,
    # and the FATAL one spawns nothing.
    port = sv.port("web")
    [web_pid] = sv.wait_workers(1, "--role web")
    deadline = time.monotonic() + 0.5
    requests = 0
    while time.monotonic() < deadline:
        assert sv.http_get(port)["pid"] == web_pid
        assert sv.worker_pids("--role crash") == []
        requests += 1
    assert requests > 0
    assert sv.log_count(r"watcher crash: spawned ") == spawns
    assert sv.proc.poll() is None

    # `start` on the FATAL watcher tries afresh and, failing again, is a failed
    # command (exit 1) that says why, not an "ok" (ready = delay:0.3 makes a
    # crash after exec count as not ready).
    result = subprocess.run(
        [sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint", f"ipc://{sv.directory}/ctl",
         "start", "crash"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert "crash is FATAL: 4 failed starts" in result.stderr
    assert sv.log_count(r"watcher crash: spawned ") == 2 * spawns


def test_no_zombies_after_worker_deaths(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        numprocesses = 2
        min_uptime = 0
        graceful_timeout = 1
    """)
    port = sv.port("web")
    seen = set(sv.wait_workers(2, "worker.py"))
    for _ in range(4):
        victim = sv.worker_pids("worker.py")[0]
        os.kill(victim, signal.SIGKILL)
        pids = sv.wait_workers(2, "worker.py", exclude=[victim])
        seen.update(pids)
    assert len(seen) >= 6

    # A death is a zombie until sockvisor reaps it, which must not take long.
    wait_for(lambda: not sv.zombies(), 5,
             message=lambda: f"no zombie children (have {sv.zombies()})\n{sv.describe()}")
    assert sv.log_count(r"web\[\d+\] exited unexpectedly .*killed by SIGKILL") == 4
    sv.http_get(port)


def test_orphans_reparented_to_subreaper_are_reaped(sockvisor, scripts):
    sv = sockvisor(f"""
        [watcher:forker]
        cmd = {scripts.cmd("worker.py")} --fork-child --no-serve
        min_uptime = 0
        graceful_timeout = 1
    """, globals="subreaper = true")
    [worker] = sv.wait_workers(1, "worker.py")
    worker_process = psutil.Process(worker)
    [grandchild] = wait_for(lambda: worker_process.children(), 5,
                            message="the worker's child")
    sv.track(grandchild)
    os.kill(worker, signal.SIGKILL)
    # The child is in the worker's process group, so it goes with the worker
    # (issue 8): SIGKILLed, re-parented to sockvisor (the subreaper, not init)
    # and reaped there, never left a zombie.

    def reaped() -> bool:
        try:
            psutil.Process(grandchild.pid)
        except psutil.NoSuchProcess:
            return True
        return False
    wait_for(reaped, 5, message=f"orphan {grandchild.pid} reaped (not a zombie)")
    sv.wait_log(rf"reaped orphan pid {grandchild.pid} \(killed by SIGKILL\)")
    sv.wait_workers(1, "worker.py", exclude=[worker])


def test_missing_binary_is_reported_and_goes_fatal(sockvisor, scripts, tmp_path):
    # A missing cmd is a config error; a binary can still vanish after the config
    # was read (a deploy gone wrong): then exec says so and the watcher goes FATAL.
    binary = tmp_path / "binary"
    binary.write_bytes(Path("/bin/true").read_bytes())
    binary.chmod(0o755)
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:broken]
        cmd = {binary} --flag
        autostart = false
        backoff_base = 0.01
        backoff_max = 0.05
        max_restarts = 2

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        graceful_timeout = 1
    """)
    binary.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint", f"ipc://{sv.directory}/ctl",
         "start", "broken"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    sv.wait_log(rf"watcher broken: cannot execute '{binary}': not found")
    sv.wait_log(r"watcher broken is FATAL")
    log = sv.log()
    assert "Traceback" not in log
    assert sv.proc.poll() is None
    port = sv.port("web")
    [web_pid] = sv.wait_workers(1, "worker.py")
    assert sv.http_get(port)["pid"] == web_pid
    # Nothing left of the failed forks.
    assert sv.worker_pids() == [web_pid]
    # One line per event to the very end: the failed workers' readiness, awaited by
    # nobody, must not come back as asyncio's "exception was never retrieved"
    # (3 lines each, when the garbage collector gets to them, at the latest at exit).
    assert sv.stop() == 0
    assert "never retrieved" not in sv.log(), sv.log()
