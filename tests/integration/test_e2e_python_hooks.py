"""Circus's hooks as Circus configs write them -- `hooks.NAME = module.function` --
on a real sockvisor (hooks.py, circus_hook_shim.py).

Each test writes a hook module the way Circus's examples do (a function taking
watcher, arbiter, hook_name and the hook point's keyword arguments) and checks
what the workers actually got, what the hook saw, and that a hostile or broken
hook costs nothing but its own answer.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli, wait_for
from control_helpers import control, is_reaped

pytestmark = pytest.mark.timeout(60)

# argv: LOG [ARG...].  Appends "start pid=… wid=… argv=[…] myvar=…", then
# "got SIGNAL" for USR1/USR2, "stop" at TERM.
WORKER = r'''
import json, os, signal, sys
log = sys.argv[1]
def note(text):
    with open(log, "a") as out:
        out.write(f"worker {os.getpid()} {text}\n")
def stop(signum, frame):
    note("stop")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
for name in ("SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), lambda signum, frame, name=name: note("got " + name))
note("start wid=%s argv=%s myvar=%s" % (os.environ["SOCKVISOR_WID"],
                                        json.dumps(sys.argv[2:]), os.environ.get("myvar")))
while True:
    signal.pause()
'''


class Hooks:
    """A directory with a hook module (`apphooks`), a worker and a shared log."""

    def __init__(self, directory: Path, module: str):
        directory.mkdir(mode=0o755, exist_ok=True)
        directory.chmod(0o755)
        self.directory = directory
        self.log = directory / "events.log"
        self.log.touch()
        self.log.chmod(0o666)
        (directory / "apphooks.py").write_text(textwrap.dedent(module).replace(
            "LOG", repr(str(self.log))))
        (directory / "worker.py").write_text(WORKER)
        for name in ("apphooks.py", "worker.py"):
            (directory / name).chmod(0o644)

    def worker_cmd(self, *args: str, python: str = sys.executable) -> str:
        return " ".join([shlex.quote(python), shlex.quote(str(self.directory / "worker.py")),
                         shlex.quote(str(self.log)), *args])

    def lines(self, prefix: str = "") -> list[str]:
        return [line for line in self.log.read_text().splitlines()
                if line.startswith(prefix)]

    def wait_lines(self, prefix: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        return wait_for(lambda: (self.lines(prefix) if len(self.lines(prefix)) >= count
                                 else None), timeout,
                        message=lambda: f"fewer than {count} {prefix!r} lines in:\n"
                                        + self.log.read_text())


def test_before_spawn_sets_a_variable_that_cmd_and_the_worker_get(sockvisor, tmp_path):
    """Circus's example10: the hook sets watcher.env['myvar'] before each spawn,
    cmd names $(circus.env.myvar).  Each worker gets the value its own hook set,
    in argv and in its environment; the hook module is found on the watcher's
    PYTHONPATH, as Circus finds it."""
    hooks = Hooks(tmp_path / "hooks", """
        import os

        def set_var(watcher, arbiter, hook_name):
            watcher.env['myvar'] = 'v%d' % os.getpid()
            with open(LOG, 'a') as out:
                out.write('hook %s %s\\n' % (hook_name, watcher.env['myvar']))
            return True
    """)
    sv = sockvisor(f"""
        [watcher:vars]
        cmd = {hooks.worker_cmd("$(circus.env.myvar)")}
        numprocesses = 2
        env = PYTHONPATH={hooks.directory}
        working_dir = /
        hooks.before_spawn = apphooks.set_var
    """)
    with control(sv) as ctl:
        ctl.wait_ready("vars", 2)
    starts = hooks.wait_lines("worker", 2)
    set_values = [line.split()[2] for line in hooks.lines("hook before_spawn")]
    assert len(set_values) == 2 and len(set(set_values)) == 2, hooks.lines()
    for line in starts:
        argv = json.loads(line.split("argv=")[1].split(" myvar=")[0])
        myvar = line.split("myvar=")[1]
        assert argv == [myvar], line   # the same value in argv and env
        assert myvar in set_values, (line, set_values)
    assert {line.split("myvar=")[1] for line in starts} == set(set_values)


def test_after_spawn_sees_the_new_worker_and_a_false_stops_it(sockvisor, tmp_path):
    hooks = Hooks(tmp_path / "hooks", """
        def check(watcher, arbiter, hook_name, pid, **kwargs):
            process = watcher.processes[pid]
            with open(LOG, 'a') as out:
                out.write('hook %s name=%s pid=%d wid=%d numprocesses=%d known=%s\\n' % (
                    hook_name, watcher.name, process.pid, process.wid,
                    watcher.numprocesses, pid in watcher.processes))
            return process.wid == 1
    """)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        numprocesses = 2
        working_dir = {hooks.directory}
        hooks.after_spawn = apphooks.check
    """, ready=False)
    hooks.wait_lines("hook after_spawn", 2)
    by_wid = {int(line.split("wid=")[1].split()[0]): line
              for line in hooks.lines("hook after_spawn")}
    assert set(by_wid) == {1, 2}, hooks.lines()
    for wid, line in by_wid.items():
        # The new worker is in watcher.processes, under its wid.
        assert "name=web" in line and "numprocesses=2" in line and "known=True" in line
    second_pid = int(by_wid[2].split("pid=")[1].split()[0])
    # wid 2's hook said False: it is stopped, a failed start (the restart policy
    # then decides, as for any worker that fails to start).
    sv.wait_log(rf"after_spawn hook failed for web\[{second_pid}\]: "
                r"apphooks.check returned False; stopping it")
    wait_for(lambda: is_reaped(second_pid), 10)


