"""Attacks, as root with the worker as `nobody`, on the log folder the worker may write.

`stdout = file:DIR/out.log` where DIR belongs to the worker's user (the usual
layout: the application may write its own logs there too).  The worker replaces
`out.log` with a symlink to a file only root may touch — or with a FIFO — and
then makes sockvisor reopen, truncate or rotate the log: by writing past
`stdout_max_bytes`, or through a group operator's `set web stdout_max_bytes …`
plus `signal web KILL`, or by waiting for the next start.  Root must never
write, truncate or chmod through what the worker planted, and a FIFO must not
freeze the event loop.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from conftest import run_cli, wait_for
from sockvisor.control.client import ControlClient

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the worker runs as nobody"),
]

SYSTEM_PYTHON = "/usr/bin/python3"
SECRET = "root only: must never change\n"

PLANTER = r'''
"""Attacker worker: swap LOGDIR/out.log for a symlink to TARGET (or a FIFO),
then write LINES lines of output, then wait."""
import os, signal, sys

logdir, target, kind, lines = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
name = os.path.join(logdir, "out.log")
print("before the swap", flush=True)
if not os.path.islink(name) and not os.path.exists(name + ".fifo-planted"):
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    if kind == "symlink":
        os.symlink(target, name)
    else:
        os.mkfifo(name)
        open(name + ".fifo-planted", "w").close()
open(os.path.join(logdir, f"planted.{os.getpid()}"), "w").close()
out = os.fdopen(1, "w", buffering=1)
for number in range(lines):
    out.write(f"attack {number:06d} " + "x" * 40 + "\n")
out.flush()
while True:
    signal.pause()
'''


def _require_system_python() -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed for the unprivileged worker")


@pytest.fixture
def layout(world_readable_dir: Path, tmp_path: Path):
    """(the attacker script, the worker's log folder, a root-only target file)."""
    _require_system_python()
    nobody = pwd.getpwnam("nobody")
    world_readable_dir.joinpath("workers").mkdir(mode=0o755)
    planter = world_readable_dir / "workers" / "planter.py"
    planter.write_text(PLANTER.lstrip())
    planter.chmod(0o644)
    logdir = world_readable_dir / "log"
    logdir.mkdir(mode=0o755)
    os.chown(logdir, nobody.pw_uid, nobody.pw_gid)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    target = secret_dir / "root-only"
    target.write_text(SECRET)
    target.chmod(0o600)
    return planter, logdir, target


def _unchanged(target: Path) -> None:
    st = target.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, \
        f"{target}'s mode changed to {oct(st.st_mode)}"
    assert st.st_uid == 0
    assert target.read_text() == SECRET, \
        f"root wrote through the worker's link: {target.read_text()[:200]!r}"


def _changed_or_refused(sv, target: Path) -> bool:
    """The attack went through, or sockvisor said it refused to follow."""
    if target.read_text() != SECRET or stat.S_IMODE(target.stat().st_mode) != 0o600:
        return True
    return bool(sv.log_count(r"out\.log.*(symbolic link|not a regular file)"))


def _watcher(planter: Path, logdir: Path, target: Path, kind: str, lines: int,
             max_bytes: int, backups: int, world_readable_dir: Path) -> str:
    return f"""
        [watcher:web]
        cmd = {SYSTEM_PYTHON} {planter} {logdir} {target} {kind} {lines}
        uid = nobody
        working_dir = {world_readable_dir}
        stdout = file:{logdir}/out.log
        stdout_max_bytes = {max_bytes}
        stdout_backup_count = {backups}
        graceful_timeout = 1
    """


# world_readable_dir first: it is removed after sockvisor has stopped.
def test_rotation_never_truncates_or_appends_through_a_planted_symlink(
        world_readable_dir, layout, sockvisor):
    planter, logdir, target = layout
    sv = sockvisor(_watcher(planter, logdir, target, "symlink", 200, 2000, 0,
                            world_readable_dir))
    wait_for(lambda: list(logdir.glob("planted.*")), 10,
             message=lambda: f"the worker to plant its link\n{sv.describe()}")
    # 200 lines of ~55 bytes: several rotations at 2,000 bytes.
    wait_for(lambda: _changed_or_refused(sv, target), 15,
             message=lambda: f"a rotation after the swap\n{sv.describe()}")
    _unchanged(target)
    assert os.path.islink(logdir / "out.log"), "the worker's link is left where it was"
    assert sv.proc.poll() is None


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_operator_set_and_kill_never_reopen_through_a_planted_name(
        world_readable_dir, layout, sockvisor, kind):
    """A group operator's `set web stdout_max_bytes` then `signal web KILL`: the
    new worker's output must not land in the link's target, and opening a FIFO the
    worker planted must not freeze sockvisor."""
    planter, logdir, target = layout
    sv = sockvisor(_watcher(planter, logdir, target, kind, 0, 100_000, 3,
                            world_readable_dir))
    endpoint = f"ipc://{sv.directory}/ctl"
    [first] = wait_for(lambda: list(logdir.glob("planted.*")), 10,
                       message=lambda: f"the worker to plant its {kind}\n{sv.describe()}")
    with ControlClient(endpoint, timeout=10) as client:
        # Refused or not (the config check sees what is planted at the name), the
        # attacker goes on and has the worker restarted.
        reply = client.call("set", {"name": "web", "options": {"stdout_max_bytes": "1000"}})
        assert reply.get("status") in ("ok", "error"), reply
        pid = int(first.name.split(".")[1])
        reply = client.call("signal", {"name": "web", "signum": "KILL"})
        assert reply.get("status") == "ok", reply
    # The replacement writes 0 lines of its own but "before the swap": enough to
    # make sockvisor write (or, unfixed, to write through the link).
    wait_for(lambda: [p for p in logdir.glob("planted.*") if p != first], 10,
             message=lambda: f"a new worker after KILL of {pid}\n{sv.describe()}")
    if kind == "symlink":
        wait_for(lambda: _changed_or_refused(sv, target), 15,
                 message=lambda: f"the replacement's output handled\n{sv.describe()}")
        _unchanged(target)
    # Whatever was planted, sockvisor still answers at once.
    with ControlClient(endpoint, timeout=5) as client:
        assert client.call("status", {"name": "web"}).get("status") == "active"
    assert sv.proc.poll() is None


def test_start_refuses_a_planted_symlink(world_readable_dir, layout, tmp_path):
    """The worker of a previous run left a link: `check` and `start` refuse it
    (exit 2, naming the key) instead of appending to the target."""
    planter, logdir, target = layout
    os.symlink(target, logdir / "out.log")
    conf = tmp_path / "planted.ini"
    conf.write_text("[sockvisor]\nendpoint = ipc://" + str(tmp_path) + "/ctl\n"
                    + _watcher(planter, logdir, target, "symlink", 0, 0, 0,
                               world_readable_dir).replace("\n        ", "\n"))
    for command in ("check", "start"):
        result = run_cli(command, str(conf), timeout=20)
        assert result.returncode == 2, (command, result.returncode, result.stderr)
        assert "[watcher:web]" in result.stderr and "stdout" in result.stderr, result.stderr
        assert "symbolic link" in result.stderr, result.stderr
    _unchanged(target)


BLOCKER = r'''
"""Attacker worker: put a non-empty directory at every backup name, so no rotation
rename can succeed, then write LINES lines and wait."""
import os, signal, sys

logdir, backups, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for index in range(1, backups + 1):
    blocker = os.path.join(logdir, f"out.log.{index}")
    os.makedirs(os.path.join(blocker, "full"), exist_ok=True)
open(os.path.join(logdir, "blocked"), "w").close()
out = os.fdopen(1, "w", buffering=1)
for number in range(lines):
    out.write(f"line {number:06d} " + "y" * 40 + "\n")
out.flush()
while True:
    signal.pause()
'''


def test_a_blocked_rotation_keeps_the_size_bound(world_readable_dir, layout, sockvisor):
    """The worker makes every rotation rename fail (a directory at out.log.N): root's
    out.log must still stay under stdout_max_bytes (it is emptied through our fd
    instead), never grow without end in the worker's folder."""
    _planter, logdir, _target = layout
    blocker = world_readable_dir / "workers" / "blocker.py"
    blocker.write_text(BLOCKER.lstrip())
    blocker.chmod(0o644)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {SYSTEM_PYTHON} {blocker} {logdir} 2 400
        uid = nobody
        working_dir = {world_readable_dir}
        stdout = file:{logdir}/out.log
        stdout_max_bytes = 1000
        stdout_backup_count = 2
        graceful_timeout = 1
        """)
    wait_for(lambda: (logdir / "blocked").exists(), 10,
             message=lambda: f"the worker to block the backups\n{sv.describe()}")
    # 400 lines of ~52 bytes: about 20 rotations at 1,000 bytes, every one blocked.
    wait_for(lambda: sv.log_count(r"cannot rotate .*out\.log"), 15,
             message=lambda: f"a blocked rotation\n{sv.describe()}")
    wait_for(lambda: "line 000399" in (logdir / "out.log").read_text(), 15,
             message=lambda: f"the last line in out.log\n{sv.describe()}")
    assert (logdir / "out.log").stat().st_size <= 1000
    assert sv.log_count(r"cannot rotate .*out\.log") == 1, "one warning, rate-limited"
    assert sv.proc.poll() is None
