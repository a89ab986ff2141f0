"""End to end: a sockvisorctl that behaves like the tools operators know (issue 10, §3).

`status` as a health check (exit 3 unless every watcher runs with all workers
ready), errors in the user's words, `decr` below zero and `signal` to nobody
fail, --version/help/-h, completion and man page from the command table, `-c`
with a relative path from elsewhere, finding the one sockvisor running, a second
start that says "already running (pid N)", and `quit` that leaves no folder.

Finding "the one sockvisor on the machine" cannot be tested on a machine where
other tests run sockvisors too: those tests run sockvisor and sockvisorctl in a
mount namespace of their own with an empty /run/sockvisor (`alone`, `nsenter`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import Sockvisor, _clean_env, wait_for
from control_client_helpers import (alone, bare_sockvisor, call, describe,  # noqa: F401
                                    endpoint_of, ok, run_ctl)

WATCHER = """
[socket:web]
port = 0

[watcher:web]
cmd = {cmd}
sockets = web
numprocesses = {n}
graceful_timeout = 1
"""


def ctl(*args: str, cwd=None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in _clean_env().items() if k != "SOCKVISOR_ENDPOINT"}
    return subprocess.run([*prefix, sys.executable, "-m", "sockvisor.cli.ctl", *args],
                          env=env, capture_output=True, text=True, timeout=30, cwd=cwd)


def expect(code: int, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result


@pytest.mark.timeout(60)
def test_status_is_a_health_check(sockvisor, scripts):
    sv = sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py"), n=2))
    endpoint = endpoint_of(sv)
    sv.wait_workers(2, "worker.py")
    wait_for(lambda: ok(endpoint, "status", {"name": "web"})["watcher"]["ready"] == 2)
    expect(0, run_ctl("--endpoint", endpoint, "status"))
    expect(0, run_ctl("--endpoint", endpoint, "status", "web"))

    # Stopped: 3, with the table still printed.
    ok(endpoint, "stop", {"name": "web"})
    result = expect(3, run_ctl("--endpoint", endpoint, "status"))
    assert "stopped" in result.stdout
    expect(3, run_ctl("--endpoint", endpoint, "status", "web"))
    # --json: the same verdict.
    expect(3, run_ctl("--endpoint", endpoint, "status", "--json"))
    ok(endpoint, "start", {"name": "web"})
    wait_for(lambda: run_ctl("--endpoint", endpoint, "status").returncode == 0)


@pytest.mark.timeout(60)
def test_errors_in_the_users_words(sockvisor, scripts):
    sv = sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py"), n=2))
    endpoint = endpoint_of(sv)
    sv.wait_workers(2, "worker.py")

    # sockvisorctl checks its own arguments, in the words of its usage line.
    result = expect(2, run_ctl("--endpoint", endpoint, "decr", "web", "0"))
    assert "'nb'" not in result.stderr and "argument N: must be at least 1" in result.stderr
    result = expect(2, run_ctl("--endpoint", endpoint, "incr", "web", "0"))
    assert "'nb'" not in result.stderr and "argument N: must be at least 1" in result.stderr
    result = expect(2, run_ctl("--endpoint", endpoint, "logs", "web", "-n", "500"))
    assert "argument -n/--lines: must be at most 100" in result.stderr
    # The server names the key its protocol clients sent, and what it means.
    reply = call(endpoint, "incr", {"name": "web", "nb": 0})
    assert reply["reason"].startswith("'nb' (the number of workers to add) must be")

    # Below zero is an error, and changes nothing.
    result = expect(1, run_ctl("--endpoint", endpoint, "decr", "web", "5"))
    assert "cannot retire 5" in result.stderr and "2 workers" in result.stderr
    assert ok(endpoint, "numprocesses", {"name": "web"})["numprocesses"] == 2
    expect(0, run_ctl("--endpoint", endpoint, "decr", "web", "2"))

    # No workers: nobody got the signal, and sockvisorctl says so (exit 1).
    wait_for(lambda: not ok(endpoint, "list", {"name": "web"})["pids"])
    result = expect(1, run_ctl("--endpoint", endpoint, "signal", "web", "HUP"))
    assert "no running workers" in result.stderr


def test_version_help_and_command_help():
    from sockvisor import __version__
    assert expect(0, ctl("--version")).stdout.strip() == f"sockvisorctl {__version__}"
    overview = expect(0, ctl("help")).stdout
    assert "logs" in overview and "completion" in overview
    detail = expect(0, ctl("help", "logs")).stdout
    assert "--follow" in detail and "last 50 lines" in detail
    expect(2, ctl("help", "nosuch"))
    # COMMAND -h: the command's own options, not the global ones again.
    own = expect(0, ctl("decr", "-h")).stdout
    assert "--endpoint" not in own and "--curve-client-key" not in own
    assert " nb" not in own and "NAME" in own
    # ... which are still accepted after the command.
    assert "--endpoint" in expect(0, ctl("-h")).stdout


def test_every_summary_is_a_whole_sentence():
    from sockvisor.cli.ctl import build_parser
    from sockvisor.cli.ctl_docs import _summaries
    from sockvisor.control.commands import load_commands
    summaries = _summaries(build_parser(load_commands()))
    assert len(summaries) == len(load_commands()) + 3
    for name, text in summaries.items():
        assert re.fullmatch(r"[A-Z].*\.", text), (name, text)


def test_bash_completion_completes_commands_and_options(tmp_path):
    script = tmp_path / "sockvisorctl.bash"
    script.write_text(expect(0, ctl("completion", "bash")).stdout)
    # Ask bash itself what it would complete.
    probe = f"""
