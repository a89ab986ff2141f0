"""Reading `hooks.NAME` (config/hooks.py): a command, Circus's `, BOOL` flag, and
the dotted path Circus configs contain, refused with what to do instead."""

from __future__ import annotations

import textwrap

import pytest

from sockvisor.config import ConfigError, HookCommand, load
from sockvisor.config.hooks import parse_hook

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("raw, argv, ignore", [
    ("/usr/local/bin/check-redis", ("/usr/local/bin/check-redis",), False),
    ("./check.sh", ("./check.sh",), False),
    ("check.sh --quick", ("check.sh", "--quick"), False),
    ("python3 -c 'import a, b'", ("python3", "-c", "import a, b"), False),
    ("/bin/check, true", ("/bin/check",), True),
    ("/bin/check ,False", ("/bin/check",), False),
    ("/bin/check a,1 , yes", ("/bin/check", "a,1"), True),
    ("redis-cli ping", ("redis-cli", "ping"), False),
])
def test_a_command(raw, argv, ignore):
    assert parse_hook(raw) == HookCommand(argv, ignore)


@pytest.mark.parametrize("raw", ["mycoolapp.myplugins.check_redis", "hooks.my_hook.hook",
                                 "examples.demo.set_var, true", "check.sh", "  a.b  "])
def test_a_dotted_path_is_circus_s_callable(raw):
    with pytest.raises(ValueError) as caught:
        parse_hook(raw)
    message = str(caught.value)
    name = raw.split(",")[0].strip()
    assert f"{name!r} is a Python function" in message
    assert "watcher and arbiter objects" in message   # why it cannot be called
    assert "python3 -c" in message and f"./{name}" in message


@pytest.mark.parametrize("raw", ["", "   ", ", true", "'unclosed"])
def test_no_command(raw):
    with pytest.raises(ValueError):
        parse_hook(raw)


def test_in_a_config_with_env_substitution_and_timeout(tmp_path):
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent("""
        [watcher:web]
        cmd = /bin/true
        hooks.before_spawn = $(circus.env.TOOLS)/check --wid, true
        hook_timeout = 2.5
    """))
    web = load(str(path), environ={"PATH": "/bin", "TOOLS": "/opt/tools"}).watchers["web"]
    assert web.hooks == {"before_spawn": HookCommand(("/opt/tools/check", "--wid"), True)}
    assert web.hook_timeout == 2.5


@pytest.mark.parametrize("line, key, says", [
    ("hooks.before_spawn = app.hooks.check", "hooks.before_spawn", "is a Python function"),
    ("hooks.befor_spawn = /bin/true", "hooks.befor_spawn", "unknown hook"),
    ("hook_timeout = 0", "hook_timeout", "must be a number of seconds"),
])
def test_refused_with_file_section_key(tmp_path, line, key, says):
    path = tmp_path / "circus.ini"
    path.write_text(f"[watcher:web]\ncmd = /bin/true\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path), environ={"PATH": "/bin"})
    assert (caught.value.section, caught.value.key) == ("watcher:web", key)
    assert str(caught.value).startswith(f"{path}: [watcher:web]: {key}: ")
    assert says in str(caught.value)
