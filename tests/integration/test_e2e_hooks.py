"""Circus's watcher hooks, run as commands (issue 11, item 12), on a real sockvisor.

Configs are written as Circus users write them (`hooks.before_spawn = ...`), with
the hooks and the worker appending lines to one file: the order of those lines
is the order things happened in.  Each hook line says which hook ran and the
context it got in its environment (SOCKVISOR_PID, SOCKVISOR_WID, ...); each
worker line says which worker did what.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from control_helpers import control, is_reaped

pytestmark = pytest.mark.timeout(60)

# argv: LOG EXIT_CODE [hang].  Appends one line describing the call, then exits
# with EXIT_CODE (or hangs, to be killed at hook_timeout).
HOOK = r'''
import os, sys, time
log, code = sys.argv[1], int(sys.argv[2])
e = os.environ
fields = ["hook", e.get("SOCKVISOR_HOOK", "?"), "watcher=" + e.get("SOCKVISOR_WATCHER", "-"),
          "pid=" + e.get("SOCKVISOR_PID", "-"), "wid=" + e.get("SOCKVISOR_WID", "-"),
          "signal=" + e.get("SOCKVISOR_SIGNAL", "-"),
          "exit=" + e.get("SOCKVISOR_EXIT_CODE", "-"), "uid=%d" % os.getuid(),
          "self=%d" % os.getpid(), "app=" + e.get("APP", "-")]
with open(log, "a") as out:
    out.write(" ".join(fields) + "\n")
print("hook output " + fields[1], flush=True)
if sys.argv[3:] == ["hang"]:
    time.sleep(3600)
sys.exit(code)
'''

# argv: LOG.  Appends "worker start", "worker got USR1" and "worker stop" lines.
WORKER = r'''
import os, signal, sys
log = sys.argv[1]
def note(text):
    with open(log, "a") as out:
        out.write(f"worker {text} pid={os.getpid()}\n")
def stop(signum, frame):
    note("stop")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, lambda signum, frame: note("got USR1"))
note("start wid=" + os.environ["SOCKVISOR_WID"])
while True:
    signal.pause()
'''


class Setup:
    def __init__(self, directory: Path, python: str = sys.executable):
        directory.mkdir(mode=0o755, exist_ok=True)
        directory.chmod(0o755)
        self.directory = directory
        self.python = python
        self.hook = directory / "hook.py"
        self.hook.write_text(HOOK)
        self.worker = directory / "worker.py"
        self.worker.write_text(WORKER)
        for script in (self.hook, self.worker):
            script.chmod(0o644)
        self.log = directory / "events.log"
        self.log.touch()
        self.log.chmod(0o666)

    def hook_cmd(self, code: int = 0, *extra: str) -> str:
        return " ".join(shlex.quote(str(word)) for word in
                        (self.python, self.hook, self.log, code, *extra))

    def worker_cmd(self) -> str:
        return " ".join(shlex.quote(str(word)) for word in
                        (self.python, self.worker, self.log))

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def index(self, pattern: str) -> int:
        """Index of the first line matching `pattern` (-1: none)."""
        regex = re.compile(pattern)
        return next((i for i, line in enumerate(self.lines()) if regex.search(line)), -1)

    def wait_line(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        return wait_for(lambda: next((line for line in self.lines() if regex.search(line)),
                                     None), timeout,
                        message=lambda: f"no line matching {pattern!r} in:\n"
                                        + "\n".join(self.lines()))


ALL_HOOKS = ("before_start", "after_start", "before_spawn", "after_spawn", "before_stop",
             "after_stop", "before_signal", "after_signal", "before_reap", "after_reap")


def test_each_hook_fires_at_its_moment_with_its_context(sockvisor, tmp_path):
    setup = Setup(tmp_path / "hooks")
    hooks = "\n".join(f"hooks.{name} = {setup.hook_cmd()}" for name in ALL_HOOKS)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        numprocesses = 2
        env = APP=shop
        {hooks}
    """)
    setup.wait_line(r"hook after_start ")
    with control(sv) as ctl:
        detail = ctl.wait_ready("web", 2)
        pids = {w["pid"]: w["wid"] for w in detail["workers"]}
        assert setup.index(r"hook before_start ") == 0
        for pid, wid in pids.items():
            started = setup.index(rf"worker start wid=\d+ pid={pid}\b")
            wid_seen = int(re.search(r"wid=(\d+)", setup.lines()[started]).group(1))
            assert wid_seen == wid
            # Its before_spawn (same wid) came before the worker's own first line;
            # its after_spawn names its pid.
            assert 0 <= setup.index(rf"hook before_spawn .* pid=- wid={wid} ") < started
            setup.wait_line(rf"hook after_spawn watcher=web pid={pid} wid={wid} ")
            assert setup.index(r"hook after_start ") > setup.index(
                rf"hook before_spawn .* wid={wid} ")
        # The watcher's env and the hook context, as the watcher's user.
        line = setup.wait_line(r"hook before_start ")
        assert "watcher=web" in line and "app=shop" in line and f"uid={os.getuid()}" in line

        # signal: before_signal, the signal, after_signal -- each with pid and signum.
        target = min(pids)
        ctl.call("signal", name="web", pid=target, signum="USR1")
        setup.wait_line(rf"hook after_signal watcher=web pid={target} .*signal=10 ")
        setup.wait_line(rf"worker got USR1 pid={target}")
        assert (setup.index(rf"hook before_signal watcher=web pid={target} .*signal=10 ")
                < setup.index(rf"worker got USR1 pid={target}"))

        # An exit: before_reap, then after_reap with the exit code (-signal, as Circus).
        os.kill(target, signal.SIGKILL)
        setup.wait_line(rf"hook after_reap watcher=web pid={target} .*exit=-9 ")
        assert is_reaped(target)
        assert (0 < setup.index(rf"hook before_reap watcher=web pid={target} ")
                < setup.index(rf"hook after_reap watcher=web pid={target} "))

        detail = ctl.wait_ready("web", 2)
        ctl.call("stop", name="web")
    setup.wait_line(r"hook after_stop ")
    last_worker_stop = max(i for i, line in enumerate(setup.lines())
                           if line.startswith("worker stop"))
    assert setup.index(r"hook before_stop ") < setup.index(r"worker stop ")
    assert setup.index(r"hook after_stop ") > last_worker_stop
    # The hooks' own output went through the watcher's output (`logs`).
    assert "hook output before_start" in sv.stdout()


