"""End to end: `sockvisor check` and `start` catch the /root trap (issue 10, section 1).

The README's `uid = nobody` variant with a virtualenv under /root (mode 0700)
passed every check and then every worker died importing its module.  Now a
child that drops privileges as a worker does asks, as that user, whether it can
enter `working_dir`, execute `cmd`, and import the module named with `-m`; a
failure names the watcher, the user and the path, `check` and `start` exit 2,
and `start` binds nothing.  `reloadconfig` asks the same before changing anything.

Root only (a real `nobody`); the interpreter is Debian's /usr/bin/python3 and the
files live in a world-readable directory outside pytest's tree, except what
each test closes on purpose (a 0700 directory, like /root).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import http_worker
from conftest import free_port, port_is_free, run_cli
from control_helpers import ctl

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (uid = nobody)"),
    pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK),
                       reason="needs Debian's /usr/bin/python3"),
    pytest.mark.timeout(60),
]

# The application the workers import (`-m app` ...) is the tests' HTTP worker,
# installed under the module's name.


def config(directory: Path, port: int, cmd: str, extra: str = "") -> Path:
    path = directory / "sv.ini"
    path.write_text(textwrap.dedent(f"""\
        [sockvisor]
        endpoint = ipc://{directory}/ctl

        [socket:web]
        host = 127.0.0.1
        port = {port}

        [watcher:web]
        cmd = {cmd}
        sockets = web
        uid = nobody
        """) + textwrap.dedent(extra))
    return path


def assert_refused(path: Path, port: int, *says: str) -> None:
    for command in ("check", "start"):
        result = run_cli(command, str(path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        for fragment in ("[watcher:web]", "nobody", *says):
            assert fragment in result.stderr, (fragment, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
    assert port_is_free(port)


def test_a_virtualenv_under_a_closed_directory(world_readable_dir):
    closed = world_readable_dir / "root-like"
    closed.mkdir()
    venv = closed / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=30)
    http_worker.install(world_readable_dir, "app.py")
    closed.chmod(0o700)
    port = free_port()
    path = config(world_readable_dir, port, f"{venv}/bin/python -m app",
                  f"working_dir = {world_readable_dir}\n")
    # Root can run it; nobody cannot even reach the interpreter.
    assert_refused(path, port, f"{venv}/bin/python", f"may not enter {closed}", "0700")


def test_a_module_only_root_can_import(world_readable_dir):
    """The interpreter is fine and the program passes every mode-bit check: only
    importing the module as nobody shows that the worker would die at once."""
    closed = world_readable_dir / "site"
    closed.mkdir(mode=0o700)
    http_worker.install(closed, "myapp.py")
    closed.chmod(0o700)
    port = free_port()
    path = config(world_readable_dir, port, "/usr/bin/python3 -m myapp",
                  f"working_dir = {world_readable_dir}\nenv = PYTHONPATH={closed}\n")
    assert_refused(path, port, "/usr/bin/python3 -m myapp", "'myapp'")

    # Readable by nobody: the same config passes.
    closed.chmod(0o755)
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr


def test_a_working_dir_nobody_may_not_enter(world_readable_dir):
    closed = world_readable_dir / "home"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    port = free_port()
    path = config(world_readable_dir, port, "/usr/bin/python3 -c pass",
                  f"working_dir = {closed}\n")
    assert_refused(path, port, "working_dir", f"may not enter {closed}")


def test_reloadconfig_to_a_release_nobody_cannot_import_changes_nothing(
        sockvisor, world_readable_dir):
    http_worker.install(world_readable_dir, "app.py")
    closed = world_readable_dir / "site"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    http_worker.install(closed, "app2.py")
    body = f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = /usr/bin/python3 -m app
        working_dir = {world_readable_dir}
        sockets = web
        uid = nobody
        """
    sv = sockvisor(body)
    before = set(sv.worker_pids())
    assert before
    sv.conf.write_text(sv.conf.read_text().replace(
        "-m app", f"-m app2\nenv = PYTHONPATH={closed}"))
    result = ctl(sv, "reloadconfig")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "nobody" in result.stderr and "'app2'" in result.stderr, result.stderr
    assert set(sv.worker_pids()) == before
    assert "-m app2" not in " ".join(
        open(f"/proc/{pid}/cmdline").read().replace("\0", " ") for pid in before)


def test_a_hook_program_in_a_closed_directory(world_readable_dir):
    """A hook runs as the worker (issue 11 item 12): its program is checked as
    cmd is, as that user, and a failure names the hook's key."""
    closed = world_readable_dir / "root-like"
    closed.mkdir()
    hook = closed / "check-redis"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    closed.chmod(0o700)
    port = free_port()
    path = config(world_readable_dir, port, "/usr/bin/python3 -c pass",
                  f"working_dir = {world_readable_dir}\n"
                  f"hooks.before_spawn = {hook} --quick\n")
    assert_refused(path, port, "hooks.before_spawn", str(hook), f"may not enter {closed}")
