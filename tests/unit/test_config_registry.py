"""The option registry (config/options.py) is the one place each option fact lives.

What other modules decide about an option is derived from it, and these tests
check that each derived answer is the declared one: the INI parser accepts every
declared key and alias; `options`/`get` show every option with a value of its
own; a change of each option alone is classified (reloadconfig's split, `set`'s
"needs a reload") as its declaration says; the group endpoint's settable options
are the ones declared for operators.  And `set` merges values as values: an env
value with commas survives it.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from sockvisor import config
from sockvisor.config import (Change, ConfigError, SocketConfig, Who, change_kind, changes,
                              load, shown_options, watcher_from_options, watcher_option,
                              with_options)
from sockvisor.config.options import _WATCHER_OPTIONS
from sockvisor.control import access
from sockvisor.control.commands import get_cmd, options_cmd, set_cmd

pytestmark = pytest.mark.timeout(20)

IS_ROOT = os.geteuid() == 0
ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
SOCKETS = {"web": SocketConfig("web", socket.AF_INET, "127.0.0.1", 0)}

# A new value for each option that has one of its own (different from BASE's).
NEW_VALUES: dict[str, object] = {
    "cmd": "/bin/echo hi", "args": "x y", "numprocesses": "3", "sockets": "web",
    "working_dir": "/tmp", "env": {"A": "1,B=2"}, "copy_env": "true", "umask": "077",
    "stop_signal": "INT", "operator_signals": ["HUP"], "graceful_timeout": "2",
    "ready": "notify", "ready_timeout": "5", "ready_settle": "0.5", "reload_batch": "1",
    "respawn": "false", "min_uptime": "2", "backoff_base": "0.2", "backoff_max": "20",
    "max_restarts": "7", "restart_window": "30", "autostart": "false",
    "stdout": "null", "stderr": "prefix", "stdout_max_bytes": "1000",
    "stdout_backup_count": "2", "stderr_max_bytes": "1000", "stderr_backup_count": "2",
    "uid": "nobody", "gid": "nogroup",
    # Circus's (issue 11): the virtualenv is made by the test (VENV).
    "copy_path": "true", "virtualenv": "{venv}", "virtualenv_py_ver": "2.7",
    "shell": "true", "shell_args": "x", "singleton": "true", "priority": "5",
    "send_hup": "true", "on_demand": "true",   # on_demand: on a base with a socket
    "stdout_rotate_when": "H", "stdout_rotate_interval": "2", "stdout_rotate_utc": "true",
    "stderr_rotate_when": "W6", "stderr_rotate_interval": "3", "stderr_rotate_utc": "true",
    **{key: "100" for key in _WATCHER_OPTIONS if key.startswith("rlimit_")},
    # Circus's hooks, as commands (issue 11 item 12).
    **{key: "/bin/true --hook" for key in _WATCHER_OPTIONS if key.startswith("hooks.")},
    "hooks.extended_stats": "app.stats.more",   # a Python callable only
    "hook_timeout": "5", "hook_python": "/usr/bin/python3",
}


@pytest.fixture
def base(tmp_path: Path):
    """A watcher whose output goes to files (so rotation options mean something)."""
    (tmp_path / "logs").mkdir(mode=0o755)
    return watcher_from_options("<test>", "web", {
        "cmd": "/bin/true", "stdout": f"file:{tmp_path}/logs/out.log",
        "stderr": f"file:{tmp_path}/logs/err.log"}, SOCKETS, environ=ENVIRON)


def test_every_kept_option_has_a_new_value_here():
    kept = {key for key, option in _WATCHER_OPTIONS.items() if option.kept}
    assert kept == set(NEW_VALUES)


@pytest.mark.parametrize("key", sorted(_WATCHER_OPTIONS))
def test_each_option_is_fully_declared(key):
    option = _WATCHER_OPTIONS[key]
    assert isinstance(option.change, Change), f"{key}: how does a change apply?"
    assert isinstance(option.who, Who)
    # Either a value of its own in a WatcherConfig, or a reason it has none.
    assert option.kept != bool(option.ini_only), key


@pytest.mark.parametrize("key", sorted({name for canonical, option in _WATCHER_OPTIONS.items()
                                        for name in (canonical, *option.aliases)}))
def test_the_ini_parser_accepts_every_declared_key(tmp_path, key):
    path = tmp_path / "c.ini"
    path.write_text(textwrap.dedent(f"""
        [watcher:web]
        cmd = /bin/true
        {key} = 1
    """))
    try:
        load(str(path), environ=ENVIRON)
    except ConfigError as exc:   # a bad value for this key is fine; unknown is not
        assert "unknown key" not in exc.message and "same setting" not in exc.message, exc
    assert watcher_option(key) in _WATCHER_OPTIONS


def test_options_and_get_show_every_kept_option(base):
    watcher = SimpleNamespace(config=base, numprocesses=5)
    shown = options_cmd.watcher_options(watcher)
    assert set(shown) == {key for key, option in _WATCHER_OPTIONS.items() if option.kept}
    assert shown["numprocesses"] == 5   # the live count, scaled or not
    assert shown["graceful_timeout"] == 30.0 and shown["stdout"].startswith("file:")
    assert shown["rlimit_nofile"] is None and shown["ready_settle"] == 1.0
    assert get_cmd.watcher_options is options_cmd.watcher_options
    assert shown_options(watcher) == shown


@pytest.mark.skipif(not IS_ROOT, reason="uid/gid need root")
@pytest.mark.parametrize("key", sorted(NEW_VALUES))
def test_a_change_of_each_option_is_classified_as_declared(base, key, tmp_path):
    """reloadconfig's split (change_kind) and set's (changes) agree with the
    declaration; and with_options takes the one option, changing nothing else."""
    new_value = NEW_VALUES[key]
    if new_value == "{venv}":
        new_value = str(tmp_path / "venv")
        (tmp_path / ("venv/lib/python%d.%d/site-packages" % sys.version_info[:2])).mkdir(
            parents=True)
    if key == "on_demand":   # it needs a socket to watch
        base = with_options(base, {"sockets": "web"}, SOCKETS, environ=ENVIRON)
    changed = with_options(base, {key: new_value}, SOCKETS, environ=ENVIRON)
    declared = _WATCHER_OPTIONS[key].change
    assert change_kind(base, changed) == {declared}, key
    assert changes({key}) == {declared}
    assert change_kind(base, base) == frozenset()
    # Only that option moved (cmd alone replaces the whole command line; uid
    # brings its user's group unless gid is given).
    follows = {"cmd": "args", "uid": "gid"}
    for other, option in _WATCHER_OPTIONS.items():
        if option.kept and other != key and follows.get(key) != other:
            assert option.value_in(changed) == option.value_in(base), (key, other)


def test_the_changes_the_issue_named():
    assert changes({"graceful_timeout"}) == {Change.IN_PLACE}   # reloadconfig rolled it
    assert changes({"rlimit_nofile"}) == {Change.RESTART}       # set took it in place
    assert changes({"numprocesses"}) == {Change.SCALE}
    assert changes({"cmd", "graceful_timeout"}) == {Change.RESTART, Change.IN_PLACE}


def test_access_lists_come_from_the_registry():
    assert access.OPERATOR_OPTIONS is config.OPERATOR_OPTIONS
    assert config.OPERATOR_OPTIONS == {"numprocesses", "reload_batch"}
    privileged = config.PRIVILEGED_WATCHER_OPTIONS
    assert {"cmd", "args", "uid", "user", "gid", "group", "env", "working_dir",
            "rlimit_nofile", "stdout", "stderr_stream.filename"} <= privileged
    assert not privileged & config.OPERATOR_OPTIONS
    assert "graceful_timeout" not in privileged
    # set_cmd keeps no list of its own.
    assert not [name for name in vars(set_cmd)
                if name.isupper() and name != "COMMAND" or name.startswith("_N")]


def test_defaults_are_the_dataclasses(tmp_path):
    """A watcher that gives only cmd has every other option at its declared default."""
    web = watcher_from_options("<test>", "web", {"cmd": "/bin/true"}, {}, environ=ENVIRON)
    for key, option in _WATCHER_OPTIONS.items():
        if option.kept and key not in ("cmd", "args"):
            assert option.value_in(web) == option.default, key


def test_set_keeps_env_values_with_commas(base):
    """Bug 1: any `set` rewrote env as "K=V,K=V" text and split it again."""
    web = with_options(base, {"env": "PLAIN=1"}, SOCKETS, environ=ENVIRON)
    web = with_options(web, {"env": {"LIST": "a,DEBUG=1", "JAVA_OPTS": "-Xmx1g,-Dfoo=bar"}},
                       SOCKETS, environ=ENVIRON)
    after = with_options(web, {"graceful_timeout": "2"}, SOCKETS, environ=ENVIRON)
    assert after.explicit_env == {"LIST": "a,DEBUG=1", "JAVA_OPTS": "-Xmx1g,-Dfoo=bar"}
    assert after.env["LIST"] == "a,DEBUG=1" and "DEBUG" not in after.env
    assert after.graceful_timeout == 2.0
    assert with_options(after, {}, SOCKETS, environ=ENVIRON) == after


def test_set_of_cmd_and_args_as_words(base):
    web = with_options(base, {"cmd": ["/bin/echo", "a b", "c,d"]}, SOCKETS, environ=ENVIRON)
    assert web.argv() == ["/bin/echo", "a b", "c,d"]
    # args alone: the program stays, the arguments are replaced (not appended).
    web = with_options(web, {"args": ["x"]}, SOCKETS, environ=ENVIRON)
    assert web.argv() == ["/bin/echo", "x"]
    web = with_options(web, {"args": "y 'z w'"}, SOCKETS, environ=ENVIRON)
    assert web.argv() == ["/bin/echo", "y", "z w"]
    # cmd alone: the whole command line, as in the file.
    assert with_options(web, {"cmd": "/bin/true"}, SOCKETS,
                        environ=ENVIRON).argv() == ["/bin/true"]


@pytest.mark.parametrize("options, message", [
    ({"env": {"1BAD": "x"}}, "not a valid environment variable name"),
    ({"env": {"A": ["x"]}}, "expected a string"),
    ({"numprocesses": [1]}, "expected a string or a number, got a list"),
    ({"graceful_timeout": None}, "got null"),
    ({"colour": "red"}, "unknown key"),
    ({"hooks.extended_stats": "/bin/stats"}, "not a Python callable"),
    ({"stats_base_port": "8090"}, "unknown key"),
    ({"uid": "0", "user": "root"}, "same setting"),
    ({"env": {"A": "x\0y"}}, "NUL"),
    ({"args": ["a" * (65 * 1024)]}, "value too long"),
])
def test_set_refuses_bad_values_with_the_key(base, options, message):
    with pytest.raises(ConfigError, match=message) as info:
        with_options(base, options, SOCKETS, environ=ENVIRON)
    assert info.value.key in options


def test_user_alias_replaces_uid(base):
    if not IS_ROOT:
        pytest.skip("uid needs root")
    web = with_options(base, {"uid": "nobody"}, SOCKETS, environ=ENVIRON)
    assert with_options(web, {"user": "root"}, SOCKETS, environ=ENVIRON).uid == 0


def test_sockvisorctl_says_what_reloadconfig_applied_in_place():
    from sockvisor.control.commands.reloadconfig_cmd import COMMAND
    text = COMMAND.format({"updated": ["web"], "scaled": ["api"], "reloaded": []})
    assert "updated watchers: web" in text and "scaled watchers: api" in text
