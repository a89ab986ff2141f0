"""Config errors that used to be found too late or not at all (issue 8, defects 5, 16).

Each of these passed `sockvisor check` and then failed after `start` had bound
the port: a `cmd` that does not exist or may not be executed (by the worker's
user), a config with nothing to run, two sockets on one address, and a 10 MB
value that kept the loader busy for hours (shlex is quadratic in the length of
one word).  All are `ConfigError`s now, located at file, section and key.

Pure logic: configs in `tmp_path`, the environment passed with `environ=`;
nothing is bound or spawned.  The `uid` cases need root (chown, a real user).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import stat
import time
from pathlib import Path

import pytest

from sockvisor import config as config_module
from sockvisor import preflight
from sockvisor.config import ConfigError, load, watcher_from_options

from test_config import ENVIRON, WEB_SOCKET, assert_located, watcher, write

pytestmark = pytest.mark.timeout(20)

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root (chown, uid = nobody)")


def checked(path: Path, environ: dict[str, str] | None = None):
    """What `sockvisor check` does: load, then ask as each worker's user
    (preflight.py); the config, or the first ConfigError of either step."""
    try:
        cfg = load(str(path), environ=ENVIRON if environ is None else environ)
    except ConfigError as exc:
        return exc
    problems = asyncio.run(preflight.check(cfg))
    return problems[0] if problems else cfg


def load_ok(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    result = checked(write(tmp_path, text), environ)
    assert not isinstance(result, ConfigError), str(result)
    return result


def load_error(tmp_path: Path, text: str, *, section: str | None, key: str | None,
               says: tuple[str, ...] | str, environ: dict[str, str] | None = None
               ) -> ConfigError:
    path = write(tmp_path, text)
    result = checked(path, environ)
    assert isinstance(result, ConfigError), result
    assert_located(result, path, section, key, says)
    return result


def program(directory: Path, name: str = "prog", mode: int = 0o755) -> Path:
    """A small executable shell script at directory/name with `mode`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- defect 5: cmd

def test_cmd_absolute_path_that_does_not_exist(tmp_path):
    load_error(tmp_path, watcher("cmd = {tmp}/missing/server --port 80"),
               section="watcher:web", key="cmd",
               says=(f"{tmp_path}/missing/server", "not found"))


def test_cmd_not_in_the_workers_path(tmp_path):
    load_error(tmp_path, watcher("cmd = no-such-program-sockvisor --flag"),
               section="watcher:web", key="cmd",
               says=("no-such-program-sockvisor", "not found in PATH",
                     "/usr/local/bin:/usr/bin:/bin"))


def test_cmd_without_execute_permission(tmp_path):
    prog = program(tmp_path / "bin", mode=0o644)
    load_error(tmp_path, watcher(f"cmd = {prog}"), section="watcher:web", key="cmd",
               says=(str(prog), "not executable", "0644"))


def test_cmd_that_is_a_directory(tmp_path):
    (tmp_path / "bin").mkdir()
    load_error(tmp_path, watcher("cmd = {tmp}/bin"), section="watcher:web", key="cmd",
               says="not a regular file")


def test_cmd_in_path_found_like_execvpe(tmp_path):
    bin_dir = tmp_path / "bin"
    program(bin_dir, "myserver")
    # Not in sockvisor's PATH...
    load_error(tmp_path, watcher("cmd = myserver"), section="watcher:web", key="cmd",
               says="not found in PATH")
    # ...but the worker's own PATH (env) is what execvpe searches.
    cfg = load_ok(tmp_path, watcher(f"cmd = myserver\nenv = PATH={bin_dir}:/usr/bin"))
    assert cfg.watchers["web"].cmd == "myserver"
    # A non-executable file earlier in PATH is skipped, as execvpe does.
    program(tmp_path / "first", "myserver", mode=0o644)
    load_ok(tmp_path, watcher(f"cmd = myserver\nenv = PATH={tmp_path}/first:{bin_dir}"))
    # Only non-executable candidates: the error says so, not "not found".
    load_error(tmp_path, watcher(f"cmd = myserver\nenv = PATH={tmp_path}/first"),
               section="watcher:web", key="cmd",
               says=(f"{tmp_path}/first/myserver", "not executable"))


