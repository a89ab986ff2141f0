"""sockvisor/pidfile.py: Circus's `pidfile`, written by root where nobody else
can choose the file (DESIGN §5)."""

from __future__ import annotations

import os
import pwd
import textwrap

import pytest

from sockvisor.config import ConfigError, load
from sockvisor.pidfile import PidFile

pytestmark = pytest.mark.timeout(20)


def test_written_whole_and_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    pidfile = PidFile(str(run / "app.pid"))
    pidfile.write(4242)
    assert (run / "app.pid").read_text() == "4242\n"
    assert sorted(p.name for p in run.iterdir()) == ["app.pid"]
    pidfile.remove()
    assert not (run / "app.pid").exists()


def test_replaces_a_stale_pidfile_atomically(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / "app.pid").write_text("1\n")
    before = (run / "app.pid").stat().st_ino
    PidFile(str(run / "app.pid")).write(7)
    assert (run / "app.pid").read_text() == "7\n"
    assert (run / "app.pid").stat().st_ino != before   # renamed over, not rewritten


def test_remove_leaves_a_file_that_is_not_ours(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    pidfile = PidFile(str(run / "app.pid"))
    pidfile.write(7)
    (run / "app.pid").unlink()
    (run / "app.pid").write_text("another instance\n")
    pidfile.remove()
    assert (run / "app.pid").read_text() == "another instance\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder away")
def test_a_folder_the_worker_user_owns_is_refused(tmp_path):
    """Even the watchers' own user may not choose where root writes its pidfile."""
    nobody = pwd.getpwnam("nobody")
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chown(run, nobody.pw_uid, nobody.pw_gid)
    path = tmp_path / "c.ini"
    path.write_text(textwrap.dedent(f"""
        [circus]
        pidfile = {run}/circus.pid
        [watcher:web]
        cmd = /bin/sleep 1
        uid = nobody
    """))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert (info.value.section, info.value.key) == ("circus", "pidfile")
    assert "owned by nobody" in info.value.message
    with pytest.raises(OSError):
        PidFile(f"{run}/circus.pid").write(1)


def test_a_symlink_at_the_name_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / "circus.pid").symlink_to("/etc/passwd")
    path = tmp_path / "c.ini"
    path.write_text(f"[circus]\npidfile = {run}/circus.pid\n[watcher:web]\ncmd = /bin/sleep 1\n")
    with pytest.raises(ConfigError, match="symbolic link"):
        load(str(path))