source {script}
sockvisorctl() {{ echo web; echo api; }}   # the watchers, as `list` prints them
complete_line() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _sockvisorctl;
                   echo "${{COMPREPLY[*]}}"; }}
complete_line sockvisorctl rel
complete_line sockvisorctl logs --f
complete_line sockvisorctl --endpoint ipc://x logs ""
complete_line sockvisorctl completion ""
"""
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                           timeout=30).stdout.splitlines()
    assert lines[0].split() == ["reload", "reloadconfig"]
    assert lines[1].split() == ["--follow"]
    assert {"web", "api", "-f", "--pid"} <= set(lines[2].split())
    assert [w for w in lines[3].split() if not w.startswith("-")] == ["bash", "zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_parses(tmp_path):
    script = tmp_path / "_sockvisorctl"
    script.write_text(expect(0, ctl("completion", "zsh")).stdout)
    check = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_man_page_documents_every_command(tmp_path):
    page = expect(0, ctl("man")).stdout
    assert page.startswith(".TH SOCKVISORCTL 1")
    from sockvisor.control.commands import load_commands
    for name in load_commands():
        assert f".SS {name}\n" in page, name
    if shutil.which("groff"):
        rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=page,
                                  capture_output=True, text=True, timeout=30)
        assert rendered.returncode == 0 and "warning" not in rendered.stderr, rendered.stderr


@pytest.mark.timeout(60)
def test_config_path_relative_to_any_directory(bare_sockvisor, scripts, tmp_path):
    sv = bare_sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py"), n=1))
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    relative = os.path.relpath(sv.conf, elsewhere)
    assert relative.startswith("..")
    result = expect(0, ctl("-c", relative, "status", cwd=elsewhere))
    assert "web" in result.stdout


def _in_namespace_of(sv: Sockvisor) -> tuple[str, ...]:
    return ("nsenter", "-t", str(sv.pid), "-m")


@pytest.mark.timeout(90)
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_the_one_sockvisor_running_is_found(tmp_path, scripts):
    """No -c, no --endpoint: one sockvisor → it is used (and named); two → listed;
    a second start of a running config → "already running (pid N)"; `quit` →
    nothing left in /run/sockvisor."""
    body = WATCHER.format(cmd=scripts.cmd("worker.py"), n=1)
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    first = Sockvisor(first_dir, body, argv_prefix=alone())
    started = [first]
    try:
        first.wait_ready()
        inside = _in_namespace_of(first)
        result = expect(0, ctl("status", prefix=inside))
        assert "web" in result.stdout
        assert re.search(rf"using ipc:///run/sockvisor/sockvisor-\w+/control "
                         rf"\(pid {first.pid}: sockvisor start {first.conf}\)", result.stderr)

        second = Sockvisor(second_dir, body, argv_prefix=inside)
        started.append(second)
        second.wait_ready()
        result = expect(2, ctl("status", prefix=inside))
        assert "2 sockvisors run here" in result.stderr
        assert f"pid {first.pid}" in result.stderr and f"pid {second.pid}" in result.stderr

        # The same config again: refused at its endpoint, with the pid.
        again_dir = tmp_path / "again"
        again_dir.mkdir()
        again = subprocess.run([*inside, sys.executable, "-m", "sockvisor", "start",
                                str(first.conf)], capture_output=True, text=True,
                               timeout=30, env=_clean_env())
        assert again.returncode == 3, again.stderr
        assert f"already running (pid {first.pid})" in again.stderr

        # quit: the second one's runtime folder goes with it.
        expect(0, ctl("-c", str(second.conf), "quit", prefix=inside))
        assert second.wait_exit() == 0
        left = expect(0, subprocess.run([*inside, "ls", "/run/sockvisor"],
                                        capture_output=True, text=True))
        assert len(left.stdout.split()) == 1, left.stdout
        result = expect(0, ctl("status", prefix=inside))
        assert f"pid {first.pid}" in result.stderr
    finally:
        for instance in reversed(started):
            instance.cleanup()