def test_send_signal_reaches_this_watchers_workers_only(sockvisor, tmp_path):
    """before_signal may signal the worker through watcher.send_signal (uwsgi's
    lossless reload sends SIGTSTP so); sockvisor's own pid, pid 1, another
    watcher's worker are refused -- the hook runs as the worker's user, but
    asks sockvisor, which signals only what this watcher owns."""
    hooks = Hooks(tmp_path / "hooks", """
        import os, signal

        def usr1_first(watcher, arbiter, hook_name, pid, signum, **kwargs):
            watcher.send_signal(pid, signal.SIGUSR1)
            refused = []
            for other in (os.getppid(), 1, int(watcher._options['other'])):
                try:
                    watcher.send_signal(other, signal.SIGTERM)
                except OSError as exc:
                    refused.append('%d: %s' % (other, exc))
            with open(LOG, 'a') as out:
                out.write('hook refused %s\\n' % refused)
            return signum == signal.SIGUSR2
    """)
    other = sockvisor(f"""
        [watcher:bystander]
        cmd = {hooks.worker_cmd()}
    """, name="other")
    bystander = other.worker_pids()[0]
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        hooks.before_signal = apphooks.usr1_first
        other = {bystander}
    """)
    with control(sv) as ctl:
        pid = ctl.wait_ready("web", 1)["workers"][0]["pid"]
        ctl.call("signal", name="web", signum="USR2")
        hooks.wait_lines(f"worker {pid} got SIGUSR2")
        worker_lines = hooks.lines(f"worker {pid}")
        assert worker_lines.index(f"worker {pid} got SIGUSR1") < worker_lines.index(
            f"worker {pid} got SIGUSR2")
        refused = hooks.wait_lines("hook refused")[0]
        assert refused.count("is not a running worker of web") == 3, refused
        # Nothing else was hit: sockvisor answers, the bystander lives.
        assert ctl.status("web")["workers"][0]["pid"] == pid
    assert other.worker_pids() == [bystander]
    assert not hooks.lines(f"worker {bystander} stop")


def test_uwsgi_style_clean_stop_during_a_reload(sockvisor, tmp_path):
    """Circus's uwsgi_lossless_reload.clean_stop: at the old worker's stop signal
    during a reload, the hook sees more processes than numprocesses, finds the
    newer one by `started`, and pauses the old one (here SIGUSR1) before letting
    the stop signal go."""
    hooks = Hooks(tmp_path / "hooks", """
        import signal

        def clean_stop(watcher, arbiter, hook_name, pid, signum, **kwargs):
            if len(watcher.processes) > watcher.numprocesses and signum == signal.SIGTERM:
                started = watcher.processes[pid].started
                newer = [p for p, w in watcher.processes.items()
                         if p != pid and w.started > started]
                with open(LOG, 'a') as out:
                    out.write('hook clean_stop old=%d newer=%s\\n' % (pid, newer))
                watcher.send_signal(pid, signal.SIGUSR1)
            return True
    """)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        hooks.before_signal = apphooks.clean_stop
    """)
    with control(sv) as ctl:
        old = ctl.wait_ready("web", 1)["workers"][0]["pid"]
        ctl.call("reload", name="web", timeout=30)
        new = ctl.wait_ready("web", 1)["workers"][0]["pid"]
    assert new != old
    assert hooks.wait_lines("hook clean_stop") == [f"hook clean_stop old={old} newer=[{new}]"]
    hooks.wait_lines(f"worker {old} stop")
    old_lines = hooks.lines(f"worker {old}")
    assert old_lines.index(f"worker {old} got SIGUSR1") < old_lines.index(f"worker {old} stop")


