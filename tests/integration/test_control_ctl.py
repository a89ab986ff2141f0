"""End to end: `sockvisorctl` against a real sockvisor — exit codes, --json, -c CONF.

Exit status: 0 the command succeeded, 1 it failed (an error reply), 2 usage,
3 no sockvisor answered.  "Unreachable" must be said at once when there is
nothing to wait for: no socket file, or a stale one nobody listens on (left by
a killed sockvisor), instead of waiting out the timeout.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from conftest import _clean_env, free_port
from control_client_helpers import (bare_sockvisor, describe, endpoint_of,  # noqa: F401
                                    ok, run_ctl, run_ctl_alone)

WATCHER = """
[socket:web]
port = 0

[watcher:web]
cmd = {cmd}
sockets = web
graceful_timeout = 1
"""


def expect(returncode: int, *args: str, env: dict[str, str] | None = None,
           run=run_ctl):
    result = run(*args, env=env)
    assert result.returncode == returncode, describe(result)
    if returncode in (1, 2, 3):
        assert result.stderr.strip(), describe(result)
        assert "Traceback" not in result.stderr, describe(result)
    return result


@pytest.mark.timeout(60)
def test_exit_codes_and_json(sockvisor, scripts, tmp_path):
    sv = sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py")))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "worker.py")

    # 0: it worked.
    result = expect(0, "--endpoint", endpoint, "status")
    assert "web" in result.stdout and "active" in result.stdout
    result = expect(0, "--endpoint", endpoint, "list", "web")
    assert result.stdout.strip() == str(pid)

    # 1: the command failed; the reason is on stderr.
    result = expect(1, "--endpoint", endpoint, "list", "nope")
    assert "unknown watcher 'nope'" in result.stderr
    expect(1, "--endpoint", endpoint, "signal", "web", "SIGBOGUS")

    # 2: usage.
    env = {k: v for k, v in _clean_env().items() if k != "SOCKVISOR_ENDPOINT"}
    result = expect(2, "status", env=env, run=run_ctl_alone)
    assert "no endpoint" in result.stderr and "no running sockvisor" in result.stderr
    expect(2, "--endpoint", endpoint, "incr")                      # NAME missing
    expect(2, "--endpoint", endpoint, "incr", "web", "several")    # N not a number
    expect(2, "--endpoint", endpoint, "set", "web", "numprocesses")  # no VALUE
    expect(2, "--endpoint", endpoint, "signal", "web", "x", "HUP")   # PID not a number
    expect(2, "--endpoint", endpoint, "no-such-command")
    expect(2, "--endpoint", "not-an-endpoint", "status")
    expect(2, "--endpoint", "tcp://127.0.0.1", "status")            # no port

    # 3: nobody there -- said at once, not after the (10 s) default timeout.
    started = time.monotonic()
    result = expect(3, "--endpoint", f"ipc://{tmp_path}/missing", "status")
    assert "no such socket file" in result.stderr
    stale = tmp_path / "stale"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(str(stale))           # a socket file nobody listens on
    result = expect(3, "--endpoint", f"ipc://{stale}", "status")
    assert "stale" in result.stderr
    result = expect(3, "--endpoint", f"tcp://127.0.0.1:{free_port()}", "status")
    assert "nothing listens there" in result.stderr
    assert time.monotonic() - started < 5, "unreachable endpoints waited for the timeout"

    # --json: the raw reply, parseable, for successes and failures alike.
    result = expect(0, "--endpoint", endpoint, "--json", "numprocesses", "web")
    reply = json.loads(result.stdout)
    assert reply["status"] == "ok" and reply["numprocesses"] == 1
    result = run_ctl("--endpoint", endpoint, "--json", "list", "nope")
    assert result.returncode == 1, describe(result)
    reply = json.loads(result.stdout)
    assert reply["status"] == "error" and reply["errno"] == 3 and "nope" in reply["reason"]
    reply = json.loads(expect(0, "--endpoint", endpoint, "--json", "listsockets").stdout)
    assert [s["name"] for s in reply["sockets"]] == ["web"]
    # sockvisorctl's own options also after the command, as people type them;
    # one given before is not undone by the command's parser.
    reply = json.loads(expect(0, "listsockets", "--endpoint", endpoint, "--json").stdout)
    assert [s["name"] for s in reply["sockets"]] == ["web"]
    reply = json.loads(expect(0, "--endpoint", endpoint, "numprocesses", "web",
                              "--json", "--timeout", "5").stdout)
    assert reply["numprocesses"] == 1
    result = expect(0, "--json", "--endpoint", endpoint, "numprocesses", "web")
    assert json.loads(result.stdout)["numprocesses"] == 1

    # $SOCKVISOR_ENDPOINT when nothing else says where.
    result = expect(0, "numwatchers", env={**env, "SOCKVISOR_ENDPOINT": endpoint})
    assert result.stdout.strip() == "1"


def test_config_option_finds_an_explicit_endpoint(sockvisor, scripts):
    sv = sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py")))
    assert f"endpoint = {endpoint_of(sv)}" in sv.conf.read_text()
    result = expect(0, "-c", str(sv.conf), "numprocesses", "web")
    assert result.stdout.strip() == "1"
    result = expect(0, "-c", str(sv.conf), "incr", "web", "2")
    assert result.stdout.strip() == "3"
    assert ok(endpoint_of(sv), "numprocesses", {"name": "web"})["numprocesses"] == 3


def test_config_option_finds_the_default_endpoint(bare_sockvisor, scripts, tmp_path):
    sv = bare_sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py")))
    assert "endpoint" not in sv.conf.read_text()
    result = expect(0, "-c", str(sv.conf), "status")
    assert "web" in result.stdout and "active" in result.stdout
    # The same relative to the working directory the config was named from.
    result = run_ctl("-c", os.path.relpath(sv.conf), "numwatchers")
    assert result.returncode == 0 and result.stdout.strip() == "1", describe(result)
    # A config whose sockvisor is not running: unreachable, at once.
    other = tmp_path / "other.ini"
    other.write_text(WATCHER.format(cmd=scripts.cmd("worker.py")))
    result = expect(3, "-c", str(other), "status")
    assert "no such socket file" in result.stderr
    result = expect(2, "-c", str(tmp_path / "absent.ini"), "status")
    assert "absent.ini" in result.stderr
