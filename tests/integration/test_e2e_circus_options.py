"""Circus options real circus.ini files use (issue 11, items 4, 10, 13), on a real
sockvisor: what the worker actually receives (argv, PYTHONPATH, PATH), the order
watchers start and stop in, sockvisor's own pidfile and log file, the unix
socket's mode -- not only that `check` passes.

Configs are written as Circus users write them (Circus option names).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import wait_for
from control_helpers import control, ctl

pytestmark = pytest.mark.timeout(60)

# Records what it was given to OUT (argv, the environment that matters, whether
# the virtualenv's module is importable), appends "start NAME" to ORDER, tells
# sockvisor it is ready when asked to (NOTIFY_SOCKET), and on SIGTERM appends
# "stop NAME" and exits.
PROBE = r'''
import importlib.util, json, os, signal, socket, sys
args = sys.argv[1:]
def option(name):
    return args[args.index(name) + 1] if name in args else None
name = option("--name") or "probe"
def stop(signum, frame):
    if option("--order"):
        with open(option("--order"), "a") as order:
            order.write(f"stop {name}\n")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
if option("--order"):
    with open(option("--order"), "a") as order:
        order.write(f"start {name}\n")
if option("--out"):
    seen = {"argv": sys.argv, "pid": os.getpid(),
            "env": {key: os.environ.get(key) for key in ("PYTHONPATH", "PATH", "PWD",
                                                        "SOCKVISOR_WID", "LISTEN_FDS")},
            "venvmod": importlib.util.find_spec("venvmod") is not None}
    with open(option("--out") + ".tmp", "w") as handle:
        json.dump(seen, handle)
    os.rename(option("--out") + ".tmp", option("--out"))
if os.environ.get("NOTIFY_SOCKET"):
    address = os.environ["NOTIFY_SOCKET"]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", "\0" + address[1:] if address.startswith("@") else address)
while True:
    signal.pause()
'''


@pytest.fixture
def probe(tmp_path: Path) -> str:
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return f"{sys.executable} {path}"


def seen(path: Path) -> dict:
    wait_for(path.exists, 10, message=f"{path} written by the worker")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- item 10

def test_copy_path_gives_the_worker_sockvisors_sys_path(sockvisor, probe, tmp_path):
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {probe} --out {tmp_path}/app.json
        copy_env = true
        copy_path = true
        [watcher:plain]
        cmd = {probe} --out {tmp_path}/plain.json
    """)
    path = seen(tmp_path / "app.json")["env"]["PYTHONPATH"].split(os.pathsep)
    # `python -m sockvisor` in its directory: that directory first, as sys.path has it;
    # then what any sys.path of this interpreter has.
    assert path[0] == str(sv.directory)
    assert sysconfig.get_paths()["stdlib"] in path
    assert sysconfig.get_paths()["purelib"] in path
    # Without copy_env/copy_path: nothing (before, copy_path gave nothing either).
    assert seen(tmp_path / "plain.json")["env"]["PYTHONPATH"] is None


def test_virtualenv_is_loaded_as_circus_loads_it(sockvisor, probe, tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "src").mkdir()
    (venv / "src" / "venvmod.py").write_text("")
    (site / "venvmod.pth").write_text(f"{venv}/src\n")
    sockvisor(f"""
        [watcher:app]
        cmd = {probe} --out {tmp_path}/app.json
        virtualenv = {venv}
        copy_env = True
    """)
    worker = seen(tmp_path / "app.json")
    assert worker["env"]["PATH"].split(":")[0] == f"{venv}/bin"
    path = worker["env"]["PYTHONPATH"].split(os.pathsep)
    assert path[0] == f"{venv}/src" and path[-1] == str(site)
    assert worker["venvmod"], "the virtualenv's .pth package is importable in the worker"