def test_a_hook_that_raises_is_circus_s_failed_hook(sockvisor, tmp_path):
    """before_start raising fails the start (with the exception in the reply
    and the traceback in the watcher's output); before_stop raising is ignored,
    as Circus ignores it."""
    hooks = Hooks(tmp_path / "hooks", """
        def broken(watcher, arbiter, hook_name):
            return 1 / 0

        def needs_circusd(watcher, arbiter, hook_name):
            return arbiter.watchers
    """)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        hooks.before_start = apphooks.broken
        autostart = false

        [watcher:quiet]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        hooks.before_stop = apphooks.needs_circusd
    """)
    with control(sv) as ctl:
        reply = ctl.raw("start", name="web")
        assert reply["status"] == "error", reply
        assert "apphooks.broken raised ZeroDivisionError" in reply["reason"], reply
        assert not ctl.status("web")["workers"]
        logs = ctl.call("logs", name="web", lines=50)
        assert "ZeroDivisionError" in json.dumps(logs)

        ctl.wait_ready("quiet", 1)
        ctl.call("stop", name="quiet")
        assert ctl.status("quiet")["state"] == "stopped"
    sv.wait_log(r"before_stop hook failed \(apphooks.needs_circusd raised AttributeError: "
                r"sockvisor runs Circus hooks outside circusd.*\); ignored")


@pytest.mark.parametrize("misbehaviour, says", [
    ("os.write(5, b'not json\\n'); time.sleep(5)", "does not understand"),
    ("os.write(5, b'{\"signal\": [\"1\", 9]}\\n'); time.sleep(5)", "without a pid"),
    ("os.write(5, b'x' * (3 << 20))", "more than 1048576 bytes"),
    ("time.sleep(60)", "did not exit within hook_timeout"),
])
def test_a_hostile_or_stuck_hook_fails_alone(sockvisor, tmp_path, misbehaviour, says):
    """The hook process runs as the worker's user: whatever it sends sockvisor is
    checked and bounded.  Each misbehaviour fails that hook (before_spawn: a
    failed start) with a clear reason; sockvisor answers, its socket stays
    open and listening."""
    hooks = Hooks(tmp_path / "hooks", f"""
        import os, time

        def hostile(watcher, arbiter, hook_name):
            {misbehaviour}
            return True
    """)
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {hooks.worker_cmd()}
        sockets = web
        working_dir = {hooks.directory}
        hooks.before_spawn = apphooks.hostile
        hook_timeout = 1
    """, ready=False)
    sv.wait_log(rf"before_spawn hook: apphooks.hostile: .*{says}|"
                rf"before_spawn hook: apphooks.hostile {says}", timeout=20)
    assert not hooks.lines("worker")
    with control(sv) as ctl:
        port = ctl.port("web")
        assert ctl.status("web")["state"] in ("backoff", "starting", "fatal")
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass   # the kernel still queues connections on sockvisor's socket


