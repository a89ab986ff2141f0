"""Log paths root would write to are checked when the config is read: a folder
given as the file, a name that is a link, FIFO or folder, and log folders other
users could write (see sockvisor/logdir.py for the rule and why /tmp is refused).
`check` and `start` fail with exit 2 naming file, section and key, before any
socket is bound."""

from __future__ import annotations

import os
import pwd

import pytest

from conftest import free_port, run_cli
from sockvisor import config as config_module
from sockvisor.config import ConfigError

IS_ROOT = os.geteuid() == 0


def _load_error(tmp_path, stdout: str, extra: str = "") -> ConfigError:
    conf = tmp_path / "sockvisor.ini"
    conf.write_text(f"[watcher:web]\ncmd = sleep 1\nstdout = {stdout}\n{extra}")
    with pytest.raises(ConfigError) as caught:
        config_module.load(conf)
    error = caught.value
    assert (error.path, error.section, error.key) == (str(conf), "watcher:web", "stdout")
    return error


def test_a_folder_as_the_log_file(tmp_path):
    assert "/tmp is a directory" in str(_load_error(tmp_path, "file:/tmp"))
    (tmp_path / "logs").mkdir()
    assert "is a directory" in str(_load_error(tmp_path, f"file:{tmp_path}/logs"))


def test_check_and_start_refuse_a_folder_before_binding(tmp_path):
    conf = tmp_path / "folder.ini"
    conf.write_text(f"[sockvisor]\nendpoint = ipc://{tmp_path}/ctl\n\n"
                    f"[socket:web]\nhost = 127.0.0.1\nport = {free_port()}\n\n"
                    "[watcher:web]\ncmd = sleep 100\nsockets = web\nstdout = file:/tmp\n")
    for command in ("check", "start"):
        result = run_cli(command, str(conf), timeout=20)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{conf}: [watcher:web]: stdout: /tmp is a directory" in result.stderr, \
            result.stderr
        assert "listening on" not in result.stderr


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_name_root_must_not_write_through(tmp_path, kind):
    name = tmp_path / "out.log"
    if kind == "symlink":
        os.symlink(tmp_path / "elsewhere", name)
        says = "is a symbolic link"
    else:
        os.mkfifo(name)
        says = "is not a regular file"
    assert says in str(_load_error(tmp_path, f"file:{name}"))


def test_a_hard_link_to_another_file(tmp_path):
    (tmp_path / "precious").write_text("x")
    os.link(tmp_path / "precious", tmp_path / "out.log")
    assert "hard links" in str(_load_error(tmp_path, f"file:{tmp_path}/out.log"))


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_log_folder_others_may_write(tmp_path, mode):
    folder = tmp_path / "logs"
    folder.mkdir()
    folder.chmod(mode)
    if mode == 0o775:
        # Group-writable for a group that is neither root's nor the worker's.
        os.chown(folder, -1, _foreign_gid())
    error = str(_load_error(tmp_path, f"file:{folder}/out.log"))
    assert f"log directory {folder}" in error and f"mode {mode:04o}" in error, error


@pytest.mark.skipif(not IS_ROOT, reason="needs root: chowns the folder")
def test_a_log_folder_of_another_user(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    # Worker as root (no uid): nobody's folder could redirect root's writes.
    error = str(_load_error(tmp_path, f"file:{folder}/out.log"))
    assert "owner nobody" in error and "mode 0755" in error, error
    # The same folder is fine for a worker that runs as nobody: it is its own.
    conf = tmp_path / "ok.ini"
    conf.write_text(f"[watcher:web]\ncmd = sleep 1\nuid = nobody\n"
                    f"stdout = file:{folder}/out.log\n")
    assert config_module.load(conf).watchers["web"].stdout.path == f"{folder}/out.log"


@pytest.mark.skipif(not IS_ROOT, reason="needs root: chowns the folder")
def test_a_link_inside_the_workers_folder_is_not_followed(tmp_path):
    """The worker may own a folder on the way: a link it made there is refused,
    while links only root could make (/var/run -> /run) are followed."""
    nobody = pwd.getpwnam("nobody")
    top = tmp_path / "top"
    top.mkdir(mode=0o755)
    os.chown(top, nobody.pw_uid, nobody.pw_gid)
    os.symlink("/etc", top / "sub")
    conf = tmp_path / "link.ini"
    conf.write_text(f"[watcher:web]\ncmd = sleep 1\nuid = nobody\n"
                    f"stdout = file:{top}/sub/out.log\n")
    with pytest.raises(ConfigError, match="is a symbolic link in"):
        config_module.load(conf)


def _foreign_gid() -> int:
    for gid in range(1, 65534):
        if gid != os.getegid():
            try:
                import grp
                grp.getgrgid(gid)
                return gid
            except KeyError:
                continue
    pytest.skip("no foreign group")
