"""End to end, as root: a privileged port served by a worker running as `nobody`.

sockvisor binds port 80 as root and hands the socket to a worker that has
dropped every privilege: real, effective and saved uid/gid are nobody's, the
supplementary groups are nobody's (not root's), and HOME/USER/LOGNAME describe
nobody.  The worker runs Debian's /usr/bin/python3 on a script in a
world-readable directory, since the default python3 may live under a 0700 /root.
"""

from __future__ import annotations

import os
import pwd
import signal

import psutil
import pytest

from conftest import Scripts, is_gone, port_is_free, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: binds port 80 and switches to uid nobody"),
]

SYSTEM_PYTHON = "/usr/bin/python3"


def _require_system_python() -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not available for the unprivileged worker")


# world_readable_dir first: it is removed after sockvisor has stopped.
def test_worker_as_nobody_serves_port_80(world_readable_dir, sockvisor):
    _require_system_python()
    if not port_is_free(80):
        pytest.skip("port 80 on 127.0.0.1 is in use")
    nobody = pwd.getpwnam("nobody")
    scripts = Scripts(world_readable_dir, python=SYSTEM_PYTHON)
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 80

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        uid = nobody
        working_dir = {world_readable_dir}
        graceful_timeout = 1
    """)
    assert sv.address("web") == "127.0.0.1:80"
    [pid] = sv.wait_workers(1, "worker.py")
    reply = sv.http_get(80)
    assert reply["pid"] == pid

    assert reply["uids"] == [nobody.pw_uid] * 3
    assert reply["gids"] == [nobody.pw_gid] * 3
    assert set(reply["groups"]) == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert 0 not in reply["groups"]
    assert reply["env"] == {"HOME": nobody.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
    # The same, seen by the kernel rather than by the worker.
    process = psutil.Process(pid)
    assert tuple(process.uids()) == (nobody.pw_uid,) * 3
    assert tuple(process.gids()) == (nobody.pw_gid,) * 3
    # sockvisor itself stays root: it must be able to bind and signal.
    assert psutil.Process(sv.pid).uids().effective == 0


def test_copy_env_still_describes_the_workers_own_user(world_readable_dir, sockvisor):
    """copy_env passes sockvisor's environment on, but HOME=/root, USER=root would
    lie to a worker running as nobody (and send its dotfiles to root's home);
    what the config sets explicitly still wins."""
    _require_system_python()
    assert os.environ.get("HOME") != pwd.getpwnam("nobody").pw_dir
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
        copy_env = true
        working_dir = {world_readable_dir}
        graceful_timeout = 1

        [env:web]
        LOGNAME = from-the-config
    """)
    reply = sv.http_get(sv.port("web"))
    assert reply["uids"] == [nobody.pw_uid] * 3
    assert reply["env"] == {"HOME": nobody.pw_dir, "USER": "nobody",
                            "LOGNAME": "from-the-config"}


def test_unprivileged_worker_dies_with_sockvisor(world_readable_dir, sockvisor):
    """PR_SET_PDEATHSIG is cleared by a credential change: it must be set after it."""
    _require_system_python()
    scripts = Scripts(world_readable_dir, python=SYSTEM_PYTHON)
    sv = sockvisor(f"""
        [watcher:idle]
        cmd = {scripts.cmd("worker.py")} --no-serve
        uid = nobody
        working_dir = {world_readable_dir}
        numprocesses = 2
    """)
    pids = sv.wait_workers(2, "worker.py")
    assert all(psutil.Process(pid).uids().real != 0 for pid in pids)
    sv.signal(signal.SIGKILL)
    sv.wait_exit(5)
    wait_for(lambda: all(is_gone(pid) for pid in pids), 5,
             message=f"nobody's workers {pids} to die with sockvisor")
