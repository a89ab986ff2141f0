"""End to end: unix stream sockets — mode, stale files, and a path already in use.

sockvisor creates the socket file with the configured mode (never looser, even
for a moment), removes it when it exits, replaces a stale file nobody listens on,
and refuses — exit status 3, nothing spawned, the file left alone — when another
process is listening on the path.
"""

from __future__ import annotations

import grp
import os
import socket
import stat

from conftest import unix_http_get


def _config(path, scripts, marker) -> str:
    return f"""
        [socket:local]
        path = {path}
        mode = 0660

        [watcher:local]
        cmd = {scripts.cmd("worker.py")} --marker {marker}
        sockets = local
        graceful_timeout = 1
    """


def test_unix_socket_mode_serving_and_cleanup(sockvisor, scripts, tmp_path):
    path = tmp_path / "s.sock"
    sv = sockvisor(_config(path, scripts, tmp_path / "spawned"))
    assert sv.address("local") == str(path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    [pid] = sv.wait_workers(1, "worker.py")
    assert unix_http_get(str(path))["pid"] == pid
    assert sv.stop() == 0
    assert not path.exists(), "the socket file outlived sockvisor"


def test_stale_unix_socket_file_is_replaced(sockvisor, scripts, tmp_path):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))   # bound, never listening, closed: a stale file
    os.chmod(path, 0o600)
    sv = sockvisor(_config(path, scripts, tmp_path / "spawned"))
    assert f"removing stale socket file {path}" in sv.log()
    # (Not the inode: the file system may well reuse the number of the unlinked file.)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    [pid] = sv.wait_workers(1, "worker.py")
    assert unix_http_get(str(path))["pid"] == pid


def test_unix_socket_in_use_refuses_to_start(sockvisor, scripts, tmp_path):
    path = tmp_path / "s.sock"
    marker = tmp_path / "spawned"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        inode = os.lstat(path).st_ino
        sv = sockvisor(_config(path, scripts, marker), ready=False)
        assert sv.wait_exit(15) == 3, sv.describe()
        log = sv.log()
        assert f"[socket:local] {path}: something is listening on it already" in log
        assert "Traceback" not in log
        assert "spawned" not in log and not marker.exists(), "a worker was started"
        # The other program's socket file is untouched, and still works.
        assert os.lstat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))


def test_reloadconfig_changes_mode_and_group_in_place(sockvisor, scripts, tmp_path):
    """The same socket file (same inode, still serving) gets the new mode and group."""
    from sockvisor.control.client import ControlClient
    path = tmp_path / "s.sock"
    sv = sockvisor(_config(path, scripts, tmp_path / "spawned"))
    [pid] = sv.wait_workers(1, "worker.py")
    inode = os.lstat(path).st_ino
    sv.conf.write_text(sv.conf.read_text().replace("mode = 0660",
                                                   "mode = 0604\ngroup = nogroup"))
    with ControlClient(f"ipc://{sv.directory}/ctl", 30.0) as client:
        reply = client.call("reloadconfig", {})
    assert reply["status"] == "ok", reply
    st = os.lstat(path)
    assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o604)
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid
    assert unix_http_get(str(path))["pid"] == pid