def test_shell_runs_the_command_through_sh_with_substitutions(sockvisor, probe, tmp_path):
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0
        [watcher:app]
        cmd = {probe} --out {tmp_path}/app-$(circus.wid).json
        args = --fd $(circus.sockets.web) --name 'two words'
        shell = true
        numprocesses = 2
    """)
    for wid in ("1", "2"):
        worker = seen(tmp_path / f"app-{wid}.json")
        assert worker["argv"][1:] == ["--out", f"{tmp_path}/app-{wid}.json", "--fd", "3",
                                      "--name", "two words"]
        assert worker["env"]["SOCKVISOR_WID"] == wid and worker["env"]["LISTEN_FDS"] == "1"
        # /bin/sh ran it: dash exports PWD, which a worker without copy_env never has.
        assert worker["env"]["PWD"] is not None
    assert sv.proc.poll() is None


def test_priority_starts_highest_first_and_stops_in_reverse(sockvisor, probe, tmp_path):
    order = tmp_path / "order"
    sections = "".join(textwrap.dedent(f"""
        [watcher:{name}]
        cmd = {probe} --name {name} --order {order}
        priority = {priority}
        ready = notify
        min_uptime = 0.2
        """) for name, priority in (("low", 1), ("high", 10), ("middle", 5)))
    sv = sockvisor(sections)
    assert order.read_text().split("\n")[:3] == ["start high", "start middle", "start low"]
    assert sv.stop() == 0
    assert order.read_text().split("\n")[3:6] == ["stop low", "stop middle", "stop high"]


def test_reloadconfig_starts_added_watchers_by_priority(sockvisor, probe, tmp_path):
    """Watchers a reloadconfig adds start as at start-up: highest priority first,
    each ready before the next."""
    order = tmp_path / "order"
    sv = sockvisor(f"""
        [watcher:first]
        cmd = {probe} --name first --order {order}
    """)
    wait_for(lambda: order.exists() and order.read_text().split("\n")[0] == "start first", 10)
    added = "".join(textwrap.dedent(f"""
        [watcher:{name}]
        cmd = {probe} --name {name} --order {order}
        priority = {priority}
        ready = notify
        min_uptime = 0.2
        """) for name, priority in (("low", 1), ("high", 10), ("middle", 5)))
    sv.conf.write_text(sv.conf.read_text() + added)
    result = ctl(sv, "reloadconfig")
    assert result.returncode == 0, result
    assert order.read_text().split("\n")[1:4] == ["start high", "start middle", "start low"]


def test_autostart_false_waits_for_start(sockvisor, probe, tmp_path):
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {probe} --out {tmp_path}/web.json
        [watcher:later]
        cmd = {probe} --out {tmp_path}/later.json
        autostart = false
        [watcher:broken]
        cmd = {sys.executable} -c "raise SystemExit(3)"
        autostart = false
    """)
    seen(tmp_path / "web.json")
    # Ready without starting them: start_failure = exit does not apply to them.
    assert not (tmp_path / "later.json").exists()
    with control(sv) as client:
        assert client.status("later")["state"] == "stopped"
        assert client.status("broken")["state"] == "stopped"
    result = ctl(sv, "start", "later")
    assert result.returncode == 0, result
    assert seen(tmp_path / "later.json")["argv"][-1] == f"{tmp_path}/later.json"
    with control(sv) as client:
        client.wait_ready("later", 1)


def test_pidfile_written_after_binding_and_removed_at_exit(sockvisor, probe, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    pidfile = run / "circus.pid"
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {probe}
        sockets = web
    """, globals=f"pidfile = {pidfile}")
    assert pidfile.read_text() == f"{sv.pid}\n"
    assert [p.name for p in run.iterdir()] == ["circus.pid"]   # no temporary left
    assert sv.stop() == 0
    assert not pidfile.exists()


def test_logoutput_file_reopened_on_sigusr1(sockvisor, probe, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    logfile = logs / "circusd.log"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {probe}
    """, globals=f"logoutput = {logfile}", ready=False)
    wait_for(lambda: logfile.exists() and "sockvisor ready:" in logfile.read_text(), 15,
             message=lambda: f"ready in {logfile}\n{sv.describe()}")
    assert "sockvisor ready:" not in sv.log()
    logfile.rename(logs / "circusd.log.1")
    sv.signal(signal.SIGUSR1)
    wait_for(lambda: logfile.exists() and "reopening" in logfile.read_text(), 10,
             message=lambda: f"a new {logfile}\n{sv.describe()}")
    assert "reopening" not in (logs / "circusd.log.1").read_text()


def test_logoutput_dash_is_stdout(sockvisor, probe):
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {probe}
    """, globals="logoutput = -", ready=False)
    wait_for(lambda: "sockvisor ready:" in sv.stdout(), 15,
             message=lambda: f"ready on stdout\n{sv.describe()}")


# --------------------------------------------------------------------------- item 13

def test_socket_umask_sets_the_socket_files_mode(sockvisor, probe, tmp_path):
    path = tmp_path / "web.sock"
    sockvisor(f"""
        [socket:web]
        path = {path}
        umask = 007
        [watcher:web]
        cmd = {probe}
        sockets = web
    """)
    assert stat.S_IMODE(path.stat().st_mode) == 0o770


def test_stop_and_start_of_all_watchers_follow_priority(sockvisor, probe, tmp_path):
    """`stop` and `start` with no name, as circusctl sends them: Circus's order too."""
    order = tmp_path / "order"
    sections = "".join(textwrap.dedent(f"""
        [watcher:{name}]
        cmd = {probe} --name {name} --order {order}
        priority = {priority}
        ready = notify
        min_uptime = 0.2
        """) for name, priority in (("low", 1), ("high", 10)))
    sv = sockvisor(sections)
    order.write_text("")
    assert ctl(sv, "stop").returncode == 0
    assert order.read_text().split("\n")[:2] == ["stop low", "stop high"]
    assert ctl(sv, "start").returncode == 0
    assert order.read_text().split("\n")[2:4] == ["start high", "start low"]
