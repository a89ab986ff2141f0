"""`reloadconfig` has one commit point: a step that fails before it changes nothing.

Everything that can fail -- binding new and moved sockets, the in-place
chmod/chown of a unix socket's file -- runs before anything is committed; a
failure undoes exactly what was done (fresh sockets closed, the file's mode and
owner put back) and leaves the supervisor's config, socket table and workers as
they were.  (Before, the chmod/chown ran after the old sockets had been moved
aside and its failure was reported as "the new config is applied, but ...":
the moved and removed sockets were retired, the workers rolled to the new
config, and the socket file kept half of its new permissions.)

Root cannot be refused a chown by the kernel on an ordinary file system, so the
failure is injected: `strace` makes sockvisor's own chown() fail with EPERM (the
workers are not traced: strace follows only the supervisor's thread).
"""

from __future__ import annotations

import os
import socket
import stat
import textwrap

import psutil
import pytest

from conftest import FailingSyscalls, fd_targets, free_port, unix_http_get, wait_for
from control_client_helpers import (call, echo_worker_cmd, endpoint_of, fd_link, ok,
                                    pids_of, sockets_of)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown of the socket file"),
]


def rewrite(sv, body: str) -> None:
    text = sv.conf.read_text()
    head = text[:text.index("\n\n") + 2]     # the fixture's [sockvisor] section
    sv.conf.write_text(head + textwrap.dedent(body).strip() + "\n")


def config(cmd: str, app: str, *, web_port: int = 0, version: str = "1",
           app_extra: str = "", sockets: str = "web, app, gone", extra: str = "") -> str:
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = {web_port}
        blocking = false

        [socket:app]
        path = {app}
        blocking = false
        {app_extra}

        {extra}

        [watcher:web]
        cmd = {cmd}
        sockets = {sockets}
        graceful_timeout = 3
        env = VERSION={version}
    """


GONE = """
        [socket:gone]
        host = 127.0.0.1
        port = 0
        blocking = false
"""

EXTRA = """
        [socket:extra]
        host = 127.0.0.1
        port = 0
        blocking = false
"""


def failing_chown(pid: int) -> FailingSyscalls:
    """strace attached to sockvisor, failing every chown()/fchownat() with EPERM."""
    return FailingSyscalls(pid, "chown,fchownat,lchown", "EPERM")


def held(pid: int) -> tuple[list[str], int]:
    """What a leak would add: sockvisor's fds other than sockets (files, O_PATH
    fds of socket files, pipes...), and its TCP sockets.  Unix sockets are left
    out: the control channel's ipc:// connections come and go with each request."""
    others = sorted(target for target in fd_targets(pid).values()
                    if not target.startswith("socket:"))
    return others, len(psutil.Process(pid).net_connections(kind="tcp"))


def table(endpoint: str) -> dict[str, tuple]:
    return {name: (s["fd"], s.get("host"), s.get("port"), s.get("path"), s["backlog"])
            for name, s in sockets_of(endpoint).items()}


def test_a_failing_chown_leaves_config_sockets_and_workers_as_they_were(sockvisor,
                                                                       tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    app = run / "app.sock"
    cmd = echo_worker_cmd(tmp_path / "w")
    before_body = config(cmd, str(app), app_extra="mode = 0660", extra=GONE)
    sv = sockvisor(before_body)
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "echo_worker")
    before = table(endpoint)
    links = {name: fd_link(sv.pid, entry[0]) for name, entry in before.items()}
    fds_before = held(sv.pid)
    app_stat = os.stat(app)
    assert stat.S_IMODE(app_stat.st_mode) == 0o660

    # The new config moves `web`, drops `gone`, adds `extra`, rolls the watcher
    # and gives app.sock a new mode (which works) and owner (which fails).
    new_port = free_port()
    rewrite(sv, config(cmd, str(app), web_port=new_port, version="2",
                       app_extra="mode = 0600\n        owner = nobody", sockets="web, app, extra",
                       extra=EXTRA))
    tracer = failing_chown(sv.pid)
    try:
        reply = call(endpoint, "reloadconfig", timeout=30)
    finally:
        tracer.detach()

    assert reply["status"] == "error", reply
    assert str(app) in reply["reason"] and "mode/owner" in reply["reason"], reply
    assert "applied" not in reply["reason"], reply
    # The socket table: the same sockets, the same fds, the very same sockets.
    assert table(endpoint) == before
    assert {name: fd_link(sv.pid, entry[0]) for name, entry in before.items()} == links
    # The file: its old mode and owner back (the chmod had succeeded).
    now = os.stat(app)
    assert (stat.S_IMODE(now.st_mode), now.st_uid, now.st_gid) == (
        0o660, app_stat.st_uid, app_stat.st_gid)
    # Nothing bound for the new config is left open: no fd leaked, the new port free.
    wait_for(lambda: held(sv.pid) == fds_before, 5,
             message=lambda: f"{held(sv.pid)} held, {fds_before} before")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", new_port), timeout=2).close()
    # The config is the old one, and its worker still serves on every socket.
    assert ok(endpoint, "get", {"name": "web", "keys": ["sockets"]})["options"] == {
        "sockets": ["web", "app", "gone"]}
    assert pids_of(endpoint, "web") == [pid]
    assert sv.http_get(before["web"][2])["version"] == "1"
    assert sv.http_get(before["gone"][2])["pid"] == pid
    assert unix_http_get(str(app))["pid"] == pid
    assert sv.proc.poll() is None and "Traceback" not in sv.log()

    # Without the fault the same config applies: nothing was left half-done.
    summary = ok(endpoint, "reloadconfig", timeout=30)
    assert summary["sockets_added"] == ["extra"] and summary["sockets_removed"] == ["gone"]
    assert summary["sockets_changed"] == ["web"]
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o600
    wait_for(lambda: sv.http_get(new_port)["version"] == "2", 10)


def test_a_socket_that_cannot_be_bound_undoes_the_chmod_done_before(sockvisor, tmp_path):
    """In-place changes are made before the binds: a bind that fails afterwards
    puts the socket file's mode back (and closes what was bound before it)."""
    run = tmp_path / "run"
    run.mkdir()
    app = run / "app.sock"
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(config(cmd, str(app), app_extra="mode = 0660", extra=GONE))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "echo_worker")
    before = table(endpoint)
    fds_before = held(sv.pid)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = free_port()
        # `extra` binds, then `busy` cannot: both are undone with the chmod.
        sections = (GONE + EXTRA.replace("port = 0", f"port = {free}")
                    + EXTRA.replace("extra", "busy").replace("port = 0", f"port = {busy}"))
        rewrite(sv, config(cmd, str(app), app_extra="mode = 0600", extra=sections))
        reply = call(endpoint, "reloadconfig", timeout=30)
    assert reply["status"] == "error" and "[socket:busy]" in reply["reason"], reply
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o660
    assert table(endpoint) == before
    wait_for(lambda: held(sv.pid) == fds_before, 5,
             message=lambda: f"{held(sv.pid)} held, {fds_before} before")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free), timeout=2).close()
    assert pids_of(endpoint, "web") == [pid]
    assert unix_http_get(str(app))["pid"] == pid
