"""End to end: what the review of `sockvisorctl upgrade` found, each on a real sockvisor.

A watcher with `uid` can be upgraded (its passwd entry is re-resolved, not
carried as a tuple); an idle on_demand watcher does not block an upgrade and
still starts on the first connection after it; workers started after an
upgrade still get the soft open-files limit sockvisor was started with; and a
loopback tcp control endpoint is never free for another user to bind during
the exec (its listening socket crosses the exec).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
from collections import Counter
from pathlib import Path

import psutil
import pytest

from sockvisor import paths
from conftest import FailingSyscalls, Scripts, Sockvisor, http_get, wait_for
from control_helpers import (ServeWorker, control, ctl, run_ctl, socket_section,
                             watcher_section, worker_pids)
from test_watcher_lifecycle import OTHER_ADDRESS, rewrite

SYSTEM_PYTHON = "/usr/bin/python3"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: workers as nobody")


def _upgrade(sv) -> dict:
    result = ctl(sv, "--json", "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _uids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:4]]
    raise AssertionError(pid)


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(pid)


@pytest.mark.root
@root_only
@pytest.mark.timeout(90)
def test_a_watcher_running_as_nobody_is_upgraded_and_stays_nobody(world_readable_dir,
                                                                   sockvisor):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not available for the unprivileged worker")
    nobody = pwd.getpwnam("nobody")
    scripts = Scripts(world_readable_dir, python=SYSTEM_PYTHON)
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        uid = nobody
        working_dir = {world_readable_dir}
        graceful_timeout = 1

        [watcher:grouped]
        cmd = /bin/sleep 3600
        uid = nobody
        gid = {nobody.pw_gid}
        graceful_timeout = 1
    """)
    with control(sv) as client:
        client.wait_ready("web", 1)
        client.wait_ready("grouped", 1)
        before = {w["pid"] for n in ("web", "grouped") for w in client.status(n)["workers"]}
        result = _upgrade(sv)
        assert result["serial"] == 1, result
        after = {w["pid"] for n in ("web", "grouped") for w in client.status(n)["workers"]}
    assert after == before
    for pid in after:
        assert _uids(pid) == [nobody.pw_uid] * 3
    reply = http_get(sv.port("web"))
    assert reply["uids"] == [nobody.pw_uid] * 3
    # A worker started after the upgrade is nobody too (the config resumed with it).
    assert ctl(sv, "restart", "web").returncode == 0
    with control(sv) as client:
        [worker] = client.wait_ready("web", 1)["workers"]
    assert worker["pid"] not in before
    assert _uids(worker["pid"]) == [nobody.pw_uid] * 3


@pytest.mark.timeout(90)
def test_an_idle_on_demand_watcher_is_upgraded_and_answers_the_next_request(sockvisor,
                                                                            tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=1,
                                                      on_demand="true"))
    with control(sv) as client:
        assert client.status("web")["state"] == "waiting"
        assert _upgrade(sv)["serial"] == 1
        assert client.status("web")["state"] == "waiting"
        port = client.port("web")
        assert http_get(port, timeout=15)["pid"]
        client.wait_ready("web", 1)


