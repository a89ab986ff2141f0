"""Circus watcher and global options that real circus.ini files use (issue 11,
items 4, 10, 13): each one is used as Circus uses it, or refused with the
reason -- never parsed and dropped.

What a worker receives is checked end to end in
tests/integration/test_e2e_circus_options.py; here, the parsing: what the
WatcherConfig says the worker will get (argv, env), and the errors.
"""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from sockvisor.config import ConfigError, load, watcher_from_options, with_options
from sockvisor.config.options import _GLOBAL_CIRCUS, _SOCKET_CIRCUS, _WATCHER_CIRCUS, _Ignored

pytestmark = pytest.mark.timeout(20)

ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONPATH": "/from/env"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent(text).replace("{tmp}", str(tmp_path)))
    return path


def load_text(tmp_path: Path, text: str):
    return load(str(write(tmp_path, text)), environ=ENVIRON)


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def web(tmp_path: Path, body: str):
    return load_text(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\n"
                     + textwrap.dedent(body)).watchers["web"]


# --------------------------------------------------------------------------- singleton

def test_singleton_runs_one_worker(tmp_path):
    config = web(tmp_path, "singleton = true\n")
    assert config.singleton and config.numprocesses == 1


def test_singleton_with_numprocesses_1_or_0(tmp_path):
    assert web(tmp_path, "singleton = true\nnumprocesses = 1\n").numprocesses == 1
    assert web(tmp_path, "singleton = true\nnumprocesses = 0\n").numprocesses == 0


def test_singleton_refuses_more_workers_naming_both_keys(tmp_path):
    error = error_of(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\nsingleton = true\n"
                               "numprocesses = 3\n")
    assert error.section == "watcher:web" and error.key == "numprocesses"
    assert "singleton" in error.message and "numprocesses" in str(error)


def test_set_cannot_scale_a_singleton(tmp_path):
    config = web(tmp_path, "singleton = true\n")
    with pytest.raises(ConfigError, match="singleton") as info:
        with_options(config, {"numprocesses": "2"}, {}, environ=ENVIRON)
    assert info.value.key == "numprocesses"


# --------------------------------------------------------------------------- copy_path

def test_copy_path_gives_sockvisors_sys_path(tmp_path):
    config = web(tmp_path, "copy_env = true\ncopy_path = true\n")
    assert config.env["PYTHONPATH"] == os.pathsep.join(sys.path)


def test_copy_path_env_wins_as_in_circus(tmp_path):
    # Circus sets PYTHONPATH from sys.path, then applies the watcher's env on top.
    config = web(tmp_path, "copy_env = true\ncopy_path = true\n"
                           "[env:web]\nPYTHONPATH = /mine\n")
    assert config.env["PYTHONPATH"] == "/mine"


def test_copy_path_off_leaves_pythonpath_alone(tmp_path):
    assert "PYTHONPATH" not in web(tmp_path, "copy_path = false\n").env
    assert web(tmp_path, "copy_env = true\n").env["PYTHONPATH"] == "/from/env"


def test_copy_path_survives_set(tmp_path):
    config = web(tmp_path, "copy_env = true\ncopy_path = true\n")
    after = with_options(config, {"graceful_timeout": "3"}, {}, environ=ENVIRON)
    assert after.env["PYTHONPATH"] == os.pathsep.join(sys.path)


# --------------------------------------------------------------------------- virtualenv

def make_venv(root: Path, version: str = "%d.%d" % sys.version_info[:2]) -> Path:
    site = root / "lib" / f"python{version}" / "site-packages"
    site.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "src" / "pkg").mkdir(parents=True)
    (site / "pkg.pth").write_text(f"# a comment\nimport os\n{root}/src/pkg\n/does/not/exist\n")
    return site


def test_virtualenv_as_circus_loads_it(tmp_path):
    venv = tmp_path / "venv"
    site = make_venv(venv)
    config = web(tmp_path, f"copy_env = true\nvirtualenv = {venv}\n")
    # Circus: the .pth packages, then the existing PYTHONPATH, then site-packages;
    # a named directory that does not exist is kept (root does not probe for the
    # .pth's writer whether a path exists: see virtualenv.py).
    assert config.env["PYTHONPATH"].split(os.pathsep) == [
        f"{venv}/src/pkg", "/does/not/exist", "/from/env", str(site)]
    assert config.env["PATH"] == f"{venv}/bin:/usr/bin:/bin"


def test_virtualenv_py_ver(tmp_path):
    venv = tmp_path / "venv"
    site = make_venv(venv, "2.7")
    config = web(tmp_path, f"virtualenv = {venv}\nvirtualenv_py_ver = 2.7\n")
    assert config.env["PYTHONPATH"].split(os.pathsep)[-1] == str(site)


