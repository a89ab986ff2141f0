"""Unit tests for `sockvisor.config.load`: what a config file may say, and how it fails.

Every bad config must fail with a `ConfigError` whose text names the file, the
`[section]` and (where one applies) the key, and says what is wrong, so an
operator can fix the file without reading the source.  Good configs are checked
for the values the rest of sockvisor relies on: socket families and addresses,
the watcher's argv, environment, socket list and policies.

Pure logic: configs are written to `tmp_path`, the environment is passed with
`environ=` (os.environ is never touched), and nothing is bound or spawned.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from sockvisor import config as config_module
from sockvisor.config import (
    Config,
    ConfigError,
    OutputKind,
    ReadyKind,
    UNLIMITED_RESTARTS,
    expand_worker_args,
    load,
    with_options,
)

pytestmark = pytest.mark.timeout(10)

IS_ROOT = os.geteuid() == 0
ENVIRON = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/tester",
           "LANG": "C.UTF-8", "SECRET": "from-sockvisor"}


# --------------------------------------------------------------------------- helpers

def write(tmp_path: Path, text: str, name: str = "sockvisor.ini") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("{tmp}", str(tmp_path)), encoding="utf-8")
    return path


def load_ok(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load(str(write(tmp_path, text)), environ=ENVIRON if environ is None else environ)


def load_error(tmp_path: Path, text: str, *, section: str | None, key: str | None,
               says: tuple[str, ...] | str, environ: dict[str, str] | None = None
               ) -> ConfigError:
    """Load `text`, expect a ConfigError located at `section`/`key` that says `says`."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON if environ is None else environ)
    assert_located(info.value, path, section, key, says)
    return info.value


def assert_located(error: ConfigError, path: Path | str, section: str | None,
                   key: str | None, says: tuple[str, ...] | str) -> None:
    text = str(error)
    assert str(path) in text, text
    assert error.section == section, text
    assert error.key == key, text
    if section is not None:
        assert f"[{section}]" in text, text
    if key is not None:
        assert key in text.split(f"[{section}]", 1)[-1], text
    for fragment in (says,) if isinstance(says, str) else says:
        assert fragment in text, f"{fragment!r} not in {text!r}"


#: For tests about other sections: a config needs a watcher (test_config_checks.py).
A_WATCHER = "\n[watcher:any]\ncmd = sleep 1\nautostart = false\n"

WEB_SOCKET = """
[socket:web]
host = 127.0.0.1
port = 0
"""


def watcher(body: str, *, head: str = WEB_SOCKET, name: str = "web") -> str:
    """A config with `head` (by default one socket) and one watcher with `body`."""
    return (textwrap.dedent(head) + f"\n[watcher:{name}]\n"
            + textwrap.dedent(body).strip("\n") + "\n")


# --------------------------------------------------------------------------- the file itself

def test_missing_file(tmp_path):
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    assert_located(info.value, path, None, None, "no such file")


def test_path_object_is_accepted(tmp_path):
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load(path, environ=ENVIRON)  # type: ignore[arg-type]
    assert_located(info.value, path, None, None, "no such file")
    good = write(tmp_path, watcher("cmd = sleep 1"))
    assert load(good, environ=ENVIRON).path == str(good)  # type: ignore[arg-type]


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path), environ=ENVIRON)
    assert_located(info.value, tmp_path, None, None, "is a directory")


def test_unreadable_file(tmp_path, world_readable_dir):
    """A mode-000 file.  Root reads it anyway, so as root the loader runs in a
    child that has become nobody (the file in a directory nobody may enter)."""
    directory = world_readable_dir if IS_ROOT else tmp_path
    path = write(directory, watcher("cmd = sleep 1"))
    path.chmod(0)
    try:
        message = load_error_as_nobody(path) if IS_ROOT else load_error_message(path)
    finally:
        path.chmod(0o600)
    assert message.startswith(f"{path}: "), message
    assert "permission denied" in message.lower(), message


