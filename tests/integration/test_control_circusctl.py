"""End to end: Circus 0.19's own `circusctl` drives sockvisor.

The control channel keeps Circus's message shapes (one JSON frame each way, the
same property and reply keys, Circus's errnos), so circusctl -- a client we did
not write -- works unchanged: every command exits 0 and prints what circusctl
prints for Circus itself.

Importing circusctl (tornado, Circus) costs most of a second of CPU, and the
test runs some twenty commands, so they go through one `CircusShell`: a Python
process that imports `circus.circusctl` once and, for each line it reads, runs
its `main()` with `sys.argv = ["circusctl", "--endpoint", E, "--timeout", "5",
*ARGS]`, reporting the exit status (SystemExit) and what it printed.  That is
circusctl's whole code path (argument parsing, its client, its printing); the
installed `circusctl` script itself runs as a process in the error test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import _clean_env, wait_for
from control_client_helpers import describe, endpoint_of, ok, pids_of, port_of

pytest.importorskip("circus", reason="Circus 0.19 (circusctl) is not installed")

SHELL = r"""
import contextlib, io, json, sys
from circus.circusctl import main

for line in sys.stdin:
    argv = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = ["circusctl", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.__stdout__.write(json.dumps({"code": code, "stdout": out.getvalue(),
                                     "stderr": err.getvalue()}) + "\n")
    sys.__stdout__.flush()
"""


class CircusShell:
    """circusctl's main(), once per command, in one long-lived interpreter."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.process = subprocess.Popen([sys.executable, "-c", SHELL], env=_clean_env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        argv = ["--endpoint", self.endpoint, "--timeout", "5", *args]
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the circusctl shell died"
        result = json.loads(line)
        return subprocess.CompletedProcess(["circusctl", *argv], result["code"],
                                           result["stdout"], result["stderr"])

    def __call__(self, *args: str) -> str:
        """Run `circusctl ARGS`, which must exit 0 without an error; its output."""
        result = self.run(*args)
        assert result.returncode == 0, describe(result)
        assert "error" not in result.stdout.lower(), describe(result)
        return result.stdout.strip()

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def circusctl_for():
    shells: list[CircusShell] = []

    def make(endpoint: str) -> CircusShell:
        shells.append(CircusShell(endpoint))
        return shells[-1]
    yield make
    for shell in shells:
        shell.close()


@pytest.mark.timeout(60)
def test_circusctl_drives_sockvisor(sockvisor, scripts, circusctl_for):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--report-signals")}
        sockets = web
        numprocesses = 2
        graceful_timeout = 1
        min_uptime = 0
    """)
    endpoint = endpoint_of(sv)
    pids = sv.wait_workers(2, "worker.py")
    port = port_of(endpoint, "web")
    circusctl = circusctl_for(endpoint)

    out = {" ".join(args): circusctl(*args) for args in [
        ["list"], ["list", "web"], ["status"], ["status", "web"], ["numwatchers"],
        ["numprocesses"], ["numprocesses", "web"], ["listsockets"], ["stats"],
        ["stats", "web"], ["dstats"], ["options", "web"],
        ["get", "web", "numprocesses", "graceful_timeout"]]}
    assert out["list"] == "web"
    assert sorted(int(p) for p in out["list web"].split(",")) == pids
    assert out["status"] == "web: active"
    assert out["status web"] == "active"
    assert out["numwatchers"] == "1"
    assert out["numprocesses"] == "2"
    assert out["numprocesses web"] == "2"
    assert f"socket 'web' at 127.0.0.1:{port}" in out["listsockets"]
    for pid in pids:
        assert str(pid) in out["stats"] and str(pid) in out["stats web"]
    assert out["stats"].startswith("web:")
    assert str(sv.pid) in out["dstats"]
    assert "numprocesses: 2" in out["options web"].splitlines()
    assert "graceful_timeout: 1.0" in out["options web"].splitlines()
    assert out["get web numprocesses graceful_timeout"].splitlines() == [
        "numprocesses: 2", "graceful_timeout: 1.0"]

    # Scaling.
    assert circusctl("incr", "web") == "3"
    assert ok(endpoint, "numprocesses", {"name": "web"})["numprocesses"] == 3
    assert circusctl("decr", "web") == "2"
    assert len(sv.wait_workers(2, "worker.py")) == 2

    # set / get.
    assert circusctl("set", "web", "graceful_timeout", "2") == "ok"
    assert ok(endpoint, "get", {"name": "web", "keys": ["graceful_timeout"]}
              )["options"]["graceful_timeout"] == 2.0
    assert circusctl("set", "web", "numprocesses", "3") == "ok"
    assert len(sv.wait_workers(3, "worker.py")) == 3
    assert circusctl("set", "web", "numprocesses", "2",
                     "graceful_timeout", "1") == "ok"
    pids = sv.wait_workers(2, "worker.py")

    # signal: the workers report it (and exit; they are replaced).
    assert circusctl("signal", "web", "HUP") == "ok"
    wait_for(lambda: sv.stdout().count("got SIGHUP") >= 2, 10,
             message=lambda: f"both workers to report SIGHUP\n{sv.describe()}")
    pids = sv.wait_workers(2, "worker.py", exclude=pids)

    # stop / start / restart.
    assert circusctl("stop", "web") == "ok"
    assert ok(endpoint, "status", {"name": "web"})["status"] == "stopped"
    assert pids_of(endpoint, "web") == []
    assert circusctl("start", "web") == "ok"
    assert ok(endpoint, "status", {"name": "web"})["status"] == "active"
    pids = sv.wait_workers(2, "worker.py")
    assert circusctl("restart", "web") == "ok"
    pids = sv.wait_workers(2, "worker.py", exclude=pids)

    # reload: circusctl does not wait (waiting=false): the reload goes on in the
    # background and replaces both workers.
    generation = ok(endpoint, "status", {"name": "web"})["watcher"]["generation"]
    assert circusctl("reload", "web") == "ok"
    wait_for(lambda: ok(endpoint, "status", {"name": "web"})["watcher"]["generation"]
             > generation, 10, message="the background reload to start")
    pids = sv.wait_workers(2, "worker.py", exclude=pids)
    wait_for(lambda: ok(endpoint, "status", {"name": "web"})["status"] == "active", 10)

    # reloadconfig: the file did not change, nothing does.
    assert circusctl("reloadconfig") == "ok"
    assert sorted(pids_of(endpoint, "web")) == pids
    assert sv.http_get(port)["pid"] in pids

    # quit: sockvisor stops cleanly.
    assert circusctl("quit") == "ok"
    assert sv.wait_exit(15) == 0


def test_circusctl_prints_sockvisor_errors(sockvisor, scripts):
    """The installed `circusctl` script, as a process: a good command exits 0, an
    error reply is printed as for Circus (exit status 3)."""
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("worker.py")} --no-serve
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    script = shutil.which("circusctl")
    command = ([script] if script else
               [sys.executable, "-c", "from circus.circusctl import main; main()"])
    result = subprocess.run([*command, "--endpoint", endpoint, "--timeout", "5",
                             "numprocesses", "web"],
                            env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "1", describe(result)
    result = subprocess.run([*command, "--endpoint", endpoint, "--timeout", "5",
                             "numprocesses", "nope"],
                            env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, describe(result)
    assert "unknown watcher 'nope'" in result.stderr
