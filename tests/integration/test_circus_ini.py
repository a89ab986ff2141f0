"""End to end: a config written the way real circus.ini files are, run by the real
sockvisor; what each worker actually receives (argv, environment, working
directory, user, wid).

Covers what sockvisor/circus_ini.py reads as Circus does: inline `; comments`, a
bare [env] section for every watcher under its own [env:NAME], `$(circus.env.X)`
in working_dir / numprocesses / uid / args with names in any case, and
`include` of a relative glob, with an error in an included file reported in
that file by `sockvisor check`.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from conftest import run_cli, wait_for

pytestmark = pytest.mark.timeout(60)

SYSTEM_PYTHON = "/usr/bin/python3"

PROBE = r'''
"""Record what sockvisor handed us into the JSON file named by argv[1], then wait."""
import json, os, signal, sys

out = sys.argv[1]
seen = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
        "uid": os.getuid()}
with open(out + ".tmp", "w") as handle:
    json.dump(seen, handle)
os.rename(out + ".tmp", out)
while True:
    signal.pause()
'''


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the worker runs as nobody")
def test_circus_style_config_reaches_the_workers(world_readable_dir, sockvisor, tmp_path):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not available for the unprivileged worker")
    app = world_readable_dir
    (app / "probe.py").write_text(PROBE)
    (app / "probe.py").chmod(0o644)
    out = app / "out"
    out.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(out, nobody.pw_uid, nobody.pw_gid)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    # An included file, found by a glob relative to the including file.
    (conf_d / "worker.ini").write_text(f"""\
[watcher:worker]
cmd = {SYSTEM_PYTHON} -u $(circus.env.APP_HOME)/probe.py   ; the same probe
args = $(circus.env.APP_HOME)/out/worker.json
working_dir = $(circus.env.app_home)
""")

    sv = sockvisor(f"""
        [env]
        APP_HOME = {app}        ; the application's folder
        MODE = shared
        web_num = 2

        [socket:web]
        host = 127.0.0.1        ; loopback only
        port = 0                ; the kernel picks

        [watcher:web]
        cmd = {SYSTEM_PYTHON} ; Debian's, readable by nobody
        args = -u $(CIRCUS.ENV.APP_HOME)/probe.py $(circus.env.APP_HOME)/out/web.$(CIRCUS.WID).json --home $(Circus.Env.Home) --workers 4 ; four
        working_dir = $(circus.env.APP_HOME)
        numprocesses = $(circus.env.web_num)    ; from [env]
        uid = nobody ; the user
        use_sockets = True      ; every socket

        [env:web]
        MODE = web
    """, globals="include = ../conf.d/*.ini")

    web = [wait_for(lambda wid=wid: _read(out / f"web.{wid}.json"), 15,
                    message=lambda: f"web worker {wid}'s report\n{sv.describe()}")
           for wid in (1, 2)]
    worker = wait_for(lambda: _read(out / "worker.json"), 15,
                      message=lambda: f"the included watcher's report\n{sv.describe()}")

    for wid, seen in zip((1, 2), web):
        assert seen["argv"] == [f"{app}/out/web.{wid}.json", "--home", os.environ["HOME"],
                                "--workers", "4"]
        assert seen["cwd"] == str(app)
        assert seen["uid"] == nobody.pw_uid
        assert seen["env"]["MODE"] == "web"           # [env:web] over [env]
        assert seen["env"]["APP_HOME"] == str(app)    # [env] for every watcher
        assert seen["env"]["SOCKVISOR_WID"] == str(wid)
        assert seen["env"]["LISTEN_FDS"] == "1"
    assert len(sv.worker_pids("/out/web.")) == 2

    assert worker["argv"] == [f"{app}/out/worker.json"]
    assert worker["cwd"] == str(app)
    assert worker["uid"] == 0
    assert worker["env"]["MODE"] == "shared"
    assert worker["env"]["APP_HOME"] == str(app)


def test_check_names_the_included_file(tmp_path):
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    included = conf_d / "web.ini"
    included.write_text("[watcher:web]\ncmd = /bin/sleep 1\nworking_dir = "
                        "$(circus.env.NOT_SET_ANYWHERE)/app   ; where the app lives\n")
    main = tmp_path / "circus.ini"
    main.write_text("[circus]\nendpoint = ipc://{}/ctl\ninclude_dir = conf.d\n"
                    .format(tmp_path))
    result = run_cli("check", str(main), cwd="/")
    assert result.returncode == 2, result
    assert (f"{included}: [watcher:web]: working_dir: $(circus.env.NOT_SET_ANYWHERE): "
            "NOT_SET_ANYWHERE is not set") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    included.write_text("[watcher:web]\ncmd = /bin/sleep 1  ; sleeps\n"
                        "working_dir = $(CIRCUS.ENV.HOME)\n")
    result = run_cli("check", str(main), cwd="/")
    assert result.returncode == 0, result