def test_stats_extended_runs_the_extended_stats_hook(sockvisor, tmp_path):
    hooks = Hooks(tmp_path / "hooks", """
        def more(watcher, arbiter, hook_name, pid, stats, **kwargs):
            stats['requests'] = 1000 + watcher.processes[pid].wid
            stats['base'] = int(watcher._options.get('stats_base_port', 8090))
            return True
    """)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        numprocesses = 2
        working_dir = {hooks.directory}
        hooks.extended_stats = apphooks.more
        stats_base_port = 9100
    """)
    with control(sv) as ctl:
        workers = ctl.wait_ready("web", 2)["workers"]
        plain = ctl.call("stats", name="web")
        assert all("requests" not in info for info in plain["info"].values())
        extended = ctl.call("stats", name="web", extended=True)
        for worker in workers:
            info = extended["info"][str(worker["pid"])]
            assert info["requests"] == 1000 + worker["wid"]
            assert info["base"] == 9100
            assert info["pid"] == worker["pid"] and "rss" in info   # kept


def test_check_names_a_hook_that_cannot_be_imported(tmp_path):
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent(f"""
        [circus]
        endpoint = ipc://{tmp_path}/ctl

        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = /bin/sleep 100
        sockets = web
        hooks.before_start = mycoolapp.myplugins.check_redis
    """))
    result = run_cli("check", str(path))
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert f"{path}: [watcher:web]: hooks.before_start:" in message, message
    assert "cannot import the hook mycoolapp.myplugins.check_redis" in message, message
    assert "No module named 'mycoolapp'" in message, message
    assert "PYTHONPATH" in message   # what to do


@pytest.mark.skipif(os.geteuid() != 0, reason="running a hook as another user needs root")
def test_a_python_hook_runs_as_the_watchers_user(world_readable_dir, sockvisor):
    """Circus calls hooks inside circusd, as root; here the hook is the worker's
    code with the worker's rights (DESIGN §5), under the interpreter it can run."""
    hooks = Hooks(world_readable_dir / "hooks", """
        import os

        def who(watcher, arbiter, hook_name):
            with open(LOG, 'a') as out:
                out.write('hook uid=%d gid=%d cwd=%s\\n' % (os.getuid(), os.getgid(),
                                                             os.getcwd()))
            return True
    """)
    nobody = pwd.getpwnam("nobody")
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd(python="/usr/bin/python3")}
        uid = nobody
        working_dir = {hooks.directory}
        hook_python = /usr/bin/python3
        hooks.before_start = apphooks.who
    """)
    line = hooks.wait_lines("hook uid=")[0]
    assert line == f"hook uid={nobody.pw_uid} gid={nobody.pw_gid} cwd={hooks.directory}"
    assert sv.worker_pids()


def test_what_a_hook_set_stays_with_its_config(sockvisor, tmp_path):
    """A hook's watcher.env changes reach the next workers of the config it ran
    for -- never sockvisor's own variables (LISTEN_FDS...) -- and no worker of
    another config: after a reloadconfig (here: no hook any more) the workers
    get the config's env again, as Circus's new watcher would."""
    hooks = Hooks(tmp_path / "hooks", """
        import os

        def plant(watcher, arbiter, hook_name):
            if not os.path.exists(LOG + '.planted'):   # once: later workers inherit it
                open(LOG + '.planted', 'w').close()
                watcher.env['EVIL'] = 'planted'
                watcher.env['LISTEN_FDS'] = '99'
                watcher.env['myvar'] = 'set'
            return True
    """)
    probe = tmp_path / "env.py"
    probe.write_text("import json, os, sys, time\n"
                     "open(sys.argv[1] + '/%d.json' % os.getpid(), 'w').write(json.dumps("
                     "dict(os.environ)))\ntime.sleep(3600)\n")
    out = tmp_path / "seen"
    out.mkdir()
    body = f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {probe} {out}
        sockets = web
        working_dir = {hooks.directory}
        graceful_timeout = 1
        """
    sv = sockvisor(body + "hooks.before_spawn = apphooks.plant\n")
    with control(sv) as ctl:
        first = ctl.wait_ready("web", 1)["workers"][0]["pid"]
    env = json.loads(wait_for(lambda: (out / f"{first}.json").exists()
                              and (out / f"{first}.json").read_text(), 10))
    assert env["EVIL"] == "planted" and env["myvar"] == "set"
    assert env["LISTEN_FDS"] == "1"   # sockvisor's, whatever the hook said

    # `set numprocesses` keeps them, as Circus keeps watcher.env: the new
    # worker's own before_spawn set nothing, it has them from the first.
    with control(sv) as ctl:
        ctl.call("set", name="web", options={"numprocesses": "2"})
        added = wait_for(lambda: [w["pid"] for w in ctl.status("web")["workers"]
                                  if w["pid"] != first], 10)[0]
    env = json.loads(wait_for(lambda: (out / f"{added}.json").exists()
                              and (out / f"{added}.json").read_text(), 10))
    assert env["EVIL"] == "planted"

    sv.conf.write_text(sv.conf.read_text().replace("hooks.before_spawn = apphooks.plant\n",
                                                   "env = OTHER=1\n"))
    with control(sv) as ctl:
        ctl.call("reloadconfig", timeout=30)
        second = wait_for(lambda: [w["pid"] for w in ctl.status("web")["workers"]
                                   if w["pid"] not in (first, added)
                                   and w["state"] == "running"], 15)[0]
    env = json.loads(wait_for(lambda: (out / f"{second}.json").exists()
                              and (out / f"{second}.json").read_text(), 10))
    assert "EVIL" not in env and "myvar" not in env and env["OTHER"] == "1"