@pytest.mark.timeout(90)
def test_a_retired_socket_a_rolled_back_generation_spawns_on_refuses_the_upgrade(
        sockvisor, tmp_path):
    """A socket a failed reloadconfig removed is held by sockvisor alone (no
    name in the socket table, so none in the state), and the rolled-back
    generation spawns its replacements on it: an exec would close it (it is
    close-on-exec) and leave that generation nothing to spawn on.  So the
    upgrade is refused, nothing changes, and once a reloadconfig that succeeds
    releases the socket, the upgrade goes through."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="delay:0.3"))
    with control(sv) as client:
        port = client.port("web")
        before = worker_pids(client.wait_ready("web", 2))
        worker.set_mode("crash")   # the new generation exits at once: rolled back
        moved = OTHER_ADDRESS + watcher_section("web", worker, socket="other",
                                                numprocesses=2, ready="delay:0.3")
        rewrite(sv, moved)
        reply = client.raw("reloadconfig", timeout=30)
        assert reply.get("status") == "error", reply
        worker.set_mode("")
        assert worker_pids(client.wait_ready("web", 2)) == before

        result = ctl(sv, "--json", "upgrade", timeout=60)
        assert result.returncode != 0, f"{result.stdout}\n{sv.describe()}"
        assert "a socket reloadconfig removed is still held by workers" in (
            result.stdout + result.stderr), f"{result.stdout}\n{result.stderr}"
        assert client.call("upgrade", result=True)["upgrades"] == 0
        assert worker_pids(client.wait_ready("web", 2)) == before
        sv.wait_answering(port, before)

        reply = client.raw("reloadconfig", timeout=30)   # the same file, workers fine now
        assert reply.get("status") == "ok", reply
        sv.wait_log(r"socket web \(127\.0\.0\.1:\d+\) closed")
        assert _upgrade(sv)["serial"] == 1
        after = client.wait_ready("web", 2)
        assert not worker_pids(after) & before
        assert "Traceback" not in sv.log(), sv.log()


@pytest.mark.timeout(90)
def test_workers_started_after_an_upgrade_get_the_soft_open_files_limit(tmp_path):
    directory = tmp_path / "sv"
    directory.mkdir()
    config = (f"[sockvisor]\nendpoint = ipc://{directory}/ctl\n\n"
              "[watcher:web]\ncmd = /bin/sleep 3600\nnumprocesses = 1\ngraceful_timeout = 1\n")
    sv = Sockvisor(directory, config, argv_prefix=["prlimit", "--nofile=1024:20000", "--"])
    try:
        sv.wait_ready(30)
        [first] = sv.wait_workers(1, "sleep")
        assert _soft_nofile(first) == 1024
        assert _upgrade(sv)["serial"] == 1
        assert ctl(sv, "restart", "web").returncode == 0
        [second] = wait_for(lambda: [p for p in sv.worker_pids("sleep") if p != first] or None,
                            10, message=lambda: sv.describe())
        assert _soft_nofile(second) == 1024
        assert _soft_nofile(sv.pid) == 20000
    finally:
        sv.cleanup()


SQUAT = r'''
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(16)
    except OSError:
        s.close()
        time.sleep(0.0005)
        continue
    with open(out, "a") as f:
        f.write("squatted\n")
    time.sleep(2)
    s.close()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.root
@root_only
@pytest.mark.timeout(150)
def test_nobody_cannot_take_the_tcp_control_port_during_upgrades(world_readable_dir,
                                                                 tmp_path):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not available for the unprivileged squatter")
    port, events = _free_port(), _free_port()
    directory = tmp_path / "sv"
    directory.mkdir()
    endpoint = f"tcp://127.0.0.1:{port}"
    config = (f"[sockvisor]\nendpoint = {endpoint}\n"
              f"pubsub_endpoint = tcp://127.0.0.1:{events}\n\n"
              "[watcher:web]\ncmd = /bin/sleep 3600\nnumprocesses = 1\ngraceful_timeout = 1\n")
    script = world_readable_dir / "squat.py"
    script.write_text(SQUAT)
    script.chmod(0o644)
    nobody = pwd.getpwnam("nobody")
    drop = world_readable_dir / "squatter"
    drop.mkdir()
    os.chown(drop, nobody.pw_uid, nobody.pw_gid)
    out = drop / "squatted"
    sv = Sockvisor(directory, config)
    squatter = None
    try:
        sv.wait_ready(30)
        squatter = subprocess.Popen([SYSTEM_PYTHON, str(script), str(port), str(out)],
                                    user=nobody.pw_uid, group=nobody.pw_gid,
                                    extra_groups=[], cwd=world_readable_dir)
        for number in range(1, 4):
            result = run_ctl("--endpoint", endpoint, "--json", "upgrade", timeout=60)
            assert result.returncode == 0, f"{result.stderr}\n{sv.describe()}"
            assert json.loads(result.stdout.strip().splitlines()[-1])["serial"] == number
            status = run_ctl("--endpoint", endpoint, "--json", "status", "web", timeout=30)
            assert status.returncode == 0, f"{status.stderr}\n{sv.describe()}"
            assert json.loads(status.stdout)["watcher"]["state"] == "active"
        assert not out.exists(), out.read_text()
        assert squatter.poll() is None
        # No marker left behind beside the ipc endpoints the relay serves.
        place = Path(paths.runtime_dir(str(sv.conf)))
        assert place.is_dir() and not list(place.glob("*.upgrading"))
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait()
        sv.cleanup()


def _fds(pid: int) -> tuple[Counter, int]:
    """What a leak would add: `pid`'s fds other than sockets (their /proc links:
    files, pipes, memfds, eventfds), and its TCP sockets.  Unix sockets are left
    out: the control channel's ipc:// connections come and go with each request."""
    found: Counter = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if not target.startswith("socket:"):
            found[target] += 1
    return found, len(psutil.Process(pid).net_connections(kind="tcp"))


@pytest.mark.timeout(90)
def test_a_failed_exec_leaves_sockvisor_serving_as_before(tmp_path):
    """execve of the new sockvisor fails after the pre-flight passed: the old
    process carries on -- same workers, same socket answering, control channel
    back, no fd leaked -- `upgrade` says why, and the next upgrade works."""
    directory = tmp_path / "sv"
    directory.mkdir()
    config = (f"[sockvisor]\nendpoint = ipc://{directory}/ctl\n\n"
              f"{socket_section()}\n"
              f"{watcher_section('web', ServeWorker(tmp_path / 'worker'), ready='notify')}")
    sv = Sockvisor(directory, config)
    try:
        sv.wait_ready(30)
        with control(sv) as client:
            detail = client.wait_ready("web", 2)
            port = client.port("web")
        pids = {w["pid"] for w in detail["workers"]}
        assert http_get(port)["pid"] in pids
        before = _fds(sv.pid)

        # strace fails sockvisor's own execve (ENOENT), after the pre-flight.
        failing = FailingSyscalls(sv.pid, "execve", "ENOENT")
        try:
            result = ctl(sv, "upgrade", timeout=60)
        finally:
            failing.detach()
        assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
        assert "not upgraded: exec " in result.stderr, result.stderr
        assert "failed: No such file or directory" in result.stderr, result.stderr
        sv.wait_log(r"upgrade abandoned: exec .* failed: No such file or directory; "
                    r"carrying on as before")
        with control(sv) as client:
            after = client.status("web")
            assert after["state"] == "active"
            assert {w["pid"] for w in after["workers"]} == pids
            assert client.port("web") == port
        assert http_get(port)["pid"] in pids
        assert sv.proc.poll() is None
        assert _fds(sv.pid) == before, sv.describe()

        assert _upgrade(sv)["serial"] == 1
        with control(sv) as client:
            assert {w["pid"] for w in client.status("web")["workers"]} == pids
        assert http_get(port)["pid"] in pids
    finally:
        sv.cleanup()