def test_a_failing_before_spawn_starts_no_worker_and_the_restart_policy_ends_it(
        sockvisor, tmp_path):
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        numprocesses = 2
        backoff_base = 0.05
        max_retry = 3
        hooks.before_spawn = {setup.hook_cmd(1)}
    """, globals="start_failure = continue")
    with control(sv) as ctl:
        wait_for(lambda: ctl.status("web")["state"] == "fatal", 20,
                 message=lambda: str(ctl.status("web")))
        status = ctl.status("web")
        assert status["workers"] == []
        assert "before_spawn" in status.get("fatal_reason", "")
    assert not any(line.startswith("worker") for line in setup.lines())
    assert len([line for line in setup.lines() if "hook before_spawn" in line]) >= 3


def test_a_failing_after_spawn_stops_each_worker_it_follows(sockvisor, tmp_path):
    """Circus kills a process whose after_spawn says False; here it is a failed
    start, and the restart policy ends the watcher FATAL."""
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        backoff_base = 0.05
        max_retry = 2
        hooks.after_spawn = {setup.hook_cmd(1)}
    """, globals="start_failure = continue")
    with control(sv) as ctl:
        wait_for(lambda: ctl.status("web")["state"] == "fatal", 20,
                 message=lambda: str(ctl.status("web")))
        assert ctl.status("web")["workers"] == []
    # Each worker it was started for (by pid) is gone; the policy tried again.
    spawned = [int(re.search(r" pid=(\d+) ", line).group(1)) for line in setup.lines()
               if line.startswith("hook after_spawn")]
    assert len(spawned) >= 2 and all(is_reaped(pid) for pid in spawned)


def test_circus_s_ignore_failure_flag_lets_a_hook_that_cannot_answer_pass(
        sockvisor, tmp_path):
    """`hooks.before_start = ..., true`: a hook killed at hook_timeout is ignored
    (a non-zero exit would still be False, as a Circus hook returning False)."""
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        hook_timeout = 1
        hooks.before_start = {setup.hook_cmd(0, "hang")}, true
    """)
    with control(sv) as ctl:
        ctl.wait_ready("web", 1)
    assert setup.index("hook before_start") < setup.index("worker start")


def test_a_failing_before_signal_keeps_the_signal_from_the_worker(sockvisor, tmp_path):
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        hooks.before_signal = {setup.hook_cmd(1)}
        hooks.after_signal = {setup.hook_cmd(0)}
    """)
    with control(sv) as ctl:
        pid = ctl.wait_ready("web", 1)["workers"][0]["pid"]
        setup.wait_line(rf"worker start wid=1 pid={pid}")
        reply = ctl.raw("signal", name="web", signum="USR1")
        assert reply.get("status") == "error", reply
        assert "before_signal" in reply.get("reason", ""), reply
        # after_signal runs whatever before_signal said (as in Circus): once it
        # has, the signal would have been delivered long ago.
        setup.wait_line(rf"hook after_signal watcher=web pid={pid} .*signal=10 ")
        assert setup.index(rf"hook before_signal watcher=web pid={pid} ") >= 0
        assert setup.index("worker got USR1") == -1
        assert ctl.status("web")["workers"][0]["pid"] == pid


