"""Unit tests: INI files read as Circus 0.19 reads them (sockvisor/circus_ini.py, via
`config.load`): inline comments, the bare [env] section, `$(circus.env.X)` in every
value and case-insensitive substitution names, and `include` / `include_dir`.

Configs are written the way real Circus deployments write them (Circus option names,
[circus], [env], comments after values).  Pure logic: files in `tmp_path`, the
environment passed with `environ=`; nothing is bound or spawned.  What a worker
then receives is checked end to end in tests/integration/test_circus_ini.py.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sockvisor.config import ConfigError, OutputKind, load

pytestmark = pytest.mark.timeout(10)

IS_ROOT = os.geteuid() == 0
ENVIRON = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/tester", "LANG": "C.UTF-8"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
              name: str = "circus.ini"):
    return load(str(write(tmp_path / name, text)), environ=ENVIRON if environ is None
                else environ)


def load_fails(tmp_path: Path, text: str, environ: dict[str, str] | None = None
               ) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value


# --------------------------------------------------------------------------- inline comments

@pytest.mark.parametrize("raw, value", [
    ("80    ; 0: the kernel picks", "80"),
    ("--workers 4 ; four", "--workers 4"),
    ("pi\t; tab before it", "pi"),
    ("a;b ; c", "a;b ; c"),              # Circus looks at the first `;` only
    ("a ;b ;c", "a"),
    ("x # not a comment", "x # not a comment"),
    ("x#y", "x#y"),
    ('""', ""),
    ('"" ; empty', ""),
    ("; all comment", "; all comment"),  # value[-1] before a leading `;`: Circus's quirk
    ("; all comment ", ""),
])
def test_inline_comment_rule(raw, value):
    from sockvisor import circus_ini
    assert circus_ini.strip_inline_comment(raw) == value


def test_inline_comments_do_not_reach_values(tmp_path):
    config = load_text(tmp_path, """
        [circus]
        loglevel = debug        ; chatty

        [socket:web]
        host = 127.0.0.1        ; loopback only
        port = 80    ; 0: the kernel picks; listsockets shows the real port

        [watcher:web]
        cmd = /usr/bin/python3 ; the interpreter
        args = --workers 4 ; four
        numprocesses = 2        ; two of them
        use_sockets = True      ; all of them
        """)
    web = config.watchers["web"]
    assert web.argv() == ["/usr/bin/python3", "--workers", "4"]
    assert web.numprocesses == 2
    assert web.sockets == ("web",)
    assert config.sockets["web"].port == 80
    assert config.globals.loglevel == "debug"


@pytest.mark.skipif(not IS_ROOT, reason="switching to another user needs root")
def test_inline_comment_after_uid(tmp_path):
    web = load_text(tmp_path, """
        [watcher:web]
        cmd = /bin/sleep 1
        uid = nobody ; the user
        """).watchers["web"]
    assert web.user == "nobody"


def test_comment_lines_and_continuations(tmp_path):
    web = load_text(tmp_path, """
        ; a comment
        # another
        rem and Circus's third kind
        [watcher:web]
        cmd = /bin/sleep
        args = 1
           2 ; kept: Circus strips comments on the first line only
           ; an indented comment line
        """).watchers["web"]
    assert web.args == ("1", "2", ";", "kept:", "Circus", "strips", "comments", "on",
                        "the", "first", "line", "only")


# --------------------------------------------------------------------------- [env]

def test_bare_env_section_reaches_every_watcher_under_its_own(tmp_path):
    config = load_text(tmp_path, """
        [env]
        DJANGO_SETTINGS_MODULE = app.settings
        MODE = shared

        [watcher:web]
        cmd = /bin/sleep 1

        [watcher:worker]
        cmd = /bin/sleep 1

        [env:worker]
        MODE = worker
        """)
    assert config.watchers["web"].env["DJANGO_SETTINGS_MODULE"] == "app.settings"
    assert config.watchers["web"].env["MODE"] == "shared"
    assert config.watchers["worker"].env["DJANGO_SETTINGS_MODULE"] == "app.settings"
    assert config.watchers["worker"].env["MODE"] == "worker"


def test_env_section_patterns_reach_the_watchers_they_match(tmp_path):
    """Circus's [env:web*]: fnmatch on watcher names, sections applied in file
    order; a pattern that matches nothing is a warning, a plain name that names
    no watcher still an error (a typo)."""
    text = """
        [watcher:web-1]
        cmd = /bin/sleep 1

        [watcher:web-2]
        cmd = /bin/sleep 1

        [watcher:worker]
        cmd = /bin/sleep 1

        [env:web-*]
        ROLE = web

        [env:*, worker]
        SHARED = yes

        [env:web-2]
        ROLE = second

        [env:cron-?]
        ROLE = cron
        """
    path = write(tmp_path / "circus.ini", text)
    config = load(str(path), environ=ENVIRON)
    watchers = config.watchers
    assert watchers["web-1"].env["ROLE"] == "web"
    assert watchers["web-2"].env["ROLE"] == "second"
    assert "ROLE" not in watchers["worker"].env
    assert all(w.env["SHARED"] == "yes" for w in watchers.values())
    assert any("[env:cron-?]" in w and "matches no watcher" in w for w in config.warnings)
    error = load_fails(tmp_path, "[watcher:web]\ncmd = /bin/true\n[env:wbe]\nA = 1\n")
    assert error.section == "env:wbe" and "no [watcher:wbe]" in str(error)


def test_bare_env_feeds_substitutions_everywhere(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = load_text(tmp_path, f"""
        [env]
        RUN = {run}
        APP = $(circus.env.HOME)/app

        [socket:web]
        path = $(circus.env.RUN)/web.sock

        [watcher:web]
        cmd = /bin/echo $(circus.env.APP)
        use_sockets = true
        """)
    assert config.sockets["web"].path == f"{run}/web.sock"
    assert config.watchers["web"].args == ("/home/tester/app",)
    assert config.watchers["web"].env["APP"] == "/home/tester/app"


def test_bare_env_bad_name_names_the_section(tmp_path):
    error = load_fails(tmp_path, """
        [env]
        NOT-A-NAME = 1
        [watcher:web]
        cmd = /bin/sleep 1
        """)
    assert error.section == "env" and error.key == "NOT-A-NAME", error


# --------------------------------------------------------------------------- $(circus.env.X)

def test_env_substitution_in_every_value(tmp_path):
    app = tmp_path / "app"
    (app / "log").mkdir(parents=True)
    config = load_text(tmp_path, """
        [watcher:rq]
        cmd = /bin/sleep 1
        working_dir = $(circus.env.APP_HOME)
        numprocesses = $(circus.env.rqworker_num)
        stdout_stream.class = FileStream
        stdout_stream.filename = $(circus.env.APP_HOME)/log/rq.log
        graceful_timeout = $(circus.env.GRACE)
        """, environ={**ENVIRON, "APP_HOME": str(app), "rqworker_num": "3", "GRACE": "7"})
    rq = config.watchers["rq"]
    assert rq.working_dir == str(app)
    assert rq.numprocesses == 3
    assert rq.stdout.kind == OutputKind.FILE and rq.stdout.path == f"{app}/log/rq.log"
    assert rq.graceful_timeout == 7.0


@pytest.mark.skipif(not IS_ROOT, reason="switching to another user needs root")
def test_env_substitution_in_uid(tmp_path):
    web = load_text(tmp_path, """
        [watcher:web]
        cmd = /bin/sleep 1
        uid = $(circus.env.APP_USER)
        """, environ={**ENVIRON, "APP_USER": "nobody"}).watchers["web"]
    assert web.user == "nobody"


def test_substitution_names_ignore_case(tmp_path):
    config = load_text(tmp_path, """
        [socket:Web]
        port = 0

        [watcher:web]
        cmd = /bin/echo $(CIRCUS.ENV.HOME) $(circus.env.home) $(Sockvisor.Env.Home)
        args = --wid $(CIRCUS.WID) --fd $(circus.SOCKETS.WEB) ((circus.env.lang))
        """)
    web = config.watchers["web"]
    assert web.args == ("/home/tester",) * 3 + (
        "--wid", "$(circus.wid)", "--fd", "$(circus.sockets.Web)", "C.UTF-8")
    assert web.sockets == ("Web",)


def test_case_folded_names_last_set_wins(tmp_path):
    """Circus folds every name to lower case; of two that collide, the one set
    later (the watcher's own env after sockvisor's) wins."""
    web = load_text(tmp_path, """
        [watcher:web]
        cmd = /bin/echo $(circus.env.HOME)
        [env:web]
        home = /from/the/watcher
        """).watchers["web"]
    assert web.args == ("/from/the/watcher",)


def test_typed_keys_see_the_global_env_as_in_circus(tmp_path):
    """Circus converts numprocesses as it reads it, before the watcher's own env
    is merged: [env] counts, [env:NAME] does not."""
    config = load_text(tmp_path, """
        [env]
        N = 2
        [watcher:web]
        cmd = /bin/echo $(circus.env.N)
        numprocesses = $(circus.env.N)
        [env:web]
        N = 5
        """)
    web = config.watchers["web"]
    assert web.numprocesses == 2
    assert web.args == ("5",)


@pytest.mark.parametrize("body, key", [
    ("working_dir = $(circus.env.NOPE)/app", "working_dir"),
    ("numprocesses = $(circus.env.rqworker_num)", "numprocesses"),
    ("stdout_stream.filename = $(circus.env.LOGS)/x.log", "stdout_stream.filename"),
])
def test_unset_variable_is_located(tmp_path, body, key):
    error = load_fails(tmp_path, f"[watcher:web]\ncmd = /bin/sleep 1\n{body}\n")
    assert (error.section, error.key) == ("watcher:web", key), error
    assert "is not set" in str(error) and str(tmp_path) in str(error)


def test_unknown_substitution_in_any_key_is_located(tmp_path):
    error = load_fails(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\n"
                                 "working_dir = /srv/$(circus.pid)\n")
    assert (error.section, error.key) == ("watcher:web", "working_dir"), error
    assert "unknown substitution $(circus.pid)" in str(error)


# --------------------------------------------------------------------------- include

def test_include_globs_are_relative_to_the_including_file(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    write(etc / "conf.d" / "web.ini", """
        [watcher:web]
        cmd = /bin/echo $(circus.env.GREETING)
        """)
    write(etc / "more" / "worker.ini", """
        [watcher:worker]
        cmd = /bin/sleep 1
        """)
    write(etc / "more" / "notes.txt", "[watcher:ignored]\ncmd = x\n")
    main = write(etc / "circus.ini", """
        [circus]
        include = conf.d/*.ini
        include_dir = more

        [env]
        GREETING = hello
        """)
    monkeypatch.chdir(tmp_path)   # not the config's folder
    config = load(str(main), environ=ENVIRON)
    assert sorted(config.watchers) == ["web", "worker"]
    assert config.watchers["web"].args == ("hello",)
    assert config.warnings == ()


def test_include_first_read_wins_and_sections_merge(tmp_path):
    write(tmp_path / "extra.ini", """
        [watcher:web]
        cmd = /bin/false
        numprocesses = 3
        """)
    config = load_text(tmp_path, """
        [circus]
        include = extra.ini

        [watcher:web]
        cmd = /bin/true
        """)
    web = config.watchers["web"]
    assert web.cmd == "/bin/true"
    assert web.numprocesses == 3
    assert any("extra.ini: [watcher:web] cmd: ignored: already set in" in warning
               for warning in config.warnings), config.warnings


def test_include_matching_nothing_warns(tmp_path):
    config = load_text(tmp_path, """
        [circus]
        include = missing/*.ini
        [watcher:web]
        cmd = /bin/true
        """)
    assert any("include:" in warning and "matches no file" in warning
               for warning in config.warnings), config.warnings


def test_include_in_an_included_file_is_not_followed(tmp_path):
    write(tmp_path / "a.ini", "[circus]\ninclude = b.ini\n[watcher:a]\ncmd = /bin/true\n")
    write(tmp_path / "b.ini", "[watcher:b]\ncmd = /bin/true\n")
    config = load_text(tmp_path, "[circus]\ninclude = a.ini\n")
    assert sorted(config.watchers) == ["a"]
    assert any("a.ini: [circus] include: ignored" in warning
               for warning in config.warnings), config.warnings


def test_errors_in_an_included_file_name_that_file(tmp_path):
    included = write(tmp_path / "conf.d" / "web.ini", """
        [watcher:web]
        cmd = /bin/true
        numprocesss = 2
        """)
    error = load_fails(tmp_path, "[circus]\ninclude_dir = conf.d\n")
    assert error.path == str(included), error
    assert (error.section, error.key) == ("watcher:web", "numprocesss")

    write(tmp_path / "conf.d" / "web.ini", "[watcher:web]\ncmd /bin/true\n")
    error = load_fails(tmp_path, "[circus]\ninclude_dir = conf.d\n")
    assert str(error).startswith(f"{included}: cannot parse line(s) 2"), error

    write(tmp_path / "conf.d" / "web.ini", "[watcher:web]\ncmd = /bin/true\n"
                                          "working_dir = $(circus.env.NOPE)\n")
    error = load_fails(tmp_path, "[circus]\ninclude_dir = conf.d\n")
    assert error.path == str(included) and error.key == "working_dir", error


def test_a_directory_matched_by_include_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "conf.d" / "odd.ini").mkdir(parents=True)
    config = load_text(tmp_path, "[circus]\ninclude_dir = conf.d\n"
                                 "[watcher:web]\ncmd = /bin/true\n")
    assert any("is a directory" in warning for warning in config.warnings)


def test_an_evenly_indented_file_reads_as_configparser_reads_it(tmp_path):
    """Keys indented like their section headers are keys, not continuations;
    a deeper line continues the key above."""
    path = tmp_path / "indented.ini"
    path.write_text("    [watcher:web]\n    cmd = /bin/echo\n    args = a\n      b\n"
                    "    numprocesses = 2\n")
    web = load(str(path), environ=ENVIRON).watchers["web"]
    assert web.args == ("a", "b") and web.numprocesses == 2


def test_unset_variable_in_cmd_waits_for_a_python_hook(tmp_path):
    """Circus resolves cmd/args again at spawn time (a hook may have set the
    variable by then): with a Python hook in the same watcher the variable is
    left for spawn time (launcher.py), in any spelling; without one, it is an
    error at load."""
    web = load_text(tmp_path, "[watcher:vars]\ncmd = /bin/echo $(CIRCUS.ENV.myvar)\n"
                              "hooks.before_spawn = examples.demo.set_var\n").watchers["vars"]
    assert web.args == ("$(circus.env.myvar)",)
    error = load_fails(tmp_path, "[watcher:vars]\ncmd = /bin/echo $(CIRCUS.ENV.myvar)\n")
    assert error.key == "cmd" and "myvar is not set" in str(error), error
    # A command hook cannot set it: still an error.
    error = load_fails(tmp_path, "[watcher:vars]\ncmd = /bin/echo $(circus.env.myvar)\n"
                                 "hooks.before_spawn = /bin/true\n")
    assert error.key == "cmd" and "myvar is not set" in str(error), error


# --------------------------------------------------------------------------- include: who wrote it

@pytest.mark.skipif(not IS_ROOT, reason="gives files to nobody")
@pytest.mark.parametrize("who", ["folder", "file", "file-mode"])
def test_an_include_another_user_can_write_is_refused(tmp_path, who):
    """The attack: whoever can write an included file (or its folder) decides what
    sockvisor, as root, runs: a watcher without uid runs as root."""
    nobody = 65534
    conf_d = tmp_path / "conf.d"
    included = write(conf_d / "evil.ini", "[watcher:evil]\ncmd = /bin/true\n")
    if who == "folder":
        os.chown(conf_d, nobody, nobody)
    elif who == "file":
        os.chown(included, nobody, nobody)
    else:
        included.chmod(0o666)
    error = load_fails(tmp_path, "[circus]\ninclude_dir = conf.d\n"
                                 "[watcher:web]\ncmd = /bin/true\n")
    assert (error.section, error.key) == ("circus", "include_dir"), error
    assert str(included) in str(error) and "root" in str(error), error


@pytest.mark.skipif(not IS_ROOT, reason="the check is about root's trust")
def test_an_include_linked_from_a_root_folder_is_read(tmp_path):
    real = write(tmp_path / "shared" / "web.ini", "[watcher:web]\ncmd = /bin/true\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "web.ini").symlink_to(real)
    config = load_text(tmp_path, "[circus]\ninclude_dir = conf.d\n")
    assert list(config.watchers) == ["web"]


# --------------------------------------------------------------------------- keys Circus ignores

def test_a_key_circus_ignores_loads_with_a_warning_a_misspelling_does_not(tmp_path):
    """Circus reads keys it does not know and ignores them; sockvisor does the
    same and says so (with a hint when one is close), but a key that is an
    option misspelt -- Circus would silently run the worker elsewhere -- stays
    an error."""
    config = load_text(tmp_path, """
        [circus]
        host = 0.0.0.0
        statsd_host = 0.0.0.0

        [watcher:web]
        cmd = /bin/sleep 1
        RUBY_GC_MALLOC_LIMIT=90000000
        max_retries = 3
        """)
    warnings = "\n".join(config.warnings)
    for section, key in (("circus", "host"), ("circus", "statsd_host"),
                         ("watcher:web", "RUBY_GC_MALLOC_LIMIT"), ("watcher:web", "max_retries")):
        assert f"[{section}] {key}: ignored: not an option (Circus ignores it too)" in warnings
    assert "max_retries: ignored: not an option (Circus ignores it too) (did you mean " \
           "'max_retry'?)" in warnings
    assert "RUBY_GC_MALLOC_LIMIT" not in config.watchers["web"].env
    for key, near in (("workding_dir = /tmp", "working_dir"), ("numprocess = 2", "numprocesses"),
                      ("graceful_timout = 3", "graceful_timeout"),
                      # Ignored, these would run the worker as root: misspellings
                      # of who it runs as are errors even when less alike.
                      ("ui = nobody", "uid"), ("setuid = nobody", "uid"),
                      ("username = nobody", "user"),
                      ("grp = nogroup", "group"), ("rlimit_nofiles = 10", "rlimit_nofile")):
        error = load_fails(tmp_path, f"[watcher:web]\ncmd = /bin/sleep 1\n{key}\n")
        assert error.key == key.split(" = ")[0] and f"did you mean {near!r}" in str(error)
    for key, near in (("onwer = nobody", "owner"), ("umaks = 0", "umask"), ("grp = 0", "group")):
        error = load_fails(tmp_path, f"[socket:web]\npath = {tmp_path}/s.sock\n{key}\n")
        assert error.key == key.split(" = ")[0] and f"did you mean {near!r}" in str(error), error


@pytest.mark.parametrize("extra, kind, delay, timeout", [
    ("warmup_delay = 10", "delay", 10.0, 60.0),
    ("warmup_delay = 45", "delay", 45.0, 90.0),
    ("warmup_delay = 10\nready_timeout = 20", "delay", 10.0, 20.0),
    ("warmup_delay = 0", "started", 0.0, 60.0),
    ("warmup_delay = 10\nready = notify", "notify", 0.0, 60.0),
])
def test_warmup_delay_is_a_ready_delay(tmp_path, extra, kind, delay, timeout):
    """Circus's warmup_delay: each worker is given that long before the start goes
    on; here it counts as ready once it lived that long (unless `ready` says how)."""
    config = load_text(tmp_path, f"[watcher:web]\ncmd = /bin/sleep 1\n{extra}\n")
    ready = config.watchers["web"].ready
    assert (ready.kind.value, ready.delay, ready.timeout) == (kind, delay, timeout)
    if "ready = notify" in extra:
        assert any("warmup_delay: ignored: ready is given" in w for w in config.warnings)
    error = load_fails(tmp_path, "[watcher:web]\ncmd = /bin/sleep 1\nwarmup_delay = 30\n"
                                 "ready_timeout = 20\n")
    assert error.key == "warmup_delay" and "shorter than ready_timeout" in str(error)


def test_relative_paths_are_read_from_sockvisor_s_directory_as_circus_reads_them(
        tmp_path, monkeypatch):
    """circusd opens a relative pidfile, logoutput, ipc:// endpoint, stream file
    or working_dir from its own working directory; so does sockvisor, saying
    which absolute path it took."""
    root = tmp_path / "app"
    (root / "run").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "src").mkdir()
    for folder in (tmp_path, root, root / "run", root / "logs"):
        folder.chmod(0o755)
    monkeypatch.chdir(root)
    config = load_text(tmp_path, """
        [circus]
        endpoint = ipc://run/circusd.sock
        pidfile = run/circusd.pid
        logoutput = logs/circusd.log

        [watcher:web]
        cmd = /bin/sleep 1
        working_dir = src
        stdout_stream.class = FileStream
        stdout_stream.filename = logs/web.log
        """)
    g, web = config.globals, config.watchers["web"]
    assert g.endpoint == f"ipc://{root}/run/circusd.sock"
    assert (g.pidfile, g.logoutput) == (f"{root}/run/circusd.pid", f"{root}/logs/circusd.log")
    assert web.working_dir == f"{root}/src"
    assert web.stdout.path == f"{root}/logs/web.log"
    warnings = "\n".join(config.warnings)
    for key, path in (("endpoint", "run/circusd.sock"), ("pidfile", "run/circusd.pid"),
                      ("working_dir", "src"), ("stdout_stream.filename", "logs/web.log")):
        assert f"{key}: {path!r} is relative: read as {root}/{path}" in warnings, key
