"""End to end: workers serve on the sockets sockvisor binds and hands them.

The socket-passing protocol is checked from inside a worker (what it sees in its
environment, argv and fds) and from outside (`/proc/PID/fd`): fds 3… in the
watcher's socket order, LISTEN_PID equal to the worker's own pid, blocking
sockets, and no other inherited fd.
"""

from __future__ import annotations

import json
import os
import stat

from conftest import fd_targets, listening_inodes, socket_inodes, wait_for


def test_worker_serves_http_on_inherited_socket(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        graceful_timeout = 2
    """)
    port = sv.port("web")
    assert port != 0
    [pid] = sv.wait_workers(1, "worker.py")
    reply = sv.http_get(port)
    assert reply["pid"] == pid
    assert reply["ppid"] == sv.pid
    assert reply["wid"] == "1"


def test_two_workers_share_one_socket(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        numprocesses = 2
        graceful_timeout = 2
    """)
    port = sv.port("web")
    pids = sv.wait_workers(2, "worker.py")
    assert sv.wait_answering(port, pids) == set(pids)


def test_worker_sees_sd_listen_fds_environment(sockvisor, scripts, tmp_path):
    out = tmp_path / "seen"
    out.mkdir()
    # Sections in the opposite order of the watcher's list: the fds follow the list.
    sv = sockvisor(f"""
        [socket:admin]
        host = 0.0.0.0
        port = 0

        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:probe]
        cmd = {scripts.cmd("probe.py")} --out {out}/wid-$(sockvisor.wid).json
              --web-fd $(sockvisor.sockets.web) --admin-fd $(circus.sockets.admin)
              --wid $(sockvisor.wid)
        sockets = web, admin
        numprocesses = 2
        graceful_timeout = 1
    """)
    web, admin = sv.port("web"), sv.port("admin")
    files = [out / "wid-1.json", out / "wid-2.json"]
    wait_for(lambda: all(f.exists() for f in files), 10,
             message=lambda: f"probe reports {files}\n{sv.describe()}")
    worker_pids = set(sv.worker_pids("probe.py"))
    seen_pids = set()
    for wid, path in enumerate(files, start=1):
        seen = json.loads(path.read_text())
        seen_pids.add(seen["pid"])
        env = seen["env"]
        assert env["LISTEN_PID"] == str(seen["pid"])
        assert env["LISTEN_FDS"] == "2"
        assert env["LISTEN_FDNAMES"] == "web:admin"
        assert env["SERVER_STARTER_PORT"] == f"127.0.0.1:{web}=3;{admin}=4"
        assert env["SOCKVISOR_WID"] == str(wid)
        assert seen["argv"] == ["--out", str(path), "--web-fd", "3", "--admin-fd", "4",
                                "--wid", str(wid)]
        assert seen["fds"]["3"]["sockname"] == ["127.0.0.1", web]
        assert seen["fds"]["4"]["sockname"] == ["0.0.0.0", admin]
        for fd in ("3", "4"):
            assert seen["fds"][fd]["listening"]
            assert not seen["fds"][fd]["nonblocking"], f"fd {fd} has O_NONBLOCK set"
    assert seen_pids == worker_pids


def test_worker_inherits_only_stdio_and_its_sockets(sockvisor, scripts):
    # Two sockets bound, the watcher uses one; output through pipes (prefix, and
    # null too: `logs` keeps its lines); and
    # sockvisor itself inherited a stray fd from its parent, which must stop there.
    # High and low: fds are closed below and above the copies made while forking.
    stray_r, stray_w = os.pipe()
    stray_high = os.dup2(stray_w, 250)
    stray = os.readlink(f"/proc/self/fd/{stray_w}")
    try:
        sv = sockvisor(f"""
            [socket:web]
            port = 0

            [socket:other]
            port = 0

            [watcher:web]
            cmd = {scripts.cmd("worker.py")}
            sockets = web
            stdout = prefix
            stderr = null
            graceful_timeout = 1
        """, pass_fds=[stray_w, stray_high])
    finally:
        for fd in (stray_r, stray_w, stray_high):
            os.close(fd)
    for fd in (stray_w, stray_high):
        assert fd_targets(sv.pid).get(fd) == stray, "the stray fds did not reach sockvisor"
    port = sv.port("web")
    [pid] = sv.wait_workers(1, "worker.py")
    sv.http_get(port)   # it has exec'd and is in its accept loop

    # An accepted connection may still be closing: wait for the steady state.
    def fds_settled() -> dict[int, str] | None:
        targets = fd_targets(pid)
        return targets if set(targets) == {0, 1, 2, 3} else None
    targets = wait_for(fds_settled, 5,
                       message=lambda: f"fds 0-3 only in {pid}, have {fd_targets(pid)}")
    assert targets[0] == "/dev/null"
    assert targets[1].startswith("pipe:")
    assert targets[2].startswith("pipe:") and targets[2] != targets[1]
    [web_inode] = listening_inodes(port)
    assert socket_inodes(pid) == {3: web_inode}
    # The very /dev/null character device, not a file of that name.
    assert os.stat(f"/proc/{pid}/fd/0").st_rdev == os.stat("/dev/null").st_rdev
    assert stat.S_ISCHR(os.stat(f"/proc/{pid}/fd/0").st_mode)