def test_virtualenv_that_does_not_exist(tmp_path):
    error = error_of(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\n"
                               f"virtualenv = {tmp_path}/nope\n")
    assert (error.section, error.key) == ("watcher:web", "virtualenv")
    assert "does not exist" in error.message and str(write(tmp_path, "")) == error.path


def test_virtualenv_without_site_packages(tmp_path):
    (tmp_path / "venv").mkdir()
    error = error_of(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\n"
                               f"virtualenv = {tmp_path}/venv\nvirtualenv_py_ver = 3.99\n")
    assert error.key == "virtualenv" and "python3.99/site-packages" in error.message


def test_virtualenv_pth_tells_nobody_what_exists_where_only_root_looks(tmp_path):
    """Root filtering the .pth's lines by existence would tell whoever writes them
    (through the worker's PYTHONPATH) whether a root-only path exists."""
    venv = tmp_path / "venv"
    site = make_venv(venv)
    (site / "probe.pth").write_text("/root/.bashrc\n/root/surely-not-there\n")
    paths = web(tmp_path, f"virtualenv = {venv}\n").env["PYTHONPATH"].split(os.pathsep)
    assert "/root/.bashrc" in paths and "/root/surely-not-there" in paths


def test_virtualenv_site_packages_through_a_symlink_is_refused(tmp_path):
    """site-packages replaced by a link to another folder: root would list that
    folder and read its .pth files into the worker's PYTHONPATH."""
    venv = tmp_path / "venv"
    site = make_venv(venv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.pth").write_text("/the/secret/line\n")
    for item in site.iterdir():
        item.unlink()
    site.rmdir()
    site.symlink_to(elsewhere)
    error = error_of(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\n"
                               f"virtualenv = {venv}\n")
    assert error.key == "virtualenv" and "symlink" in error.message, error.message


def test_virtualenv_pth_fifo_does_not_block(tmp_path):
    """A worker that can write its venv plants a FIFO as x.pth: root's load
    must not block on it."""
    site = make_venv(tmp_path / "venv")
    os.mkfifo(site / "evil.pth")
    config = web(tmp_path, f"virtualenv = {tmp_path}/venv\n")
    assert str(site) in config.env["PYTHONPATH"]


# --------------------------------------------------------------------------- shell

def test_shell_runs_cmd_and_args_as_circus_builds_them(tmp_path):
    config = web(tmp_path, "shell = true\nargs = --name 'a b' $(circus.wid)\n")
    assert config.cmd == "/bin/sleep"
    words = ["/bin/sleep", "1", "--name", "a b", "$(circus.wid)"]
    assert config.argv() == ["/bin/sh", "-c", " ".join(shlex.quote(w) for w in words)]


def test_shell_args_follow_the_command(tmp_path):
    config = web(tmp_path, "shell = true\nshell_args = x 'y z'\n")
    assert config.argv() == ["/bin/sh", "-c", "/bin/sleep 1", "x", "y z"]


def test_shell_args_without_shell_warns(tmp_path):
    config = load_text(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\nshell_args = -x\n")
    assert config.watchers["web"].argv() == ["/bin/sleep", "1"]
    assert any("shell_args" in w and "shell" in w for w in config.warnings)


def test_shell_survives_set(tmp_path):
    config = web(tmp_path, "shell = true\n")
    after = with_options(config, {"graceful_timeout": "3"}, {}, environ=ENVIRON)
    assert after.argv() == ["/bin/sh", "-c", "/bin/sleep 1"]


# --------------------------------------------------------------------------- priority

def test_priority_is_kept(tmp_path):
    assert web(tmp_path, "priority = 7\n").priority == 7
    assert web(tmp_path, "").priority == 0


# --------------------------------------------------------------------------- globals

def test_pidfile_in_a_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    error = error_of(tmp_path, f"[circus]\npidfile = {shared}/circus.pid\n"
                               "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert (error.section, error.key) == ("circus", "pidfile")
    assert "writable by everyone" in error.message


def test_pidfile_and_logoutput_are_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    config = load_text(tmp_path, f"[circus]\npidfile = {run}/circus.pid\n"
                                 f"logoutput = {run}/circus.log\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.pidfile == f"{run}/circus.pid"
    assert config.globals.logoutput == f"{run}/circus.log"


def test_logoutput_dash_is_stdout(tmp_path):
    config = load_text(tmp_path, "[circus]\nlogoutput = -\n[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.logoutput == "-"


def test_logoutput_in_a_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    error = error_of(tmp_path, f"[circus]\nlogoutput = {shared}/circus.log\n"
                               "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert (error.section, error.key) == ("circus", "logoutput")


def test_logoutput_syslog_is_refused_with_the_reason(tmp_path):
    error = error_of(tmp_path, "[circus]\nlogoutput = syslog:///dev/log?local0\n"
                               "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert error.key == "logoutput" and "syslog" in error.message


IS_ROOT = os.geteuid() == 0
NOBODY = 65534
LOGGING_INI = """\
[loggers]
keys = root
[handlers]
keys = file
[formatters]
keys = plain
[logger_root]
level = INFO
handlers = file
[handler_file]
class = StreamHandler
args = (sys.stderr,)
formatter = plain
[formatter_plain]
format = %(levelname)s %(message)s
"""


def logging_file(folder: Path, name: str = "logging.ini", text: str = LOGGING_INI) -> Path:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    path = folder / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def loggerconfig_error(tmp_path: Path, value: str) -> ConfigError:
    error = error_of(tmp_path, f"[circus]\nloggerconfig = {value}\n"
                               "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert (error.section, error.key) == ("circus", "loggerconfig"), error
    return error


def test_loggerconfig_default_means_sockvisor_s_own_log_set_up(tmp_path):
    config = load_text(tmp_path, "[circus]\nloggerconfig = default\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.loggerconfig is None


@pytest.mark.parametrize("name", ["logging.ini", "logging.json", "logging.yaml",
                                  "logging.YML"])
def test_loggerconfig_file_is_read_once_at_load(tmp_path, name):
    """The text is kept in the config (what start, and an upgrade, apply): the
    file is not read again by path after the checks."""
    text = {"ini": LOGGING_INI, "json": '{"version": 1}',
            "yaml": "version: 1\n", "yml": "version: 1\n"}[name.rpartition(".")[2].lower()]
    path = logging_file(tmp_path / "etc", name, text)
    config = load_text(tmp_path, f"[circus]\nloggerconfig = {path}\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.loggerconfig.path == str(path)
    assert config.globals.loggerconfig.text == text


def test_loggerconfig_relative_path_is_from_the_working_directory_as_circus(
        tmp_path, monkeypatch):
    """Circus: os.path.abspath(loggerconfig), i.e. from circusd's working
    directory; said in a warning (under systemd that is /)."""
    path = logging_file(tmp_path / "run" / "etc")
    monkeypatch.chdir(tmp_path / "run")
    config = load_text(tmp_path, "[circus]\nloggerconfig = etc/logging.ini\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.loggerconfig.path == str(path)
    assert any("loggerconfig" in w and str(path) in w for w in config.warnings), \
        config.warnings


@pytest.mark.skipif(not IS_ROOT, reason="gives files to nobody")
@pytest.mark.parametrize("who", ["folder", "file", "file-mode", "parent-folder"])
def test_loggerconfig_another_user_can_write_is_refused(tmp_path, who):
    """The attack: fileConfig evaluates `args` and dictConfig calls any class it
    names, inside sockvisor (root).  Whoever can write the file or a folder on
    its way decides what root runs."""
    path = logging_file(tmp_path / "etc" / "circus")
    if who == "folder":
        os.chown(path.parent, NOBODY, NOBODY)
    elif who == "parent-folder":
        os.chown(path.parent.parent, NOBODY, NOBODY)
    elif who == "file":
        os.chown(path, NOBODY, NOBODY)
    else:
        path.chmod(0o666)
    error = loggerconfig_error(tmp_path, str(path))
    assert "root" in error.message, error
    assert "nobody" in error.message or "everyone" in error.message, error


@pytest.mark.skipif(not IS_ROOT, reason="gives files to nobody")
def test_loggerconfig_symlink_in_a_folder_another_user_owns_is_refused(tmp_path):
    """The name a user controls is swapped for a link to a root-owned file: the
    link is not followed (its target would be fine, the choice is not)."""
    real = logging_file(tmp_path / "etc")
    evil = tmp_path / "home"
    evil.mkdir(mode=0o755)
    (evil / "logging.ini").symlink_to(real)
    os.chown(evil, NOBODY, NOBODY)
    os.lchown(evil / "logging.ini", NOBODY, NOBODY)
    error = loggerconfig_error(tmp_path, str(evil / "logging.ini"))
    assert "nobody" in error.message, error


@pytest.mark.skipif(not IS_ROOT, reason="gives files to nobody")
def test_loggerconfig_linked_from_root_s_folder_into_a_user_s_is_refused(tmp_path):
    """A link root made is followed, to a target checked the same way."""
    evil = tmp_path / "home"
    target = logging_file(evil)
    os.chown(evil, NOBODY, NOBODY)
    (tmp_path / "etc").mkdir(mode=0o755)
    (tmp_path / "etc" / "logging.ini").symlink_to(target)
    error = loggerconfig_error(tmp_path, str(tmp_path / "etc" / "logging.ini"))
    assert "nobody" in error.message, error


def test_loggerconfig_checked_at_load(tmp_path):
    """What can be known without running anything from the file: it exists, it
    is one of Circus's formats, it is not huge, it parses."""
    etc = tmp_path / "etc"
    assert "does not exist" in loggerconfig_error(tmp_path, f"{etc}/missing.ini").message
    other = logging_file(etc, "logging.conf")
    assert ".ini" in loggerconfig_error(tmp_path, str(other)).message
    huge = logging_file(etc, "huge.json", '{"version": 1, "x": "' + "x" * 2_000_000 + '"}')
    assert "too large" in loggerconfig_error(tmp_path, str(huge)).message
    broken = logging_file(etc, "broken.json", '{"version": 1,')
    assert "JSON" in loggerconfig_error(tmp_path, str(broken)).message
    not_a_dict = logging_file(etc, "list.yaml", "- version\n")
    assert "mapping" in loggerconfig_error(tmp_path, str(not_a_dict)).message
    no_loggers = logging_file(etc, "empty.ini", "[formatters]\nkeys = x\n")
    assert "loggers" in loggerconfig_error(tmp_path, str(no_loggers)).message


def test_loggerconfig_makes_loglevel_and_logoutput_ignored_with_a_warning(tmp_path):
    """As in Circus (util.configure_logger): the file decides where the log goes
    and at which level; the keys that would say otherwise are warned about."""
    path = logging_file(tmp_path / "etc")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    config = load_text(tmp_path, f"[circus]\nloggerconfig = {path}\nloglevel = debug\n"
                                 f"logoutput = {logs}/circusd.log\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert config.globals.logoutput is None
    warned = [w for w in config.warnings if "loggerconfig" in w]
    assert any("logoutput" in w for w in warned) and any("loglevel" in w for w in warned), \
        config.warnings


# --------------------------------------------------------------------------- sockets

def test_socket_umask_gives_the_file_mode(tmp_path):
    config = load_text(tmp_path, f"[socket:web]\npath = {tmp_path}/web.sock\numask = 007\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\nsockets = web\n")
    assert config.sockets["web"].mode == 0o770


def test_socket_umask_and_mode_together_are_refused(tmp_path):
    error = error_of(tmp_path, f"[socket:web]\npath = {tmp_path}/web.sock\numask = 007\n"
                               "mode = 600\n[watcher:web]\ncmd = /bin/sleep 1\n")
    assert (error.section, error.key) == ("socket:web", "umask")


def test_socket_umask_on_a_tcp_socket_is_refused(tmp_path):
    error = error_of(tmp_path, "[socket:web]\nport = 0\numask = 007\n"
                               "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert error.key == "umask"


def test_socket_replace_warns_what_sockvisor_does(tmp_path):
    config = load_text(tmp_path, f"[socket:web]\npath = {tmp_path}/web.sock\nreplace = true\n"
                                 "[watcher:web]\ncmd = /bin/sleep 1\n")
    assert any("replace" in w and "stale" in w for w in config.warnings), config.warnings


# --------------------------------------------------------------------------- no silent drops

IGNORED = ([("circus", key) for key, entry in _GLOBAL_CIRCUS.items()
            if isinstance(entry, _Ignored)]
           + [("socket:web", key) for key, entry in _SOCKET_CIRCUS.items()
              if isinstance(entry, _Ignored)]
           + [("watcher:web", key) for key, entry in _WATCHER_CIRCUS.items()
              if isinstance(entry, _Ignored)])


@pytest.mark.parametrize("section, key", IGNORED)
def test_every_ignored_circus_key_warns_or_is_declared_meaningless(tmp_path, section, key):
    sections = {"circus": "", "socket:web": f"path = {tmp_path}/web.sock\n",
                "watcher:web": "cmd = /bin/sleep 1\n"}
    sections[section] += f"{key} = 1\n"
    config = load_text(tmp_path, "".join(f"[{name}]\n{body}" for name, body in sections.items()))
    table = {"circus": _GLOBAL_CIRCUS, "socket:web": _SOCKET_CIRCUS,
             "watcher:web": _WATCHER_CIRCUS}[section]
    warned = [w for w in config.warnings if f"[{section}] {key}:" in w]
    if table[key].meaningless:
        assert not warned
    else:
        assert len(warned) == 1 and table[key].reason in warned[0]


def test_a_typo_circus_would_ignore_is_an_error(tmp_path):
    error = error_of(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\nworkding_dir = /tmp\n")
    assert error.key == "workding_dir" and "did you mean 'working_dir'" in error.message


def test_control_channel_add_takes_the_circus_options(tmp_path):
    config = watcher_from_options("<test>", "one", {
        "cmd": "/bin/sleep 1", "singleton": True, "priority": 3, "shell": True}, {},
        environ=ENVIRON)
    assert config.singleton and config.priority == 3 and config.argv()[0] == "/bin/sh"


# Each [socket:NAME] key, given a value other than its default, changes the socket
# sockvisor binds (or is refused): none is parsed and dropped.
SOCKET_VALUES = {"host": "127.0.0.2", "port": "8081", "family": "AF_INET", "backlog": "7",
                 "mode": "600", "owner": "nobody", "group": "nogroup", "blocking": "false",
                 "reuseport": "true", "type": "SOCK_STREAM", "umask": "077", "path": None}


def test_every_socket_option_is_in_this_test():
    from sockvisor.config.options import _SOCKET_OPTIONS
    assert set(_SOCKET_OPTIONS) == set(SOCKET_VALUES)


@pytest.mark.skipif(os.geteuid() != 0, reason="owner/group need root")
@pytest.mark.parametrize("key", sorted(k for k, v in SOCKET_VALUES.items() if v))
def test_no_socket_option_is_dropped(tmp_path, key):
    unix = key in ("mode", "owner", "group", "umask")
    head = f"path = {tmp_path}/s.sock\n" if unix else "host = 127.0.0.1\nport = 8080\n"
    base = load_text(tmp_path, f"[socket:s]\n{head}[watcher:w]\ncmd = /bin/sleep 1\n")
    if key in ("family", "type"):   # the default spelled out: accepted, same socket
        given = load_text(tmp_path, f"[socket:s]\n{head}{key} = {SOCKET_VALUES[key]}\n"
                                    "[watcher:w]\ncmd = /bin/sleep 1\n")
        assert given.sockets == base.sockets
        return
    head = head.replace(f"{key} = ", f"old_{key} = ") if key in ("host", "port") else head
    head = "\n".join(line for line in head.splitlines() if not line.startswith("old_"))
    given = load_text(tmp_path, f"[socket:s]\n{head}\n{key} = {SOCKET_VALUES[key]}\n"
                                "[watcher:w]\ncmd = /bin/sleep 1\n")
    assert given.sockets["s"] != base.sockets["s"], key


@pytest.mark.skipif(not IS_ROOT, reason="gives a folder to nobody")
@pytest.mark.parametrize("handler", [
    "class = FileHandler\nargs = ('{log}', 'a')",
    "class = logging.handlers.RotatingFileHandler\nargs = ('{log}', 'a', 1000, 3)",
    "class = handlers.WatchedFileHandler\nargs = ()\nkwargs = {{'filename': '{log}'}}",
])
def test_loggerconfig_handler_files_follow_logoutput_s_rule(tmp_path, handler):
    """A file a handler writes is opened by root, by name: in a folder another
    user can write, that user could point the name at /etc/shadow (DESIGN §5).
    Refused there, as logoutput is; accepted in a folder only root can write."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    ours.chmod(0o755)
    for folder, accepted in ((ours, True), (theirs, False)):
        text = LOGGING_INI.replace("class = StreamHandler\nargs = (sys.stderr,)",
                                   handler.format(log=folder / "sv.log"))
        path = logging_file(tmp_path / "etc", text=text)
        if accepted:
            load_text(tmp_path, f"[circus]\nloggerconfig = {path}\n"
                                "[watcher:web]\ncmd = /bin/sleep 1\n")
        else:
            error = loggerconfig_error(tmp_path, str(path))
            assert f"handler file: {folder}/sv.log" in error.message, error


def test_loggerconfig_file_handler_names_its_file_literally(tmp_path):
    text = LOGGING_INI.replace("class = StreamHandler\nargs = (sys.stderr,)",
                               "class = FileHandler\nargs = (os.environ['LOG'], 'a')")
    error = loggerconfig_error(tmp_path, str(logging_file(tmp_path / "etc", text=text)))
    assert "args are not written out" in error.message
    data = ('{"version": 1, "handlers": {"f": {"class": "logging.FileHandler", '
            '"filename": 7}}, "root": {"handlers": ["f"]}}')
    error = loggerconfig_error(tmp_path, str(logging_file(tmp_path / "etc", "l.json", data)))
    assert "filename must be text" in error.message