def load_error_message(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    return str(info.value)


def load_error_as_nobody(path: Path) -> str:
    """load(path) in a forked child running as nobody; its ConfigError's text."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never back into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                load(str(path), environ=ENVIRON)
                text = "loaded without an error"
            except ConfigError as exc:
                text = str(exc)
            os.write(write_end, text.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        text = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[watcher:web]\ncmd = caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    assert_located(info.value, path, None, None, "not UTF-8")


def test_key_before_any_section(tmp_path):
    load_error(tmp_path, "cmd = sleep 1\n[watcher:web]\ncmd = sleep 1\n",
               section=None, key=None, says=("line 1", "before any [section]"))


def test_unparsable_line(tmp_path):
    load_error(tmp_path, "[watcher:web]\ncmd = sleep 1\nthis line has no delimiter\n",
               section=None, key=None, says="cannot parse line(s) 3")


# An empty file is an error ("nothing to run"): see test_config_checks.py.


# --------------------------------------------------------------------------- sections

def test_unknown_section_suggests_watcher(tmp_path):
    load_error(tmp_path, "[watchr:web]\ncmd = sleep 1\n", section="watchr:web", key=None,
               says=("unknown section", "did you mean 'watcher'"))


def test_unknown_plain_section_suggests_sockvisor(tmp_path):
    load_error(tmp_path, "[sockvisr]\nloglevel = info\n", section="sockvisr", key=None,
               says=("unknown section", "did you mean 'sockvisor'"))


def test_duplicate_section(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1") + "\n[watcher:web]\ncmd = sleep 2\n",
               section="watcher:web", key=None, says="section defined twice")


def test_duplicate_key(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nnumprocesses = 1\nnumprocesses = 2"),
               section="watcher:web", key="numprocesses", says="key defined twice")


def test_duplicate_watcher_name_by_spelling(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[watcher: web]\ncmd = sleep 2\n"
    load_error(tmp_path, text, section="watcher: web", key=None,
               says=("duplicate watcher name 'web'", "[watcher:web]"))


def test_duplicate_socket_name_by_spelling(tmp_path):
    text = WEB_SOCKET + "\n[socket:  web ]\nhost = 127.0.0.1\nport = 0\n"
    load_error(tmp_path, text, section="socket:  web ", key=None,
               says="duplicate socket name 'web'")


def test_duplicate_setting_through_alias(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nuid = root\nuser = root"),
               section="watcher:web", key="user", says="same setting as 'uid'")


def test_sockvisor_and_circus_sections_both_present(tmp_path):
    text = "[sockvisor]\nloglevel = info\n[circus]\ncheck_delay = 5\n"
    load_error(tmp_path, text, section="circus", key=None,
               says=("[sockvisor] and [circus]", "use one"))


def test_env_section_without_watcher(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[env:wbe]\nA = 1\n"
    load_error(tmp_path, text, section="env:wbe", key=None, says="no [watcher:wbe]")


def test_env_section_for_several_watchers_with_an_unknown_one(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[env:web, wbe]\nA = 1\n"
    load_error(tmp_path, text, section="env:web, wbe", key=None, says="no [watcher:wbe]")


@pytest.mark.parametrize("names, says", [
    ("web,,worker", "separated by commas"),
    ("web,", "separated by commas"),
    ("web, my worker", "names may use letters"),
    ("web, web", "named twice"),
])
def test_bad_env_section_name_lists(tmp_path, names, says):
    text = watcher("cmd = sleep 1") + f"\n[env:{names}]\nA = 1\n"
    load_error(tmp_path, text, section=f"env:{names}", key=None, says=says)


def test_bad_section_name(tmp_path):
    load_error(tmp_path, "[watcher:my web]\ncmd = sleep 1\n", section="watcher:my web",
               key=None, says="names may use letters")


def test_third_party_circus_plugin_is_refused_with_what_to_do(tmp_path):
    # Circus's bundled plugins are built in (test_config_circus_plugins.py).
    text = watcher("cmd = sleep 1") + "\n[plugin:mine]\nuse = mypkg.plugins.Mine\n"
    load_error(tmp_path, text, section="plugin:mine", key="use",
               says=("third-party", "the package that provides mypkg.plugins",
                     "install it for"))


# --------------------------------------------------------------------------- keys and types

def test_unknown_key_suggests_the_right_one(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nnumprocess = 2"), section="watcher:web",
               key="numprocess", says=("unknown key", "did you mean 'numprocesses'"))


def test_unknown_socket_key(tmp_path):
    load_error(tmp_path, "[socket:web]\nhost = 127.0.0.1\nprot = 80\n",
               section="socket:web", key="prot", says=("unknown key", "did you mean 'port'"))


def test_unknown_global_key(tmp_path):
    load_error(tmp_path, "[sockvisor]\nlog_level = debug\n", section="sockvisor",
               key="log_level", says=("unknown key", "did you mean 'loglevel'"))


UNIX_SOCKET = """
[socket:web]
path = {tmp}/web.sock
"""


@pytest.mark.parametrize("section, key, value, says", [
    ("watcher:web", "respawn", "maybe", "expected true or false, got 'maybe'"),
    ("watcher:web", "autostart", "2", "expected true or false"),
    ("watcher:web", "numprocesses", "two", "expected a whole number, got 'two'"),
    ("watcher:web", "numprocesses", "1.5", "expected a whole number"),
    ("watcher:web", "numprocesses", "-1", "must be at least 0"),
    ("watcher:web", "max_restarts", "lots", "expected a whole number"),
    ("watcher:web", "graceful_timeout", "soon", "expected a number of seconds, got 'soon'"),
    ("watcher:web", "graceful_timeout", "-1", "must be a number of seconds from 0 to 86400"),
    ("watcher:web", "graceful_timeout", "inf", "from 0 to 86400 (1 day), got 'inf'"),
    ("watcher:web", "restart_window", "1e308", "from 0 to 86400"),
    ("watcher:web", "backoff_max", "-inf", "from 0 to 86400"),
    ("watcher:web", "ready", "delay:NaN", "from 0 to 86400"),
    ("watcher:web", "operator_signals", "HUP, KILLL", "unknown signal 'KILLL'"),
    ("watcher:web", "operator_signals", "HUP 1", "expected signal names"),
    ("watcher:web", "operator_signals", "hup SIGHUP", "'SIGHUP' is listed twice"),
    ("watcher:web", "min_uptime", "nan", "must be a number of seconds from 0"),
    ("watcher:web", "stop_signal", "SIGFOO", "unknown signal 'SIGFOO'"),
    ("watcher:web", "stop_signal", "999", "unknown signal number 999"),
    ("watcher:web", "umask", "0999", "expected an octal mode"),
    ("watcher:web", "umask", "u=rwx", "expected an octal mode"),
    ("watcher:web", "ready", "eventually", "expected started, notify or delay:SECONDS"),
    ("watcher:web", "ready", "delay:soon", "expected a number of seconds"),
    ("watcher:web", "ready_timeout", "-5", "must be a number of seconds from 0"),
    ("watcher:web", "stdout", "relative.log", "file:/absolute/path"),
    ("watcher:web", "rlimit_nofile", "many", "expected a whole number"),
    ("socket:web", "blocking", "sometimes", "expected true or false"),
    ("socket:web", "backlog", "0", "must be at least 1"),
    ("socket:web", "port", "http", "expected a whole number, got 'http'"),
])
def test_wrong_types(tmp_path, section, key, value, says):
    head = "[socket:web]\nhost = 127.0.0.1\n" + ("" if key == "port" else "port = 0\n")
    if section == "socket:web":
        text = head + f"{key} = {value}\n"
    else:
        text = watcher(f"cmd = sleep 1\n{key} = {value}", head=head)
    load_error(tmp_path, text, section=section, key=key, says=says)


@pytest.mark.parametrize("value, says", [
    ("rw-rw----", "expected an octal mode such as 0660, got 'rw-rw----'"),
    ("0o77777", "mode out of range"),
    ("-1", "mode out of range"),
])
def test_wrong_octal_mode(tmp_path, value, says):
    load_error(tmp_path, UNIX_SOCKET + f"mode = {value}\n", section="socket:web",
               key="mode", says=says)


@pytest.mark.parametrize("key, value, says", [
    ("subreaper", "perhaps", "expected true or false"),
    ("umask", "8", "expected an octal mode"),
    ("loglevel", "chatty", "expected debug, info, warning, error or critical"),
])
def test_wrong_global_values(tmp_path, key, value, says):
    load_error(tmp_path, f"[sockvisor]\n{key} = {value}\n", section="sockvisor", key=key,
               says=says)


@pytest.mark.parametrize("port, says", [
    ("-1", "must be at least 0, got -1"),
    ("65536", "must be at most 65535, got 65536"),
])
def test_port_out_of_range(tmp_path, port, says):
    load_error(tmp_path, f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n",
               section="socket:web", key="port", says=says)


def test_unknown_user(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nuid = no-such-user-sockvisor"),
               section="watcher:web", key="uid",
               says="unknown user 'no-such-user-sockvisor'")


def test_unknown_numeric_user(tmp_path):
    uid = 4_000_000_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
        uid += 1
    load_error(tmp_path, watcher(f"cmd = sleep 1\nuid = {uid}"), section="watcher:web",
               key="uid", says=f"unknown user '{uid}'")


def test_unknown_group(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\ngid = no-such-group-sockvisor"),
               section="watcher:web", key="gid",
               says="unknown group 'no-such-group-sockvisor'")


def test_unknown_socket_owner(tmp_path):
    load_error(tmp_path, UNIX_SOCKET + "owner = no-such-user-sockvisor\n",
               section="socket:web", key="owner", says="unknown user")


def test_unknown_endpoint_group(tmp_path):
    load_error(tmp_path, "[sockvisor]\nendpoint_group = no-such-group-sockvisor\n",
               section="sockvisor", key="endpoint_group", says="unknown group")


# --------------------------------------------------------------------------- watchers: errors

def test_missing_cmd(tmp_path):
    load_error(tmp_path, watcher("numprocesses = 2"), section="watcher:web", key="cmd",
               says="a watcher needs cmd")


def test_empty_cmd(tmp_path):
    load_error(tmp_path, watcher("cmd ="), section="watcher:web", key="cmd",
               says="must not be empty")


def test_unbalanced_quotes_name_the_key_at_fault(tmp_path):
    load_error(tmp_path, watcher("cmd = echo 'oops\nargs = fine"), section="watcher:web",
               key="cmd", says="cannot split into words")
    load_error(tmp_path, watcher("cmd = echo\nargs = \"oops"), section="watcher:web",
               key="args", says="cannot split into words")


def test_socket_listed_but_not_defined(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nsockets = nope"), section="watcher:web",
               key="sockets", says="no [socket:nope] is defined")


def test_socket_listed_with_typo_gets_a_hint(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nsockets = wbe"), section="watcher:web",
               key="sockets", says=("no [socket:wbe] is defined", "did you mean 'web'"))


def test_socket_listed_twice(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nsockets = web, web"),
               section="watcher:web", key="sockets", says="listed twice")


@pytest.mark.parametrize("prefix", ["sockvisor", "circus"])
@pytest.mark.parametrize("body, key", [
    ("cmd = server --fd $({p}.sockets.nope)", "cmd"),
    ("cmd = server\nargs = --fd $({p}.sockets.nope)", "args"),
])
def test_substituted_socket_not_defined(tmp_path, prefix, body, key):
    load_error(tmp_path, watcher(body.format(p=prefix)), section="watcher:web", key=key,
               says=f"$({prefix}.sockets.nope): no [socket:nope] is defined")


@pytest.mark.parametrize("body, key", [
    ("cmd = server $(sockvisor.bogus)", "cmd"),
    ("cmd = server\nargs = --x=$(sockvisor.bogus)", "args"),
    ("cmd = server\nargs = $(circus.pid)", "args"),
])
def test_unknown_substitution(tmp_path, body, key):
    error = load_error(tmp_path, watcher(body), section="watcher:web", key=key,
                       says="unknown substitution $(")
    assert "known: sockets.NAME, wid, env.NAME" in str(error)


def test_substitution_from_cmd_blamed_on_cmd_even_with_args(tmp_path):
    load_error(tmp_path, watcher("cmd = server --fd $(sockvisor.sockets.nope)\nargs = -v"),
               section="watcher:web", key="cmd", says="no [socket:nope] is defined")


def test_env_substitution_of_unset_variable(tmp_path):
    load_error(tmp_path, watcher("cmd = server $(sockvisor.env.NOT_SET)"),
               section="watcher:web", key="cmd",
               says="$(sockvisor.env.NOT_SET): NOT_SET is not set")


@pytest.mark.parametrize("value", ["A", "A=1,=2", "1A=1", "A-B=1"])
def test_bad_env_option(tmp_path, value):
    load_error(tmp_path, watcher(f"cmd = sleep 1\nenv = {value}"), section="watcher:web",
               key="env", says="expected NAME=VALUE pairs separated by commas")


def test_bad_env_section_variable_name(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[env:web]\nNOT-VALID = 1\n"
    load_error(tmp_path, text, section="env:web", key="NOT-VALID",
               says="not a valid environment variable name")


def test_working_dir_must_exist(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nworking_dir = {tmp}/missing"),
               section="watcher:web", key="working_dir", says="no such directory")


def test_backoff_max_below_base(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nbackoff_base = 5\nbackoff_max = 1"),
               section="watcher:web", key="backoff_max",
               says="must not be less than backoff_base")


def test_ready_delay_not_shorter_than_timeout(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nready = delay:5\nready_timeout = 5"),
               section="watcher:web", key="ready",
               says="the ready delay must be shorter than ready_timeout")


def test_output_file_in_missing_directory(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nstdout = file:{tmp}/missing/out.log"),
               section="watcher:web", key="stdout", says="does not exist")


def test_stdout_and_stream_class_together(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nstdout = null\nstdout_stream.class = "
                                 "NullStream"),
               section="watcher:web", key="stdout_stream.class",
               says="give either stdout or stdout_stream.class")


def test_file_stream_needs_a_filename(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nstderr_stream.class = FileStream"),
               section="watcher:web", key="stderr_stream.filename",
               says="FileStream needs a filename")


def test_switching_user_needs_root_when_not_root(tmp_path, monkeypatch):
    # Pure logic: pretend to be an unprivileged user whatever the test runs as.
    monkeypatch.setattr(config_module.os, "geteuid", lambda: 4321)
    monkeypatch.setattr(config_module.os, "getegid", lambda: 4321)
    load_error(tmp_path, watcher("cmd = sleep 1\nuid = nobody"), section="watcher:web",
               key="uid", says="needs sockvisor to run as root")
    load_error(tmp_path, watcher("cmd = sleep 1\ngroup = root"), section="watcher:web",
               key="group", says="needs sockvisor to run as root")


def test_another_uid_when_not_root(tmp_path, world_readable_dir):
    """As root, checked in a child that has become nobody (see test_unreadable_file)."""
    if not IS_ROOT:
        other = "root" if pwd.getpwuid(os.geteuid()).pw_name == "nobody" else "nobody"
        load_error(tmp_path, watcher(f"cmd = sleep 1\nuid = {other}"),
                   section="watcher:web", key="uid", says="needs sockvisor to run as root")
        return
    path = write(world_readable_dir, watcher("cmd = sleep 1\nuid = root"))
    message = load_error_as_nobody(path)
    assert message.startswith(f"{path}: [watcher:web]: uid: "), message
    assert "needs sockvisor to run as root" in message, message


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_uid_nobody_when_root(tmp_path):
    nobody = pwd.getpwnam("nobody")
    cfg = load_ok(tmp_path, watcher("cmd = sleep 1\nuid = nobody"))
    web = cfg.watchers["web"]
    assert (web.uid, web.gid, web.user, web.home) == (
        nobody.pw_uid, nobody.pw_gid, "nobody", nobody.pw_dir)


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_uid_and_gid_when_root(tmp_path):
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(0)
    cfg = load_ok(tmp_path, watcher(f"cmd = sleep 1\nuid = {nobody.pw_uid}\n"
                                    f"gid = {group.gr_name}"))
    web = cfg.watchers["web"]
    assert (web.uid, web.gid, web.user) == (nobody.pw_uid, group.gr_gid, "nobody")


def test_own_user_needs_no_root(tmp_path, monkeypatch):
    me = pwd.getpwuid(os.geteuid())
    monkeypatch.setattr(config_module.os, "getegid", lambda: me.pw_gid)
    cfg = load_ok(tmp_path, watcher(f"cmd = sleep 1\nuid = {me.pw_name}"))
    assert cfg.watchers["web"].uid == me.pw_uid


# --------------------------------------------------------------------------- Circus options

@pytest.mark.parametrize("text, section, key, says", [
    (watcher("cmd = sleep 1\nhooks = mymodule.hook"), "watcher:web", "hooks",
     "unknown hook point; Circus's (and sockvisor's) are: before_start"),
    ("[socket:web]\nhost = 127.0.0.1\nport = 0\ninterface = eth0\n", "socket:web",
     "interface", "SO_BINDTODEVICE"),
    (watcher("cmd = sleep 1\nflapping.max_retries = 3"), "watcher:web",
     "flapping.max_retries", "flapping.max_retry"),
])
def test_unsupported_circus_options(tmp_path, text, section, key, says):
    load_error(tmp_path, text, section=section, key=key, says=("not supported", says))


@pytest.mark.parametrize("text,key,says", [
    # Third-party (or misspelt) stream classes: sockvisor loads no stream code.
    ("stdout_stream.class = some.Custom", "stdout_stream.class",
     ("'some.Custom' is not one of Circus's own", "TimedRotatingFileStream")),
    ("stdout_stream.class = mypkg.FileStream\nstdout_stream.filename = {tmp}/out.log",
     "stdout_stream.class", ("'mypkg.FileStream' is not one of Circus's own",)),
    ("stderr_stream.class = TimedRotatingFileStream", "stderr_stream.filename",
     ("TimedRotatingFileStream needs a filename",)),
    # Circus fails on it without rotate_when; it never rotates by size.
    ("stderr_stream.class = TimedRotatingFileStream\nstderr_stream.filename = {tmp}/e.log",
     "stderr_stream.class", ("needs stderr_stream.rotate_when", "midnight")),
    ("stderr_stream.class = TimedRotatingFileStream\nstderr_stream.filename = {tmp}/e.log"
     "\nstderr_stream.rotate_when = H\nstderr_stream.max_bytes = 100",
     "stderr_stream.max_bytes", ("rotates by time only",)),
    ("stderr_stream.class = TimedRotatingFileStream\nstderr_stream.filename = {tmp}/e.log"
     "\nstderr_stream.rotate_when = fortnightly", "stderr_stream.rotate_when",
     ("expected S, M, H, D, midnight or W0-W6", "'fortnightly'")),
    ("stderr_stream.class = TimedRotatingFileStream\nstderr_stream.filename = {tmp}/e.log"
     "\nstderr_stream.rotate_when = W7", "stderr_stream.rotate_when", ("W0-W6",)),
    # Circus's FileStream ignores rotate_when: not silently made to rotate by time.
    ("stderr_stream.class = FileStream\nstderr_stream.filename = {tmp}/e.log"
     "\nstderr_stream.rotate_when = H", "stderr_stream.rotate_when",
     ("only TimedRotatingFileStream rotates by time",)),
    ("stderr_stream.rotate_when = H", "stderr_stream.rotate_when",
     ("rotation is for a file: stderr is inherit",)),
    # Circus's WatchedFileStream never rotates: not silently made to rotate by size.
    ("stderr_stream.class = WatchedFileStream\nstderr_stream.filename = {tmp}/e.log"
     "\nstderr_stream.max_bytes = 1000", "stderr_stream.max_bytes",
     ("leaves rotation to logrotate",)),
])
def test_circus_stream_errors(tmp_path, text, key, says):
    load_error(tmp_path, watcher(f"cmd = sleep 1\n{text}"), section="watcher:web",
               key=key, says=says)


def test_circus_timed_rotating_file_stream(tmp_path):
    web = load_ok(tmp_path, watcher(
        "cmd = sleep 1\nstdout_stream.class = TimedRotatingFileStream\n"
        "stdout_stream.filename = {tmp}/o.log\nstdout_stream.rotate_when = midnight\n"
        "stdout_stream.rotate_interval = 2\nstdout_stream.utc = True")).watchers["web"]
    out = web.stdout
    assert (out.kind, out.path, out.rotate_when, out.rotate_interval, out.rotate_utc,
            out.max_bytes, out.backup_count) == (
        OutputKind.FILE, f"{tmp_path}/o.log", "MIDNIGHT", 2, True, 0, 0)   # keep all
    watched = load_ok(tmp_path, watcher(
        "cmd = sleep 1\nstdout_stream.class = WatchedFileStream\n"
        "stdout_stream.filename = {tmp}/w.log")).watchers["web"]
    assert watched.stdout.watched and not web.stdout.watched


def test_shell_false_is_accepted(tmp_path):
    assert load_ok(tmp_path, watcher("cmd = sleep 1\nshell = false")).watchers["web"]


def test_ignored_circus_options_warn(tmp_path):
    text = ("[circus]\ncheck_delay = 5\n" + WEB_SOCKET
            + "\n[watcher:web]\ncmd = sleep 1\nclose_child_stdin = true\n")
    path = write(tmp_path, text)
    cfg = load(str(path), environ=ENVIRON)
    assert len(cfg.warnings) == 2, cfg.warnings
    check_delay, stdin = cfg.warnings
    assert str(path) in check_delay and "[circus]" in check_delay
    assert "check_delay" in check_delay and "ignored" in check_delay
    assert "[watcher:web] close_child_stdin: ignored" in stdin


@pytest.mark.parametrize("section, key, value", [
    ("circus", "statsd_close_outputs", "true"),
    ("circus", "httpd_close_outputs", "true"),
    ("circus", "multicast_endpoint", "udp://237.219.251.97:12027"),
    ("watcher:web", "stdout_stream.time_format", "%Y-%m-%d %H:%M:%S"),
    ("watcher:web", "stdout_stream.refresh_time", "0.3"),
    ("watcher:web", "stderr_stream.time_format", "%H:%M:%S"),
    ("watcher:web", "stderr_stream.refresh_time", "1"),
    ("watcher:web", "stdout_stream.color", "green"),
    ("watcher:web", "check_flapping", "false"),
    ("watcher:web", "shell_args", "-x"),
])
def test_more_ignored_circus_options_warn(tmp_path, section, key, value):
    """Circus has these and they are harmless here: not "unknown key", a warning."""
    text = watcher(f"cmd = sleep 1\n{key} = {value}" if section == "watcher:web"
                   else "cmd = sleep 1")
    if section == "circus":
        text = f"[circus]\n{key} = {value}\n" + text
    path = write(tmp_path, text)
    cfg = load(str(path), environ=ENVIRON)
    assert len(cfg.warnings) == 1, cfg.warnings
    assert f"{path}: [{section}] {key}: ignored: " in cfg.warnings[0]


def test_circus_include_switched_off_is_accepted(tmp_path):
    assert load_ok(tmp_path, "[circus]\ninclude =\n" + A_WATCHER).warnings == ()


def test_every_circus_rlimit(tmp_path):
    # Circus takes any RLIMIT_* the platform has, and an empty value as no limit.
    text = watcher("cmd = sleep 1\nrlimit_rss = 1000\nrlimit_sigpending = 10\n"
                   "rlimit_nofile =")
    limits = load_ok(tmp_path, text).watchers["web"].rlimits
    assert limits == {"rss": 1000, "sigpending": 10, "nofile": -1}


def test_unknown_rlimit(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nrlimit_nofiles = 10"),
               section="watcher:web", key="rlimit_nofiles",
               says=("unknown key", "did you mean 'rlimit_nofile'"))


def test_no_warnings_for_a_plain_config(tmp_path):
    assert load_ok(tmp_path, watcher("cmd = sleep 1")).warnings == ()


# --------------------------------------------------------------------------- global section

@pytest.mark.parametrize("host", ["0.0.0.0", "*", "192.0.2.1", "[::]", "[2001:db8::1]",
                                  "eth0", "example.com"])
def test_non_loopback_tcp_endpoint_needs_curve(tmp_path, host):
    load_error(tmp_path, f"[sockvisor]\nendpoint = tcp://{host}:5555\n",
               section="sockvisor", key="endpoint",
               says=("not loopback", "no access control", "curve_secret_key_file",
                     "ipc://"))


def test_non_loopback_tcp_pubsub_endpoint_needs_curve(tmp_path):
    load_error(tmp_path, "[circus]\npubsub_endpoint = tcp://0.0.0.0:5556\n",
               section="circus", key="pubsub_endpoint", says="no access control")


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5555", "tcp://127.1.2.3:5555", "tcp://localhost:5555",
    "tcp://[::1]:5555", "tcp://[::ffff:127.0.0.1]:5555"])
def test_loopback_tcp_endpoint_without_curve(tmp_path, endpoint):
    """Circus's default written out: the server checks each peer with the kernel
    (control/peer.py), so no CURVE keys are needed."""
    cfg = load_ok(tmp_path, f"[circus]\nendpoint = {endpoint}\n"
                  "pubsub_endpoint = tcp://127.0.0.1:5556\n" + A_WATCHER)
    assert cfg.globals.endpoint == endpoint
    assert cfg.globals.pubsub_endpoint == "tcp://127.0.0.1:5556"


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1", "tcp://127.0.0.1:*",
                                      "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000"])
def test_tcp_endpoint_needs_a_port(tmp_path, endpoint):
    load_error(tmp_path, f"[sockvisor]\nendpoint = {endpoint}\n",
               section="sockvisor", key="endpoint", says="expected tcp://HOST:PORT")


@pytest.mark.parametrize("endpoint, says", [
    ("udp://127.0.0.1:1", "unsupported transport 'udp'"),
    ("/run/ctl", "expected ipc://PATH or tcp://HOST:PORT"),
])
def test_bad_endpoints(tmp_path, endpoint, says):
    load_error(tmp_path, f"[sockvisor]\nendpoint = {endpoint}\n", section="sockvisor",
               key="endpoint", says=says)


def test_curve_needs_both_keys(tmp_path):
    (tmp_path / "server.key").write_text("secret")
    load_error(tmp_path, "[sockvisor]\ncurve_secret_key_file = {tmp}/server.key\n",
               section="sockvisor", key=None, says="needs both")


def test_curve_key_file_must_exist(tmp_path):
    load_error(tmp_path, "[sockvisor]\ncurve_secret_key_file = {tmp}/nope.key\n"
               "curve_authorized_keys_dir = {tmp}\n",
               section="sockvisor", key="curve_secret_key_file", says="no such file")


def test_tcp_endpoint_with_curve(tmp_path):
    (tmp_path / "server.key").write_text("secret")
    (tmp_path / "clients").mkdir()
    cfg = load_ok(tmp_path, "[sockvisor]\nendpoint = tcp://127.0.0.1:5555\n"
                  "curve_secret_key_file = {tmp}/server.key\n"
                  "curve_authorized_keys_dir = {tmp}/clients\n" + A_WATCHER)
    assert cfg.globals.endpoint == "tcp://127.0.0.1:5555"
    assert cfg.globals.curve_secret_key_file == f"{tmp_path}/server.key"


def test_global_values(tmp_path):
    cfg = load_ok(tmp_path, "[sockvisor]\nendpoint = ipc://{tmp}/ctl\n"
                  "pubsub_endpoint = ipc://{tmp}/pub\nloglevel = DEBUG\nsubreaper = yes\n"
                  "umask = 027\nendpoint_group = 0\n" + A_WATCHER)
    g = cfg.globals
    assert g.endpoint == f"ipc://{tmp_path}/ctl"
    assert g.pubsub_endpoint == f"ipc://{tmp_path}/pub"
    assert (g.loglevel, g.subreaper, g.umask, g.endpoint_group) == ("debug", True, 0o27, 0)


# --------------------------------------------------------------------------- sockets: errors

@pytest.mark.parametrize("host", ["example.com", "my-host", "1.2.3", "[127.0.0.1]"])
def test_host_name_instead_of_address(tmp_path, host):
    load_error(tmp_path, f"[socket:web]\nhost = {host}\nport = 80\n", section="socket:web",
               key="host", says=("expected an IPv4 or IPv6 address", "not resolved"))


def test_host_of_the_wrong_family(tmp_path):
    load_error(tmp_path, "[socket:web]\nhost = ::1\nport = 0\nfamily = AF_INET\n",
               section="socket:web", key="host", says="is not an AF_INET address")


def test_unknown_family(tmp_path):
    load_error(tmp_path, "[socket:web]\nport = 0\nfamily = AF_PACKET\n",
               section="socket:web", key="family", says="expected AF_INET, AF_INET6")


def test_datagram_socket(tmp_path):
    load_error(tmp_path, "[socket:web]\nport = 0\ntype = SOCK_DGRAM\n",
               section="socket:web", key="type", says="only stream sockets")


def test_socket_without_port_or_path(tmp_path):
    load_error(tmp_path, "[socket:web]\nhost = 127.0.0.1\n", section="socket:web",
               key="port", says="needs port (with host) or path")


def test_unix_socket_relative_path(tmp_path):
    load_error(tmp_path, "[socket:web]\npath = run/web.sock\n", section="socket:web",
               key="path", says="the path must be absolute")


def test_unix_socket_in_missing_directory(tmp_path):
    load_error(tmp_path, "[socket:web]\npath = {tmp}/missing/web.sock\n",
               section="socket:web", key="path",
               says=f"directory {tmp_path}/missing does not exist")


def test_unix_socket_path_too_long(tmp_path):
    load_error(tmp_path, f"[socket:web]\npath = /tmp/{'x' * 120}.sock\n",
               section="socket:web", key="path", says="limited to 107 bytes")


def test_unix_socket_with_port(tmp_path):
    load_error(tmp_path, UNIX_SOCKET + "port = 80\n", section="socket:web", key="port",
               says="takes no host or port")


def test_unix_socket_with_inet_family(tmp_path):
    load_error(tmp_path, UNIX_SOCKET + "family = AF_INET\n", section="socket:web",
               key="family", says="a path means AF_UNIX")


@pytest.mark.parametrize("key, value", [("mode", "0660"), ("owner", "root"),
                                        ("group", "root")])
def test_unix_only_options_on_inet_socket(tmp_path, key, value):
    load_error(tmp_path, WEB_SOCKET + f"{key} = {value}\n", section="socket:web", key=key,
               says="only unix sockets (path = ...) take mode")


# --------------------------------------------------------------------------- sockets: good

def test_ipv4_socket(tmp_path):
    cfg = load_ok(tmp_path, "[socket:web]\nhost = 0.0.0.0\nport = 8080\nbacklog = 128\n"
                  "reuseport = yes\nblocking = false\n" + A_WATCHER)
    web = cfg.sockets["web"]
    assert (web.name, web.family, web.host, web.port) == ("web", socket.AF_INET,
                                                          "0.0.0.0", 8080)
    assert (web.backlog, web.reuseport, web.blocking) == (128, True, False)
    assert not web.is_unix and web.path is None
    assert web.describe() == "0.0.0.0:8080"


def test_socket_defaults(tmp_path):
    web = load_ok(tmp_path, "[socket:web]\nport = 0\n" + A_WATCHER).sockets["web"]
    assert (web.family, web.host, web.port) == (socket.AF_INET, "127.0.0.1", 0)
    assert (web.backlog, web.blocking, web.reuseport) == (2048, True, False)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_socket(tmp_path, host):
    web = load_ok(tmp_path, f"[socket:web]\nhost = {host}\nport = 8080\n"
                  + A_WATCHER).sockets["web"]
    assert (web.family, web.host, web.port) == (socket.AF_INET6, "::1", 8080)
    assert web.describe() == "[::1]:8080"


def test_ipv6_family_without_host_defaults_to_ipv6_loopback(tmp_path):
    web = load_ok(tmp_path, "[socket:web]\nfamily = AF_INET6\nport = 0\n"
                  + A_WATCHER).sockets["web"]
    assert (web.family, web.host) == (socket.AF_INET6, "::1")


@pytest.mark.parametrize("family, expected", [
    ("", (socket.AF_INET, "127.0.0.1")),
    ("family = AF_INET6", (socket.AF_INET6, "::1")),
])
def test_localhost_is_the_loopback_address(tmp_path, family, expected):
    web = load_ok(tmp_path, f"[socket:web]\nhost = localhost\nport = 0\n{family}\n"
                  + A_WATCHER).sockets["web"]
    assert (web.family, web.host) == expected


def test_port_zero_and_edges(tmp_path):
    cfg = load_ok(tmp_path, "[socket:a]\nport = 0\n[socket:b]\nport = 65535\n"
                  "[socket:c]\nport = 0x50\n" + A_WATCHER)
    assert [s.port for s in cfg.sockets.values()] == [0, 65535, 80]


def test_circus_socket_spelling(tmp_path):
    cfg = load_ok(tmp_path, "[socket:web]\nhost = 127.0.0.1\nport = 0\nfamily = AF_INET\n"
                  "type = SOCK_STREAM\nso_reuseport = true\n" + A_WATCHER)
    assert cfg.sockets["web"].reuseport is True


def test_unix_socket_with_mode(tmp_path):
    cfg = load_ok(tmp_path, UNIX_SOCKET + "mode = 0660\nowner = root\ngroup = root\n"
                  "backlog = 16\n" + A_WATCHER)
    web = cfg.sockets["web"]
    assert web.family == socket.AF_UNIX and web.is_unix
    assert web.path == f"{tmp_path}/web.sock"
    assert (web.mode, web.owner, web.group, web.backlog) == (0o660, 0, 0, 16)
    assert web.host is None and web.port is None
    assert web.describe() == f"unix:{tmp_path}/web.sock"


def test_operator_signals(tmp_path):
    """None by default (no signal is the group's unless the config says so); a
    list of names otherwise, kept when `set` rebuilds the watcher."""
    web = load_ok(tmp_path, "[watcher:web]\ncmd = sleep 1\n").watchers["web"]
    assert web.operator_signals == frozenset()
    web = load_ok(tmp_path, "[watcher:web]\ncmd = sleep 1\n"
                  "operator_signals = usr2, SIGHUP ttin\n").watchers["web"]
    assert web.operator_signals == {signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN}
    assert config_module.signal_names(web.operator_signals) == ["HUP", "USR2", "TTIN"]
    assert with_options(web, {"numprocesses": 2}, {}, environ=ENVIRON
                        ).operator_signals == web.operator_signals
    assert with_options(web, {"operator_signals": ""}, {}, environ=ENVIRON
                        ).operator_signals == frozenset()


def test_unix_socket_family_given(tmp_path):
    cfg = load_ok(tmp_path, UNIX_SOCKET + "family = AF_UNIX\nmode = 600\n" + A_WATCHER)
    assert cfg.sockets["web"].mode == 0o600


# --------------------------------------------------------------------------- watchers: good

def test_watcher_defaults(tmp_path):
    web = load_ok(tmp_path, "[watcher:web]\ncmd = sleep 1\n").watchers["web"]
    assert web.argv() == ["sleep", "1"]
    assert (web.numprocesses, web.sockets, web.uid, web.gid, web.user) == (
        1, (), None, None, None)
    assert web.stop_signal == signal.SIGTERM and web.graceful_timeout == 30.0
    assert web.ready.kind == ReadyKind.STARTED and web.ready.timeout == 60.0
    assert web.restart.respawn and web.autostart
    assert web.stdout.kind == OutputKind.INHERIT == web.stderr.kind
    assert web.copy_env is False and web.rlimits == {}


def test_watcher_values(tmp_path):
    cfg = load_ok(tmp_path, watcher("""
        cmd = /usr/bin/python3 -u
        args = server.py --name 'my web' --workers=4
        numprocesses = 3
        sockets = web
        working_dir = {tmp}
        umask = 022
        stop_signal = quit
        graceful_timeout = 2.5
        respawn = off
        min_uptime = 3
        backoff_base = 0.5
        backoff_max = 20
        max_restarts = 7
        restart_window = 120
        reload_batch = 1
        autostart = no
        rlimit_nofile = 4096
        rlimit_core = -1
        stdout = null
        stderr = prefix
        """))
    web = cfg.watchers["web"]
    assert web.cmd == "/usr/bin/python3"
    assert web.args == ("-u", "server.py", "--name", "my web", "--workers=4")
    assert (web.numprocesses, web.sockets, web.working_dir) == (3, ("web",), str(tmp_path))
    assert web.umask == 0o22 and web.stop_signal == signal.SIGQUIT
    assert web.graceful_timeout == 2.5 and web.reload_batch == 1 and not web.autostart
    r = web.restart
    assert (r.respawn, r.min_uptime, r.backoff_base, r.backoff_max, r.max_restarts,
            r.window) == (False, 3.0, 0.5, 20.0, 7, 120.0)
    assert web.rlimits == {"nofile": 4096, "core": -1}
    assert (web.stdout.kind, web.stderr.kind) == (OutputKind.NULL, OutputKind.PREFIX)


@pytest.mark.parametrize("key", ["max_retry", "max_restarts"])
def test_max_retry_minus_one_is_no_limit(tmp_path, key):
    """Circus's "retry forever"."""
    web = load_ok(tmp_path, watcher(f"cmd = sleep 1\n{key} = -1")).watchers["web"]
    assert web.restart.max_restarts == UNLIMITED_RESTARTS


def test_max_retry_below_minus_one(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nmax_retry = -2"), section="watcher:web",
               key="max_retry", says=("must be at least 0", "-1: no limit"))


@pytest.mark.parametrize("value", ["TERM", "SIGTERM", "sigterm", "15"])
def test_stop_signal_spellings(tmp_path, value):
    web = load_ok(tmp_path, watcher(f"cmd = sleep 1\nstop_signal = {value}")).watchers["web"]
    assert web.stop_signal == signal.SIGTERM


def test_output_to_file_with_rotation(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = sleep 1\nstdout = file:{tmp}/out.log\n"
                                    "stdout_max_bytes = 1000\nstdout_backup_count = 2\n"
                                    "stderr = {tmp}/err.log")).watchers["web"]
    assert (web.stdout.kind, web.stdout.path, web.stdout.max_bytes,
            web.stdout.backup_count) == (OutputKind.FILE, f"{tmp_path}/out.log", 1000, 2)
    assert (web.stderr.kind, web.stderr.path, web.stderr.max_bytes) == (
        OutputKind.FILE, f"{tmp_path}/err.log", 0)


def test_env_option_and_env_section(tmp_path):
    text = watcher("cmd = sleep 1\nenv = A=1, B=2,C=x=y") + (
        "\n[env:web]\nB = from-section\nDATA = $HOME/data\nBRACED = ${HOME}/x\n"
        "MISSING = [$NOT_SET]\nPATH = $PATH:/opt/bin\n")
    env = load_ok(tmp_path, text).watchers["web"].env
    assert env["A"] == "1" and env["C"] == "x=y"
    assert env["B"] == "from-section"            # [env:web] wins over env =
    assert env["DATA"] == "/home/tester/data"    # $VAR: sockvisor's environment
    assert env["BRACED"] == "/home/tester/x"
    assert env["MISSING"] == "[]"
    assert env["PATH"] == ENVIRON["PATH"] + ":/opt/bin"


def test_env_section_by_alias_spelling(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[env: web]\nA = 1\n"
    assert load_ok(tmp_path, text).watchers["web"].env["A"] == "1"


TWO_WATCHERS = WEB_SOCKET + """
[watcher:web]
cmd = sleep 1
env = FROM_OPTION=web

[watcher:worker]
cmd = sleep 2
"""


def test_env_section_for_several_watchers(tmp_path):
    text = TWO_WATCHERS + "\n[env:web , worker]\nSHARED = yes\nFROM_OPTION = section\n"
    cfg = load_ok(tmp_path, text)
    for name in ("web", "worker"):
        assert cfg.watchers[name].env["SHARED"] == "yes"
        assert cfg.watchers[name].env["FROM_OPTION"] == "section"


def test_later_env_section_wins_for_a_watcher(tmp_path):
    # Circus's documented rule: sections combine in file order, later keys win.
    text = TWO_WATCHERS + (
        "\n[env:web,worker]\nPATH = /bin\nLEVEL = shared\n"
        "\n[env:web]\nPATH = $PATH\n"
        "\n[env:worker]\nCAKE = lie\n")
    cfg = load_ok(tmp_path, text)
    web, worker = cfg.watchers["web"].env, cfg.watchers["worker"].env
    assert web["PATH"] == ENVIRON["PATH"] and web["LEVEL"] == "shared"
    assert "CAKE" not in web
    assert (worker["PATH"], worker["LEVEL"], worker["CAKE"]) == ("/bin", "shared", "lie")


def test_bad_variable_name_in_shared_env_section(tmp_path):
    text = TWO_WATCHERS + "\n[env:worker,web]\nNOT-VALID = 1\n"
    load_error(tmp_path, text, section="env:worker,web", key="NOT-VALID",
               says="not a valid environment variable name")


def test_env_keys_are_case_sensitive(tmp_path):
    text = watcher("cmd = sleep 1") + "\n[env:web]\nFoo = 1\nfoo = 2\n"
    env = load_ok(tmp_path, text).watchers["web"].env
    assert (env["Foo"], env["foo"]) == ("1", "2")


def test_copy_env_false_still_gives_path(tmp_path):
    env = load_ok(tmp_path, watcher("cmd = sleep 1\nenv = A=1")).watchers["web"].env
    assert env == {"PATH": ENVIRON["PATH"], "A": "1"}


def test_copy_env_false_without_path_uses_default_path(tmp_path):
    env = load_ok(tmp_path, watcher("cmd = sleep 1"), environ={}).watchers["web"].env
    assert env == {"PATH": os.defpath}


def test_copy_env_true_copies_the_given_environment(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = sleep 1\ncopy_env = true\nenv = A=1"),
                  environ={**ENVIRON, "EXTRA": "yes"}).watchers["web"]
    assert web.copy_env is True
    assert web.env == {**ENVIRON, "EXTRA": "yes", "A": "1"}


def test_env_substitution_resolved_at_load(tmp_path):
    text = watcher("cmd = $(sockvisor.env.PYTHON) -u\n"
                   "args = --home $(circus.env.HOME) --port=$(sockvisor.env.PORT)") + (
        "\n[env:web]\nPYTHON = /usr/bin/python3\nPORT = 8000\n")
    web = load_ok(tmp_path, text).watchers["web"]
    assert web.argv() == ["/usr/bin/python3", "-u", "--home", "/home/tester",
                          "--port=8000"]


def test_env_substitution_sees_sockvisor_env_without_copy_env(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = echo $(sockvisor.env.SECRET)")).watchers["web"]
    assert web.args == ("from-sockvisor",)
    assert "SECRET" not in web.env


def test_worker_substitutions_left_for_spawn_time(tmp_path):
    text = WEB_SOCKET + "\n[socket:api]\nport = 0\n" + textwrap.dedent("""
        [watcher:web]
        cmd = true --fd $(sockvisor.sockets.web)
        args = --wid=$(sockvisor.wid) --api $(circus.sockets.api)
        """)
    web = load_ok(tmp_path, text).watchers["web"]
    assert web.argv() == ["true", "--fd", "$(sockvisor.sockets.web)",
                          "--wid=$(sockvisor.wid)", "--api", "$(circus.sockets.api)"]
    assert web.sockets == ("web", "api")   # added in order of reference


def test_referenced_socket_added_after_listed_ones(tmp_path):
    text = WEB_SOCKET + "\n[socket:api]\nport = 0\n" + textwrap.dedent("""
        [watcher:web]
        cmd = true --fd $(sockvisor.sockets.web)
        sockets = api
        """)
    assert load_ok(tmp_path, text).watchers["web"].sockets == ("api", "web")


def test_use_sockets_gives_all_sockets(tmp_path):
    text = WEB_SOCKET + "\n[socket:api]\nport = 0\n" + UNIX_SOCKET.replace(
        "socket:web", "socket:admin") + "\n[watcher:web]\ncmd = true\nuse_sockets = true\n"
    assert load_ok(tmp_path, text).watchers["web"].sockets == ("web", "api", "admin")


def test_use_sockets_false_gives_none(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = true\nuse_sockets = false")).watchers["web"]
    assert web.sockets == ()


def test_explicit_sockets_win_over_use_sockets(tmp_path):
    text = WEB_SOCKET + "\n[socket:api]\nport = 0\n" + (
        "\n[watcher:web]\ncmd = true\nuse_sockets = true\nsockets = api\n")
    assert load_ok(tmp_path, text).watchers["web"].sockets == ("api",)


def test_several_watchers_share_a_socket(tmp_path):
    text = (watcher("cmd = true\nsockets = web")
            + "\n[watcher:other]\ncmd = sleep 1\nsockets = web\n")
    cfg = load_ok(tmp_path, text)
    assert [w.sockets for w in cfg.watchers.values()] == [("web",), ("web",)]


@pytest.mark.parametrize("value, kind, delay", [
    ("notify", ReadyKind.NOTIFY, 0.0),
    ("delay:2", ReadyKind.DELAY, 2.0),
    ("DELAY:0.5", ReadyKind.DELAY, 0.5),
    ("started", ReadyKind.STARTED, 0.0),
])
def test_ready_policies(tmp_path, value, kind, delay):
    web = load_ok(tmp_path, watcher(f"cmd = sleep 1\nready = {value}\nready_timeout = 7")
                  ).watchers["web"]
    assert (web.ready.kind, web.ready.delay, web.ready.timeout) == (kind, delay, 7.0)


def test_ready_timeout_alone(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = sleep 1\nready_timeout = 3")).watchers["web"]
    assert (web.ready.kind, web.ready.timeout) == (ReadyKind.STARTED, 3.0)


def test_ready_delay_default_timeout(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = sleep 1\nready = delay:2")).watchers["web"]
    assert (web.ready.kind, web.ready.delay, web.ready.timeout) == (ReadyKind.DELAY, 2.0,
                                                                    60.0)


def test_config_is_frozen(tmp_path):
    cfg = load_ok(tmp_path, watcher("cmd = sleep 1"))
    with pytest.raises(AttributeError):
        cfg.watchers["web"].cmd = "other"  # type: ignore[misc]
    assert cfg.path == str(tmp_path / "sockvisor.ini")


# --------------------------------------------------------------------------- Circus configs

CIRCUS_CONFIG = """
[circus]
check_delay = 5
endpoint = ipc://{tmp}/ctl
pubsub_endpoint = ipc://{tmp}/pub
stats_endpoint = ipc://{tmp}/stats
loglevel = info

[socket:web]
host = 127.0.0.1
port = 0
family = AF_INET
type = SOCK_STREAM

[watcher:web]
cmd = python3 -m myapp --fd $(circus.sockets.web) --wid $(circus.wid)
use_sockets = True
numprocesses = 2
max_retry = 3
copy_env = True
graceful_timeout = 10
stop_signal = QUIT
respawn = True
stop_children = True
close_child_stdin = True
stdout_stream.class = FileStream
stdout_stream.filename = {tmp}/web.log
stdout_stream.max_bytes = 1048576
stdout_stream.backup_count = 3
stderr_stream.class = StdoutStream
rlimit_nofile = 1024

[env:web]
PYTHONUNBUFFERED = 1
APP_HOME = $HOME/app
"""


def test_complete_circus_config_loads(tmp_path):
    cfg = load_ok(tmp_path, CIRCUS_CONFIG)
    assert cfg.globals.endpoint == f"ipc://{tmp_path}/ctl"
    web = cfg.watchers["web"]
    assert web.argv() == ["python3", "-m", "myapp", "--fd", "$(circus.sockets.web)",
                          "--wid", "$(circus.wid)"]
    assert web.sockets == ("web",)
    assert (web.numprocesses, web.restart.max_restarts, web.graceful_timeout) == (2, 3, 10.0)
    assert web.stop_signal == signal.SIGQUIT
    assert (web.stdout.kind, web.stdout.path, web.stdout.max_bytes,
            web.stdout.backup_count) == (OutputKind.FILE, f"{tmp_path}/web.log", 1048576, 3)
    assert web.stderr.kind == OutputKind.PREFIX
    assert web.env["PYTHONUNBUFFERED"] == "1"
    assert web.env["APP_HOME"] == "/home/tester/app"
    assert web.env["SECRET"] == "from-sockvisor"       # copy_env
    assert web.rlimits == {"nofile": 1024}
    ignored = " ".join(cfg.warnings)
    for key in ("check_delay", "stats_endpoint", "stop_children", "close_child_stdin"):
        assert key in ignored
    assert expand_worker_args(web.argv(), 2, {"web": 3}) == [
        "python3", "-m", "myapp", "--fd", "3", "--wid", "2"]


@pytest.mark.parametrize("cls", ["FileStream", "circus.stream.FileStream",
                                 "WatchedFileStream"])
def test_circus_file_stream_class_spellings(tmp_path, cls):
    web = load_ok(tmp_path, watcher(f"cmd = sleep 1\nstderr_stream.class = {cls}\n"
                                    "stderr_stream.filename = {tmp}/err.log")
                  ).watchers["web"]
    assert (web.stderr.kind, web.stderr.path) == (OutputKind.FILE, f"{tmp_path}/err.log")


def test_circus_stream_filename_without_class_is_a_file_stream(tmp_path):
    # Circus makes a FileStream of a bare filename; dropping it would lose the output.
    web = load_ok(tmp_path, watcher("cmd = sleep 1\nstdout_stream.filename = {tmp}/o.log")
                  ).watchers["web"]
    assert (web.stdout.kind, web.stdout.path) == (OutputKind.FILE, f"{tmp_path}/o.log")


def test_circus_null_stream(tmp_path):
    web = load_ok(tmp_path, watcher("cmd = sleep 1\nstdout_stream.class = NullStream")
                  ).watchers["web"]
    assert web.stdout.kind == OutputKind.NULL


# --------------------------------------------------------------------------- expand_worker_args

def test_expand_worker_args():
    argv = ["server", "--fd=$(sockvisor.sockets.web)", "$(circus.sockets.api)",
            "--wid", "$(sockvisor.wid)-$(circus.wid)", "$(other.thing)", "$(sockvisor.env.X)"]
    assert expand_worker_args(argv, 4, {"web": 3, "api": 5}) == [
        "server", "--fd=3", "5", "--wid", "4-4", "$(other.thing)", "$(sockvisor.env.X)"]


def test_expand_worker_args_leaves_input_alone():
    argv = ["server", "$(sockvisor.wid)"]
    assert expand_worker_args(argv, 1, {}) == ["server", "1"]
    assert argv == ["server", "$(sockvisor.wid)"]


def test_loaded_watcher_expands_per_worker(tmp_path):
    text = WEB_SOCKET + "\n[socket:api]\nport = 0\n" + (
        "\n[watcher:web]\ncmd = true --fd $(sockvisor.sockets.api)\n"
        "args = --also $(sockvisor.sockets.web) --wid $(sockvisor.wid)\n")
    web = load_ok(tmp_path, text).watchers["web"]
    fds = {name: 3 + index for index, name in enumerate(web.sockets)}
    assert fds == {"api": 3, "web": 4}
    assert expand_worker_args(web.argv(), 1, fds) == [
        "true", "--fd", "3", "--also", "4", "--wid", "1"]


# --------------------------------------------------------------------------- regressions

def test_section_kind_without_a_name(tmp_path):
    load_error(tmp_path, "[watcher]\ncmd = sleep 1\n", section="watcher", key=None,
               says="needs a name: [watcher:NAME]")


def test_af_unix_family_without_path(tmp_path):
    load_error(tmp_path, "[socket:web]\nfamily = AF_UNIX\nhost = localhost\nport = 80\n",
               section="socket:web", key="family", says="an AF_UNIX socket needs path")


def test_unknown_key_hint_prefers_supported_keys(tmp_path):
    # "prot" is closer to Circus's refused `proto` than to `port`.
    load_error(tmp_path, "[socket:web]\nprot = 80\n", section="socket:web", key="prot",
               says="did you mean 'port'")


def test_stdout_and_stream_filename_together(tmp_path):
    load_error(tmp_path, watcher("cmd = sleep 1\nstdout = null\n"
                                 "stdout_stream.filename = {tmp}/o.log"),
               section="watcher:web", key="stdout_stream.filename",
               says="give either stdout or stdout_stream.filename")


@pytest.mark.parametrize("section,key,off,on", [
    ("watcher:web", "use_papa", "false", "true"),
])
def test_circus_feature_switched_off_is_accepted(tmp_path, section, key, off, on):
    """A Circus config that spells out a disabled feature loads; enabling it does not."""
    def write(value: str) -> str:
        text = "[socket:web]\nport = 0\n[watcher:web]\ncmd = /bin/true\n"
        if section == "circus":
            text = f"[circus]\n{key} = {value}\n" + text
        else:
            text += f"{key} = {value}\n"
        path = tmp_path / "c.ini"
        path.write_text(text)
        return str(path)

    config_module.load(write(off))
    with pytest.raises(ConfigError, match="not supported") as info:
        config_module.load(write(on))
    assert key in str(info.value)


def test_set_rebuilds_a_copy_env_watcher_from_what_the_config_said(tmp_path):
    """`set` rebuilds a watcher from its options (with_options).  The copied
    environment is copied anew, not frozen into explicit env: so switching the
    user afterwards still gives the worker its own HOME/USER/LOGNAME, and the
    explicit values stay explicit."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/home/supervisor",
               "USER": "supervisor", "COPIED": "yes"}
    path = write(tmp_path, watcher("cmd = sleep 1\ncopy_env = true\nenv = A=1"))
    web = load(str(path), environ=environ).watchers["web"]
    assert web.env["HOME"] == "/home/supervisor" and web.explicit_env == {"A": "1"}

    changed = with_options(web, {"uid": me}, {}, environ=environ)
    assert changed.copy_env and changed.explicit_env == {"A": "1"}
    assert changed.env["COPIED"] == "yes" and changed.env["A"] == "1"
    # Set at spawn from the passwd entry of `uid`, not copied from sockvisor's.
    assert "HOME" not in changed.env and "USER" not in changed.env
    assert changed.home == pwd.getpwnam(me).pw_dir

    # Without a change, the rebuilt watcher is the same watcher.
    assert with_options(web, {}, {}, environ=environ) == web