def test_cmd_in_path_from_an_env_section(tmp_path):
    bin_dir = tmp_path / "bin"
    program(bin_dir, "myserver")
    load_ok(tmp_path, watcher("cmd = myserver") + f"\n[env:web]\nPATH = {bin_dir}\n")


def test_cmd_relative_with_a_slash_is_relative_to_working_dir(tmp_path):
    program(tmp_path / "app" / "bin", "server")
    load_ok(tmp_path, watcher("cmd = bin/server\nworking_dir = {tmp}/app"))
    load_error(tmp_path, watcher("cmd = bin/server\nworking_dir = {tmp}"),
               section="watcher:web", key="cmd", says=(f"{tmp_path}/bin/server", "not found"))


def test_cmd_from_env_substitution_is_checked_after_expansion(tmp_path):
    prog = program(tmp_path / "bin")
    load_ok(tmp_path, watcher(f"cmd = $(circus.env.BIN) -v\nenv = BIN={prog}"))
    load_error(tmp_path, watcher("cmd = $(sockvisor.env.BIN) -v\nenv = BIN={tmp}/nope"),
               section="watcher:web", key="cmd", says="not found")


def test_cmd_with_a_per_worker_substitution_is_not_checked(tmp_path):
    # Which program runs depends on the worker: nothing to check statically.
    cfg = load_ok(tmp_path, watcher("cmd = /opt/app-$(sockvisor.wid)/run"))
    assert cfg.watchers["web"].cmd == "/opt/app-$(sockvisor.wid)/run"


def test_cmd_with_a_nul_byte(tmp_path):
    load_error(tmp_path, watcher("cmd = /bin/tr\0ue"), section="watcher:web", key="cmd",
               says="NUL")


@pytest.mark.parametrize("key, value", [("host", "127.0.0.1\0x"), ("path", "/tmp/a\0b")])
def test_a_nul_byte_in_any_value_is_a_located_error(tmp_path, key, value):
    # Found by the loader's property test: `host = a\0b` escaped as a bare ValueError.
    load_error(tmp_path, f"[socket:s]\n{key} = {value}\n\n" + watcher("cmd = /bin/true"),
               section="socket:s", key=key, says="NUL")


def test_add_over_the_control_channel_checks_cmd_too(tmp_path):
    config = watcher_from_options("<control>", "web", {"cmd": "/nonexistent/server"}, {},
                                  environ=ENVIRON)
    with pytest.raises(ConfigError) as info:
        asyncio.run(preflight.require([config], "<control>"))
    assert info.value.key == "cmd" and "not found" in str(info.value)


@root_only
def test_root_runs_a_0700_root_program_without_uid(tmp_path):
    prog = program(tmp_path / "bin", mode=0o700)
    load_ok(tmp_path, watcher(f"cmd = {prog}"))


@root_only
def test_uid_worker_cannot_execute_a_root_only_program(tmp_path, world_readable_dir):
    # root's access() would say yes: the check must be the worker's view.
    prog = program(world_readable_dir, mode=0o700)
    load_error(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"), section="watcher:web",
               key="cmd", says=(str(prog), "not executable by nobody"))


@root_only
def test_uid_worker_cannot_reach_a_program_in_a_closed_directory(tmp_path,
                                                                world_readable_dir):
    closed = world_readable_dir / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    prog = program(closed, mode=0o755)
    load_error(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"), section="watcher:web",
               key="cmd", says=(str(closed), "nobody"))


