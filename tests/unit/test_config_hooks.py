"""Reading `hooks.NAME` (config/hooks.py): a command, Circus's `, BOOL` flag, and
the dotted path Circus configs contain: a Python callable (HookPython)."""

from __future__ import annotations

import textwrap

import pytest

from sockvisor.config import ConfigError, HookCommand, load
from sockvisor.config.hooks import parse_hook, parse_stats_hook
from sockvisor.config.model import HookPython

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


@pytest.mark.parametrize("raw, target, ignore", [
    ("mycoolapp.myplugins.check_redis", "mycoolapp.myplugins.check_redis", False),
    ("examples.demo.set_var, true", "examples.demo.set_var", True),
    ("examples.uwsgi_lossless_reload:clean_stop", "examples.uwsgi_lossless_reload:clean_stop",
     False),
    ("  a.b  ", "a.b", False),
    # A program named like a module is written with its path (./check.sh).
    ("check.sh", "check.sh", False),
])
def test_a_dotted_name_is_circus_s_python_callable(raw, target, ignore):
    assert parse_hook(raw) == HookPython(target, ignore)


@pytest.mark.parametrize("raw", ["a.b.", ".a.b", "a..b", "a:b:c", "1a.b", "a.b c"])
def test_what_is_not_a_dotted_name_is_a_command(raw):
    try:
        hook = parse_hook(raw)
    except ValueError:
        return
    assert isinstance(hook, HookCommand)


def test_extended_stats_takes_a_python_callable_only():
    assert parse_stats_hook("app.stats.more") == HookPython("app.stats.more")
    with pytest.raises(ValueError) as caught:
        parse_stats_hook("/usr/local/bin/more-stats")
    assert "only a Python function" in str(caught.value)


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
    ("hooks.extended_stats = /bin/true", "hooks.extended_stats", "not a Python callable"),
    ("hooks.befor_spawn = /bin/true", "hooks.befor_spawn", "unknown hook point"),
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


def test_keys_that_are_no_option_go_to_the_python_hooks(tmp_path):
    """Circus passes them to the hooks as watcher._options (the uwsgi example's
    stats_base_port); a misspelt option is still refused."""
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent("""
        [watcher:web]
        cmd = /bin/true
        hooks.after_spawn = app.hooks.children_started
        stats_base_port = 8090
    """))
    config = load(str(path), environ={"PATH": "/bin"})
    web = config.watchers["web"]
    assert web.hook_options == {"stats_base_port": "8090"}
    assert [w for w in config.warnings   # said, so a stray key is seen
            if "stats_base_port: not an option: passed to the Python hooks" in w]
    assert web.hooks["after_spawn"] == HookPython("app.hooks.children_started")

    path.write_text("[watcher:web]\ncmd = /bin/true\nhooks.after_spawn = app.h.f\n"
                    "workding_dir = /tmp\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path), environ={"PATH": "/bin"})
    assert caught.value.key == "workding_dir" and "working_dir" in str(caught.value)

    # Without a Python hook Circus ignores such a key, and so does sockvisor,
    # saying so.
    path.write_text("[watcher:web]\ncmd = /bin/true\nstats_base_port = 8090\n")
    config = load(str(path), environ={"PATH": "/bin"})
    assert config.watchers["web"].hook_options == {}
    assert [w for w in config.warnings if "stats_base_port: ignored: not an option" in w]


def test_with_a_python_hook_an_unset_variable_in_cmd_waits_for_spawn_time(tmp_path):
    """Circus's example10: before_spawn sets watcher.env['myvar'], cmd names
    $(circus.env.myvar).  Without a Python hook that is still an error at load."""
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent("""
        [watcher:vars]
        cmd = echo $(circus.env.myvar) $(circus.env.HOME)
        hooks.before_spawn = examples.demo.set_var
    """))
    web = load(str(path), environ={"PATH": "/bin", "HOME": "/home/x"}).watchers["vars"]
    assert web.args == ("$(circus.env.myvar)", "/home/x")

    path.write_text("[watcher:vars]\ncmd = echo $(circus.env.myvar)\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path), environ={"PATH": "/bin"})
    assert "myvar is not set" in str(caught.value)


def test_extended_stats_edits_keep_sockvisor_s_own_figures():
    """What an extended_stats hook sends back is merged (hooks.merge_extended_stats):
    new figures and additions to the children are kept; a figure of sockvisor's
    turned into another type, a child dropped or made up, is not."""
    from sockvisor.hooks import merge_extended_stats
    stats = {"pid": 10, "cpu": 1.5, "rss": 100, "cmdline": "uwsgi",
             "children": [{"pid": 11, "cpu": 0.5, "rss": 50}, {"pid": 12, "cpu": 0.0, "rss": 40}]}
    edited = {"pid": "x", "cpu": "lots", "rss": 7, "load": 3, "version": "2.0",
              "children": [{"pid": 11, "cpu": None, "requests": 9}, {"pid": 12, "status": "idle"}]}
    merged = merge_extended_stats(stats, edited)
    assert merged["pid"] == 10 and merged["cpu"] == 1.5 and merged["rss"] == 7
    assert merged["load"] == 3 and merged["version"] == "2.0"
    assert merged["children"] == [{"pid": 11, "cpu": 0.5, "rss": 50, "requests": 9},
                                  {"pid": 12, "cpu": 0.0, "rss": 40, "status": "idle"}]
    for children in ([{"pid": 11}], [{"pid": 11}, {"pid": 99}], "nope", [[11], {"pid": [12]}]):
        merged = merge_extended_stats(stats, {"children": children})
        assert merged["children"] == stats["children"]
