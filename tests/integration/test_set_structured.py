"""End to end: `set` and `reloadconfig` change what they say, and nothing else.

`set` merges the changed options into the watcher's structured config; before,
it wrote every option back as INI text and parsed it again, so an env value with
a comma (`LIST = a,DEBUG=1`) came back as two variables, and one such as
`JAVA_OPTS = -Xmx1g,-Dfoo=bar` made every `set` fail.  What a worker actually
got is read from the worker itself: each writes its environment and its open
files limit to `env.PID.json` in its folder.

How an option change applies is declared once per option (config/options.py):
`graceful_timeout` applies in place, by `set` and by `reloadconfig` alike (it used
to restart every worker through reloadconfig); an `rlimit_*` needs new workers
(`set` used to take it in place, so the running workers never got it).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import wait_for
from sockvisor.control.client import ControlClient

ENV_WORKER = r'''
import json, os, resource, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
folder = os.path.dirname(os.path.abspath(__file__))
report = {"env": dict(os.environ),
          "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
with open(os.path.join(folder, f"env.{os.getpid()}.json.tmp"), "w") as out:
    json.dump(report, out)
os.rename(os.path.join(folder, f"env.{os.getpid()}.json.tmp"),
          os.path.join(folder, f"env.{os.getpid()}.json"))
while True:
    time.sleep(3600)
'''


def _env_worker(tmp_path: Path) -> Path:
    script = tmp_path / "envw" / "env_worker.py"
    script.parent.mkdir()
    script.write_text(ENV_WORKER)
    return script


def _report(script: Path, pid: int) -> dict:
    path = script.parent / f"env.{pid}.json"
    wait_for(path.exists, 10, message=lambda: f"worker {pid} to write {path}")
    return json.loads(path.read_text())


def _call(endpoint: str, command: str, props: dict | None = None, timeout: float = 20):
    with ControlClient(endpoint, timeout=timeout) as client:
        reply = client.call(command, props or {})
    # (`status` answers its state in "status": only "error" is a failure.)
    assert reply.get("status") != "error", reply
    return reply


def _pids(endpoint: str) -> list[int]:
    return _call(endpoint, "list", {"name": "web"})["pids"]


def _watcher(script: Path, env: str, extra: str = "") -> str:
    return f"""
        [watcher:web]
        cmd = {os.sys.executable} {script}
        graceful_timeout = 1
        {extra}

        [env:web]
        {env}
    """


def _replacement(sv, endpoint: str, old: int) -> int:
    """Kill `old` and return the worker that replaces it."""
    os.kill(old, signal.SIGKILL)
    return wait_for(lambda: next((p for p in _pids(endpoint) if p != old), None), 10,
                    message=lambda: f"a worker replacing {old}\n{sv.describe()}")


@pytest.mark.timeout(40)
@pytest.mark.parametrize("name, value", [("LIST", "a,DEBUG=1"),
                                         ("JAVA_OPTS", "-Xmx1g,-Dfoo=bar")])
def test_set_keeps_env_values_with_commas(sockvisor, tmp_path, name, value):
    script = _env_worker(tmp_path)
    sv = sockvisor(_watcher(script, f"{name} = {value}"))
    endpoint = f"ipc://{sv.directory}/ctl"
    [first] = sv.wait_workers(1, "env_worker.py")
    assert _report(script, first)["env"][name] == value

    reply = _call(endpoint, "set", {"name": "web", "options": {"graceful_timeout": "2"}})
    assert reply["watcher"]["name"] == "web"
    assert _pids(endpoint) == [first], "graceful_timeout applies in place"
    assert _call(endpoint, "get", {"name": "web", "keys": ["graceful_timeout"]}
                 )["options"]["graceful_timeout"] == 2.0

    # The next worker is started from the config `set` made.
    env = _report(script, _replacement(sv, endpoint, first))["env"]
    assert env[name] == value
    assert "DEBUG" not in env and "-Dfoo" not in env


@pytest.mark.timeout(40)
def test_set_env_as_a_mapping_keeps_commas_and_equals(sockvisor, tmp_path):
    """`set web env {...}` as a JSON object: each value exactly as given."""
    script = _env_worker(tmp_path)
    sv = sockvisor(_watcher(script, "A = 1"))
    endpoint = f"ipc://{sv.directory}/ctl"
    [first] = sv.wait_workers(1, "env_worker.py")
    _call(endpoint, "set", {"name": "web", "options": {
        "env": {"OPTS": "-Xmx1g,-Dfoo=bar", "EQ": "a=b,c"}}}, timeout=30)
    [second] = sv.wait_workers(1, "env_worker.py", exclude=[first])
    env = _report(script, second)["env"]
    assert (env["OPTS"], env["EQ"]) == ("-Xmx1g,-Dfoo=bar", "a=b,c")
    assert "A" not in env and "-Dfoo" not in env and "c" not in env


@pytest.mark.timeout(40)
def test_reloadconfig_applies_graceful_timeout_in_place(sockvisor, tmp_path):
    script = _env_worker(tmp_path)
    sv = sockvisor(_watcher(script, "LIST = a,DEBUG=1"))
    endpoint = f"ipc://{sv.directory}/ctl"
    [first] = sv.wait_workers(1, "env_worker.py")
    generation = _call(endpoint, "status", {"name": "web"})["watcher"]["generation"]

    sv.conf.write_text(sv.conf.read_text().replace("graceful_timeout = 1",
                                                   "graceful_timeout = 3"))
    reply = _call(endpoint, "reloadconfig")
    assert reply["reloaded"] == [] and reply["updated"] == ["web"], reply
    assert _pids(endpoint) == [first]
    assert _call(endpoint, "status", {"name": "web"})["watcher"]["generation"] == generation
    assert _call(endpoint, "get", {"name": "web", "keys": ["graceful_timeout"]}
                 )["options"]["graceful_timeout"] == 3.0


@pytest.mark.timeout(40)
def test_set_rlimit_starts_new_workers_with_it(sockvisor, tmp_path):
    script = _env_worker(tmp_path)
    sv = sockvisor(_watcher(script, "A = 1"))
    endpoint = f"ipc://{sv.directory}/ctl"
    [first] = sv.wait_workers(1, "env_worker.py")
    assert _report(script, first)["nofile"] != 345

    _call(endpoint, "set", {"name": "web", "options": {"rlimit_nofile": "345"}}, timeout=30)
    # A rolling reload: the running worker is replaced by one that has the limit.
    [second] = sv.wait_workers(1, "env_worker.py", exclude=[first])
    assert _report(script, second)["nofile"] == 345
    assert _call(endpoint, "get", {"name": "web", "keys": ["rlimit_nofile"]}
                 )["options"]["rlimit_nofile"] == 345