@pytest.mark.parametrize("misbehaviour, says", [
    # 200 KiB of environment: more than sockvisor keeps for a watcher.
    ("watcher.env['BIG'] = 'x' * (200 << 10)", "watcher.env would hold more than"),
    # A signal storm at its own worker: bounded per hook run.
    ("[watcher.send_signal(pid, 18) for pid in list(watcher.processes) * 500]",
     "asked for more signals than a hook may send"),
])
def test_a_hook_cannot_make_sockvisor_hoard_or_spin(sockvisor, tmp_path, misbehaviour, says):
    hooks = Hooks(tmp_path / "hooks", f"""
        def greedy(watcher, arbiter, hook_name, **kwargs):
            {misbehaviour}
            return True
    """)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        hooks.after_spawn = apphooks.greedy
    """, ready=False)
    sv.wait_log(rf"after_spawn hook failed for .*apphooks.greedy: {says}", timeout=20)
    assert sv.proc.poll() is None


def test_a_hook_runs_under_the_watchers_limits(sockvisor, tmp_path):
    hooks = Hooks(tmp_path / "hooks", """
        import resource

        def limits(watcher, arbiter, hook_name):
            with open(LOG, 'a') as out:
                out.write('hook nofile=%d\\n' % resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return True
    """)
    sockvisor(f"""
        [watcher:web]
        cmd = {hooks.worker_cmd()}
        working_dir = {hooks.directory}
        rlimit_nofile = 77
        hooks.before_start = apphooks.limits
    """)
    assert hooks.wait_lines("hook nofile=") == ["hook nofile=77"]


def test_check_imports_a_hook_and_leaves_nothing_running(tmp_path):
    """`check` imports each Python hook as the worker's user: the module's own
    code runs (as in Circus, which imports them at load); whatever it starts ends
    with the probe."""
    hooks = Hooks(tmp_path / "hooks", """
        import os, subprocess
        _child = subprocess.Popen(['sleep', '300'])
        open(LOG, 'a').write('imported child=%d\\n' % _child.pid)

        def fine(watcher, arbiter, hook_name):
            return True
    """)
    path = tmp_path / "circus.ini"
    path.write_text(textwrap.dedent(f"""
        [circus]
        endpoint = ipc://{tmp_path}/ctl

        [watcher:web]
        cmd = /bin/sleep 100
        working_dir = {hooks.directory}
        hooks.before_start = apphooks.fine
    """))
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    child = int(hooks.wait_lines("imported child=")[0].split("=")[1])
    wait_for(lambda: is_reaped(child) or not os.path.exists(f"/proc/{child}"), 5,
             message=f"the probe's child {child} outlived `check`")
