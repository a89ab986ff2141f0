"""Attacks, as root: the worker swaps a unix socket's file for a symlink to a root-only file.

The usual layout puts the socket in a folder the worker owns (`/run/app/app.sock`,
the folder `nobody`'s), so the worker can replace the name `app.sock` with anything
at any moment.  sockvisor must never chmod or chown what it finds there by path:

* `reloadconfig` with a new mode/owner/group, after the worker replaced `app.sock`
  by a symlink to a root-only file: the file keeps its mode and owner, the command
  fails saying the socket file is no longer sockvisor's, and sockvisor keeps
  running with its socket.
* The first bind (here: a socket added by `reloadconfig`), with the worker
  replacing the freshly bound file by a symlink before the mode is set: the
  window is made deterministic by `strace` delaying the return of sockvisor's
  bind() by half a second while the attacker, woken by inotify, does the swap.
* A path planted as a symlink before sockvisor starts is refused, never followed.

The attacker really runs as `nobody`; the target is a 0600 root file in a 0700
root folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from sockvisor.control.client import ControlClient

from conftest import Scripts, unix_http_get, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the worker runs as nobody"),
]

SYSTEM_PYTHON = "/usr/bin/python3"

# Replace NAME in DIR by a symlink to TARGET, atomically (rename over it), as the
# worker would.  argv: DIR NAME TARGET
SWAP = r'''
import os, sys
directory, name, target = sys.argv[1:]
temporary = os.path.join(directory, ".swap-" + name)
os.symlink(target, temporary)
os.rename(temporary, os.path.join(directory, name))
'''

# Wait (inotify) until NAME is created in DIR, then swap it as SWAP does; print
# "watching" once the watch is in place and "swapped" when done.
# argv: DIR NAME TARGET
RACER = r'''
import ctypes, os, struct, sys
directory, name, target = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE = 0x100
fd = libc.inotify_init()
assert fd >= 0 and libc.inotify_add_watch(fd, directory.encode(), IN_CREATE) >= 0
temporary = os.path.join(directory, ".swap-" + name)
os.symlink(target, temporary)
print("watching", flush=True)
while True:
    data = os.read(fd, 65536)
    offset, names = 0, []
    while offset < len(data):
        wd, mask, cookie, length = struct.unpack_from("iIII", data, offset)
        names.append(data[offset + 16:offset + 16 + length].rstrip(b"\0").decode())
        offset += 16 + length
    if name in names:
        os.rename(temporary, os.path.join(directory, name))
        print("swapped", flush=True)
        break
'''


def _require_system_python() -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not available for the unprivileged worker")


def _as_nobody(script: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([SYSTEM_PYTHON, "-c", script, *args], user="nobody",
                            group="nogroup", extra_groups=[], cwd="/", **popen)


class Layout:
    """world_readable_dir/app (nobody's folder) for the socket, and a root-only
    secret the worker wants to own."""

    def __init__(self, base: Path):
        self.base = base
        self.app = base / "app"
        self.app.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(self.app, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.app, 0o755)
        vault = base / "vault"
        vault.mkdir(mode=0o700)
        self.secret = vault / "shadow"
        self.secret.write_text("root:secret\n")
        os.chmod(self.secret, 0o600)
        self.scripts = Scripts(base / "workers", python=SYSTEM_PYTHON)
        self.scripts.directory.chmod(0o755)

    def secret_untouched(self) -> None:
        st = os.stat(self.secret)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), \
            f"root's file was changed through the worker's symlink: mode " \
            f"{stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}:{st.st_gid}"

    def socket_section(self, name: str, sock: str, *extra: str, mode: str = "0660") -> str:
        return "\n".join([f"[socket:{name}]", f"path = {self.app / sock}",
                          f"mode = {mode}", *extra, "", ""])

    def watcher_section(self) -> str:
        return "\n".join(["[watcher:web]", f"cmd = {self.scripts.cmd('worker.py')}",
                          "sockets = web", "uid = nobody", f"working_dir = {self.base}",
                          "graceful_timeout = 1", ""])


def _rewrite(sv, body: str) -> None:
    text = sv.conf.read_text()
    head = text[:text.index("\n\n") + 2]     # the fixture's [sockvisor] section
    sv.conf.write_text(head + textwrap.dedent(body).strip() + "\n")


def _call(sv, command: str, properties: dict | None = None) -> dict:
    with ControlClient(f"ipc://{sv.directory}/ctl", 30.0) as client:
        return client.call(command, properties or {})


# world_readable_dir first: it is removed after sockvisor has stopped.
def test_reloadconfig_mode_change_does_not_follow_the_workers_symlink(world_readable_dir,
                                                                     sockvisor):
    _require_system_python()
    layout = Layout(world_readable_dir)
    path = layout.app / "app.sock"
    sv = sockvisor(layout.socket_section("web", "app.sock") + layout.watcher_section())
    [pid] = sv.wait_workers(1, "worker.py")
    wait_for(lambda: unix_http_get(str(path))["pid"] == pid, 10)

    swap = _as_nobody(SWAP, str(layout.app), "app.sock", str(layout.secret))
    assert swap.wait(10) == 0
    assert path.is_symlink()

    _rewrite(sv, layout.socket_section("web", "app.sock", "owner = nobody",
                                       "group = nogroup", mode="0666")
             + layout.watcher_section())
    reply = _call(sv, "reloadconfig")

    layout.secret_untouched()
    assert reply["status"] == "error", reply
    assert f"{path}" in reply["reason"] and "no longer" in reply["reason"], reply
    # sockvisor lives on with its socket, and nothing else was changed.
    assert sv.proc.poll() is None, sv.describe()
    sockets = {s["name"]: s for s in _call(sv, "listsockets")["sockets"]}
    assert sockets["web"]["path"] == str(path)
    assert "Traceback" not in sv.log()


def test_a_new_socket_swapped_right_after_bind_is_not_chmodded(world_readable_dir,
                                                              sockvisor):
    """The first bind's race, made deterministic: strace holds sockvisor's bind()
    half a second before it returns; the worker swaps the new file meanwhile."""
    _require_system_python()
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is needed to hold bind() open")
    layout = Layout(world_readable_dir)
    body = layout.socket_section("web", "app.sock") + layout.watcher_section()
    sv = sockvisor(body)
    sv.wait_workers(1, "worker.py")

    racer = _as_nobody(RACER, str(layout.app), "second.sock", str(layout.secret),
                       stdout=subprocess.PIPE, text=True)
    tracer = None
    try:
        assert racer.stdout.readline().strip() == "watching"
        tracer = subprocess.Popen(
            [strace, "-p", str(sv.pid), "-e", "trace=bind",
             "-e", "inject=bind:delay_exit=500000", "-o", "/dev/null"],
            stderr=subprocess.PIPE, text=True)
        # strace says "Process N attached" once the (main) thread is traced.
        said = tracer.stderr.readline()
        if "attached" not in said:
            pytest.skip(f"strace cannot trace sockvisor here: {said.strip()}")
        _rewrite(sv, body + layout.socket_section("second", "second.sock",
                                                  "owner = nobody"))
        reply = _call(sv, "reloadconfig")
        assert racer.stdout.readline().strip() == "swapped", "the race did not happen"
    finally:
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)   # detaches from sockvisor
            tracer.wait(10)
        racer.kill()
        racer.wait(10)

    layout.secret_untouched()
    assert reply["status"] == "error", reply
    assert "config not reloaded" in reply["reason"], reply
    assert sv.proc.poll() is None, sv.describe()
    assert "second" not in {s["name"] for s in _call(sv, "listsockets")["sockets"]}


def test_a_path_planted_as_a_symlink_is_refused_not_followed(world_readable_dir,
                                                            sockvisor):
    _require_system_python()
    layout = Layout(world_readable_dir)
    path = layout.app / "app.sock"
    swap = _as_nobody(SWAP, str(layout.app), "app.sock", str(layout.secret))
    assert swap.wait(10) == 0
    sv = sockvisor(layout.socket_section("web", "app.sock", "owner = nobody")
                   + layout.watcher_section(), ready=False)
    assert sv.wait_exit(15) == 3, sv.describe()
    assert f"{path} exists and is not a socket" in sv.log()
    layout.secret_untouched()
    assert path.is_symlink(), "the worker's link was replaced or followed"