@root_only
def test_uid_worker_owner_bits_decide_for_the_owner(tmp_path, world_readable_dir):
    # Owner class first, as the kernel does: an owner without x is refused even
    # when "other" has it.
    prog = program(world_readable_dir, mode=0o605)
    nobody = pwd.getpwnam("nobody")
    os.chown(prog, nobody.pw_uid, 0)
    load_error(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"), section="watcher:web",
               key="cmd", says="not executable by nobody")
    prog.chmod(0o500)
    cfg = load_ok(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"))
    assert cfg.watchers["web"].uid == nobody.pw_uid


@root_only
def test_uid_worker_group_bits_through_a_supplementary_group(tmp_path, world_readable_dir):
    prog = program(world_readable_dir, mode=0o750)
    nobody = pwd.getpwnam("nobody")
    os.chown(prog, 0, nobody.pw_gid)
    load_ok(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"))
    os.chown(prog, 0, 0)
    load_error(tmp_path, watcher(f"cmd = {prog}\nuid = nobody"), section="watcher:web",
               key="cmd", says="not executable by nobody")


@root_only
def test_uid_worker_uses_its_own_path_view(tmp_path, world_readable_dir):
    # A program found in a PATH directory the worker may not search is not found
    # for the worker, even though root sees it.
    closed = world_readable_dir / "closed"
    program(closed, "myserver")
    closed.chmod(0o700)
    load_ok(tmp_path, watcher(f"cmd = myserver\nenv = PATH={closed}"))
    load_error(tmp_path, watcher(f"cmd = myserver\nuid = nobody\nenv = PATH={closed}"),
               section="watcher:web", key="cmd", says="nobody")


# ------------------------------------------------------------- defect 16: nothing to run

def test_empty_config_is_an_error(tmp_path):
    error = load_error(tmp_path, "", section=None, key=None,
                       says=("no [watcher:NAME]", "nothing to run"))
    assert "autostart = false" in str(error)


def test_globals_only_config_is_an_error(tmp_path):
    load_error(tmp_path, "[sockvisor]\nloglevel = info\n", section=None, key=None,
               says="no [watcher:NAME]")


def test_sockets_without_watchers_is_an_error(tmp_path):
    load_error(tmp_path, WEB_SOCKET, section=None, key=None,
               says=("no [watcher:NAME]", "[socket:web]"))


def test_one_watcher_with_autostart_false_is_enough(tmp_path):
    cfg = load_ok(tmp_path, watcher("cmd = sleep 1\nautostart = false"))
    assert not cfg.watchers["web"].autostart


# ------------------------------------------------------------- defect 16: same address

TWO_SOCKETS = """
[socket:a]
{a}

[socket:b]
{b}

[watcher:web]
cmd = sleep 1
sockets = a, b
"""


@pytest.mark.parametrize("a, b", [
    ("host = 127.0.0.1\nport = 8080", "host = 127.0.0.1\nport = 8080"),
    ("port = 8080", "host = 127.0.0.1\nport = 8080"),     # default host is 127.0.0.1
    ("host = 0.0.0.0\nport = 8080", "host = 127.0.0.1\nport = 8080"),
    ("host = 127.0.0.1\nport = 8080", "host = 0.0.0.0\nport = 8080"),
    ("host = ::\nport = 8080", "host = 127.0.0.1\nport = 8080"),   # :: takes IPv4 too
    ("host = ::1\nport = 8080", "host = [::1]\nport = 8080"),
    ("host = ::\nport = 8080", "host = ::1\nport = 8080"),
    ("host = localhost\nport = 8080", "host = 127.0.0.1\nport = 8080"),
    ("host = 127.0.0.1\nport = 8080\nreuseport = true",
     "host = 127.0.0.1\nport = 8080\nreuseport = true"),
    ("path = {tmp}/app.sock", "path = {tmp}/app.sock"),
    ("path = {tmp}/app.sock", "path = {tmp}/sub/../app.sock"),
])
def test_two_sockets_on_one_address(tmp_path, a, b):
    (tmp_path / "sub").mkdir()
    error = load_error(tmp_path, TWO_SOCKETS.format(a=a, b=b), section="socket:b",
                       key=None, says=("[socket:a]", "same address"))
    assert "[socket:b]" in str(error)


@pytest.mark.parametrize("a, b", [
    ("host = 127.0.0.1\nport = 0", "host = 127.0.0.1\nport = 0"),   # the kernel picks two
    ("host = 127.0.0.1\nport = 8080", "host = 127.0.0.1\nport = 8081"),
    ("host = 127.0.0.1\nport = 8080", "host = 127.0.0.2\nport = 8080"),
    ("host = 127.0.0.1\nport = 8080", "host = ::1\nport = 8080"),
    ("host = 0.0.0.0\nport = 8080", "host = ::1\nport = 8080"),
    ("path = {tmp}/a.sock", "path = {tmp}/b.sock"),
])
def test_two_sockets_on_different_addresses(tmp_path, a, b):
    cfg = load_ok(tmp_path, TWO_SOCKETS.format(a=a, b=b))
    assert set(cfg.sockets) == {"a", "b"}


def test_many_sockets_on_distinct_addresses_load_quickly(tmp_path):
    # The overlap check must not be quadratic in the number of sockets.
    text = "".join(f"[socket:s{i}]\nhost = 127.{i // 65536 % 256}.{i // 256 % 256}."
                   f"{i % 256}\nport = 8080\n" for i in range(5000))
    text += "[watcher:web]\ncmd = sleep 1\n"
    started = time.monotonic()
    cfg = load_ok(tmp_path, text)
    assert len(cfg.sockets) == 5000
    assert time.monotonic() - started < 5


# ------------------------------------------------------------- defect 16: huge values

def test_ten_megabyte_args_is_refused_at_once(tmp_path):
    path = write(tmp_path, watcher("cmd = sleep\nargs = " + "x" * (10 << 20)))
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    assert time.monotonic() - started < 3
    assert_located(info.value, path, "watcher:web", "args", ("64 KiB", "too long"))


def test_huge_value_in_an_env_section_is_refused(tmp_path):
    path = write(tmp_path, watcher("cmd = sleep 1") + "\n[env:web]\nBIG = "
                 + "y" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    assert_located(info.value, path, "env:web", "BIG", "too long")


def test_a_value_just_under_the_limit_loads(tmp_path):
    cfg = load_ok(tmp_path, watcher("cmd = sleep\nargs = " + "7" * (60 << 10)))
    assert cfg.watchers["web"].args == ("7" * (60 << 10),)


def test_splitting_one_long_word_is_linear():
    # shlex.split takes ~12 s for one 1 MB word (it grows the word a character
    # at a time by `self.token = self.token + c`); the loader's splitter must not.
    word = "x" * (1 << 20)
    started = time.monotonic()
    assert config_module.split_words(f"'{word}' \"{word}\" {word}") == [word] * 3
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("text", [
    "", "a", "a b  c", " a\tb\n c ", "'a b' c", '"a b" c', "a'b c'd", 'a"b\\"c"d',
    "a\\ b", "a\\\\b", "'a\\b'", '"a\\b"', '"a\\\\b"', "''", '""', "a '' b", "#x y",
    "a#b", '"$(sockvisor.env.X)" $(circus.wid)', "é ü", "a\\", "'a", '"a', '"a\\"',
])
def test_split_words_is_shlex_split(text):
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(ValueError):
            config_module.split_words(text)
    else:
        assert config_module.split_words(text) == expected


# --------------------------------------------------------------------------- start_failure

@pytest.mark.parametrize("raw, expected", [(None, "exit"), ("exit", "exit"),
                                           ("Continue", "continue")])
def test_start_failure_option(tmp_path, raw, expected):
    head = "" if raw is None else f"[sockvisor]\nstart_failure = {raw}\n"
    cfg = load_ok(tmp_path, head + watcher("cmd = sleep 1"))
    assert cfg.globals.start_failure == expected


def test_start_failure_option_bad_value(tmp_path):
    load_error(tmp_path, "[sockvisor]\nstart_failure = ignore\n" + watcher("cmd = sleep 1"),
               section="sockvisor", key="start_failure", says="expected exit or continue")