def test_a_stop_signal_goes_through_before_signal_as_in_circus(sockvisor, tmp_path):
    """Circus sends a worker's stop signal through its before_signal hook: a False
    keeps the stop signal from it, and it is killed after graceful_timeout."""
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        graceful_timeout = 1
        hooks.before_signal = {setup.hook_cmd(1)}
        hooks.after_signal = {setup.hook_cmd(0)}
    """)
    with control(sv) as ctl:
        pid = ctl.wait_ready("web", 1)["workers"][0]["pid"]
        setup.wait_line(rf"worker start wid=1 pid={pid}")
        ctl.call("stop", name="web")
        assert ctl.status("web")["state"] == "stopped"
    assert is_reaped(pid)
    assert setup.index(rf"hook before_signal watcher=web pid={pid} .*signal=15 ") >= 0
    assert setup.index(rf"hook after_signal watcher=web pid={pid} .*signal=15 ") >= 0
    assert setup.index("worker stop") == -1   # no SIGTERM reached it: SIGKILLed


def test_a_hung_hook_is_killed_at_hook_timeout_and_the_loop_stays_responsive(
        sockvisor, tmp_path):
    setup = Setup(tmp_path / "hooks")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        autostart = false
        hook_timeout = 3
        hooks.before_start = {setup.hook_cmd(0, "hang")}
    """)
    replies = {}

    def start() -> None:
        with control(sv) as own:
            replies["start"] = own.raw("start", name="web")

    starter = threading.Thread(target=start)
    starter.start()
    line = setup.wait_line(r"hook before_start ")
    hook_pid = int(re.search(r"self=(\d+)", line).group(1))
    with control(sv) as ctl:
        began = time.monotonic()
        for _ in range(5):   # answered at once while the hook hangs
            assert ctl.status("web")["state"] in ("starting", "stopped")
        assert time.monotonic() - began < 2.0
        assert not is_reaped(hook_pid)
        starter.join(15)
        assert not starter.is_alive()
        wait_for(lambda: is_reaped(hook_pid), 5)
        reply = replies["start"]
        assert reply.get("status") == "error", reply
        assert "before_start" in reply.get("reason", "") and "timeout" in reply["reason"]
        assert ctl.status("web")["workers"] == []
    assert not any(line.startswith("worker") for line in setup.lines())


@pytest.mark.skipif(os.geteuid() != 0, reason="running hooks as another user needs root")
def test_hooks_run_as_the_watchers_user(world_readable_dir, sockvisor):
    setup = Setup(world_readable_dir / "hooks", python="/usr/bin/python3")
    nobody = pwd.getpwnam("nobody")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        uid = nobody
        working_dir = {world_readable_dir}
        hooks.before_spawn = {setup.hook_cmd(0)}
    """)
    line = setup.wait_line(r"hook before_spawn ")
    assert f"uid={nobody.pw_uid}" in line
    assert sv.worker_pids()


@pytest.mark.timeout(40)
def test_what_a_hook_starts_ends_with_it(sockvisor, tmp_path):
    """A hook is contained as a worker is: what it leaves running in its process
    group -- and, where cgroups are used, what it setsid()s away -- is killed when
    it is reaped, instead of living on after the hook, the watcher and sockvisor."""
    setup = Setup(tmp_path / "hooks")
    pids = tmp_path / "hooks" / "children"
    script = (f"sleep 4343 & echo $! > {pids}.group; "
              f"setsid sleep 4242 & echo $! > {pids}.session; exit 0")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {setup.worker_cmd()}
        hooks.after_spawn = /bin/sh -c {shlex.quote(script)}
    """)
    with control(sv) as ctl:
        wait_for(lambda: ctl.status("web")["ready"] == 1, 10)
        wait_for(lambda: Path(f"{pids}.group").exists() and Path(f"{pids}.session").exists()
                 and Path(f"{pids}.session").read_text().strip(), 10)
        in_group = int(Path(f"{pids}.group").read_text())
        in_session = int(Path(f"{pids}.session").read_text())
        sv.track(in_group)
        sv.track(in_session)
        wait_for(lambda: is_reaped(in_group), 10,
                 message=lambda: "the hook's child outlived it:\n" + sv.log())
        if "process containment: cgroup" in sv.log():
            wait_for(lambda: is_reaped(in_session), 10,
                     message=lambda: "a setsid()ed child escaped the hook's cgroup")
