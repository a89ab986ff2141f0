"""Circus's bundled plugins (`[plugin:NAME] use = circus.plugins.…`), statsd and
max_age, run by the real sockvisor on configs written as for Circus, checked by
what happens to the workers (sockvisor/circus_plugins.py, plugin_tasks.py)."""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import textwrap
import time

import pytest

from conftest import free_port, is_gone, wait_for

# A worker serving HTTP on fd 3.  --alloc-mb N: hold N MiB if FLAG is absent at
# start (and create it: only the first worker is "leaky").  --health-flag F:
# GET /health answers 500 once F exists, but only in a worker that started
# before F existed (a fresh one is healthy).  --heartbeat PORT --hb-flag F:
# send Circus's watchdog heartbeat "PID;TIME" every 0.1 s until F exists, if
# F did not exist at start.  --die-if F: exit 3 at once if F exists.
PLUGIN_WORKER = r'''
import json, os, socket, sys, threading, time
args = sys.argv[1:]
def option(name):
    return args[args.index(name) + 1] if name in args else None
if option("--die-if") and os.path.exists(option("--die-if")):
    sys.exit(3)
hold = None
if option("--alloc-mb") and not os.path.exists(option("--once-flag")):
    open(option("--once-flag"), "w").close()
    hold = b"x" * (int(option("--alloc-mb")) << 20)
health_flag = option("--health-flag")
healthy_at_start = health_flag is None or not os.path.exists(health_flag)
if option("--heartbeat"):
    hb_flag = option("--hb-flag")
    beats_at_start = not os.path.exists(hb_flag)
    def beat():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not (beats_at_start and os.path.exists(hb_flag)):
            sender.sendto(f"{os.getpid()};{time.time()}".encode(),
                          ("127.0.0.1", int(option("--heartbeat"))))
            time.sleep(0.1)
    threading.Thread(target=beat, daemon=True).start()
listener = socket.socket(fileno=3)
while True:
    connection, _ = listener.accept()
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                break
            request += chunk
        path = request.split(b" ")[1] if b" " in request else b"/"
        status = b"200 OK"
        if path == b"/health" and healthy_at_start and os.path.exists(health_flag or "/nonexistent"):
            status = b"500 Internal Server Error"
        body = json.dumps({"pid": os.getpid()}).encode()
        connection.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    finally:
        connection.close()
'''


@pytest.fixture
def plugin_worker(tmp_path):
    path = tmp_path / "plugin_worker.py"
    path.write_text(PLUGIN_WORKER)
    return f"{sys.executable} {path}"


@pytest.fixture
def statsd_server():
    """A UDP socket on loopback standing in for statsd."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    yield server
    server.close()


def receive_lines(server: socket.socket, wanted: list[str], timeout: float = 15.0
                  ) -> list[str]:
    """Lines statsd received until every one of `wanted` (regexes) matched one."""
    lines: list[str] = []

    def all_seen() -> bool:
        try:
            lines.append(server.recv(4096).decode())
        except socket.timeout:
            pass
        return all(any(re.fullmatch(w, line) for line in lines) for w in wanted)
    wait_for(all_seen, timeout, interval=0, message=lambda: f"{wanted} in {lines}")
    return lines


def get(port: int, path: str = "/") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_statsd_emitter_sends_circus_counters(sockvisor, scripts, statsd_server):
    port = statsd_server.getsockname()[1]
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        [plugin:statsd]
        use = circus.plugins.statsd.StatsdEmitter
        host = 127.0.0.1
        port = {port}
        application_name = shop
        [plugin:full]
        use = circus.plugins.statsd.FullStats
        host = 127.0.0.1
        port = {port}
        loop_rate = 0.2
    """)
    pid = sv.wait_workers(1)[0]
    os.kill(pid, 9)
    sv.wait_workers(1, exclude=[pid])
    lines = receive_lines(statsd_server, [r"circus\.shop\.watcher\.web\.spawn:1\|c",
                                          r"circus\.shop\.watcher\.web\.reap:1\|c",
                                          r"circus\.app\.watcher\._stats\.web\."
                                          r"watchers_num:1\|g",
                                          r"circus\.app\.watcher\._stats\.web\."
                                          r"mem_max:\d+\|g"])
    counters = [line for line in lines if line.startswith("circus.shop.")]
    assert all(re.fullmatch(r"circus\.shop\.watcher\.web\.[a-z_]+:1\|c", line)
               for line in counters), counters


@pytest.mark.timeout(60)
def test_resource_watcher_recycles_a_worker_over_max_mem_replacement_first(
        sockvisor, plugin_worker, tmp_path, statsd_server):
    flag = tmp_path / "leaked"
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {plugin_worker} --alloc-mb 120 --once-flag {flag}
        sockets = web
        numprocesses = 1
        [plugin:leak]
        use = circus.plugins.resource_watcher.ResourceWatcher
        watcher = web
        max_mem = 80M
        max_cpu = 0
        health_threshold = 0
        max_count = 1
        loop_rate = 0.2
        host = 127.0.0.1
        port = {statsd_server.getsockname()[1]}
    """)
    # (The first worker may be over the limit before start-up is even over.)
    match = sv.wait_log(r"web\[(\d+)\] replaced by web\[(\d+)\] \(\[plugin:leak\] over "
                        r"memory", timeout=20)[0]
    old, new = int(match.group(1)), int(match.group(2))
    sv.wait_log(rf"web\[{old}\] stopped", timeout=20)
    log = sv.log()
    # The replacement was ready and settled before the old one was even asked to stop.
    assert log.index(match.group(0)) < log.index(f"web[{old}] stopped")
    assert sv.wait_workers(1) == [new]
    assert sv.http_get(sv.port("web"))["pid"] == new
    receive_lines(statsd_server, [r"circus\.app\.watcher\._resource_watcher\.web\."
                                  r"over_memory:1\|c",
                                  r"circus\.app\.watcher\._resource_watcher\.web\."
                                  r"restarting:1\|c"])


@pytest.mark.timeout(90)
def test_max_age_recycles_under_load_without_a_failed_request(sockvisor, tmp_path):
    """The graceful worker of the reload tests (finishes the request in hand on
    SIGTERM), light load from two threads: every worker is recycled, no request
    fails."""
    from control_helpers import Load, ServeWorker, socket_section, watcher_section
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=2, ready="notify", max_age=2, max_age_variance=1))
    port = sv.port("web")
    first = set(sv.wait_workers(2))
    with Load(port, threads=2, pause=0.01, max_requests=20000) as load:
        wait_for(lambda: all(is_gone(pid) for pid in first)
                 and len(set(load.pids()) - first) >= 2, timeout=40,
                 message=lambda: f"every first worker recycled\n{sv.describe()}")
        samples = load.snapshot()
    failures = [sample for sample in samples if sample.pid is None]
    assert samples and not failures, f"{len(failures)} of {len(samples)} failed: {failures[:5]}"
    assert set(load.pids()) - first
    assert sv.log_count(r"replaced by web\[\d+\] \(max_age") >= 2


@pytest.mark.timeout(60)
def test_a_failed_recycle_keeps_the_old_worker_serving(sockvisor, plugin_worker, tmp_path):
    broken = tmp_path / "broken-release"
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {plugin_worker} --die-if {broken}
        sockets = web
        max_age = 1
        max_age_variance = 0
    """)
    first = sv.wait_workers(1)
    broken.touch()   # from now on a new worker dies at once
    sv.wait_log(r"recycling web\[\d+\] \(max_age: [\d.]+s old\) failed: .*; it keeps "
                "serving", timeout=20)
    survivor = sv.wait_workers(1)
    assert sv.http_get(sv.port("web"))["pid"] == survivor[0]
    assert "FATAL" not in sv.log()   # a failed replacement is not a crash of the watcher
    broken.unlink()
    sv.wait_workers(1, exclude=survivor + first, timeout=30)


@pytest.mark.timeout(60)
def test_http_observer_reloads_the_watcher_whose_health_url_fails(
        sockvisor, plugin_worker, tmp_path):
    flag = tmp_path / "broken"
    port = free_port()
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = {port}
        [watcher:web]
        cmd = {plugin_worker} --health-flag {flag}
        sockets = web
        numprocesses = 2
        [plugin:http]
        use = circus.plugins.http_observer.HttpObserver
        check_url = http://127.0.0.1:{port}/health
        loop_rate = 0.3
        timeout = 2
        restart_on_error = web
    """)
    first = set(sv.wait_workers(2))
    assert get(port, "/health") == 200
    flag.touch()
    sv.wait_log(r"watcher web: rolling reload \(\[plugin:http\] "
                rf"http://127.0.0.1:{port}/health failed", timeout=20)
    wait_for(lambda: all(is_gone(pid) for pid in first), timeout=20)
    new = set(sv.wait_workers(2))
    assert not new & first
    assert get(port, "/health") == 200


@pytest.mark.timeout(60)
def test_command_reloader_reloads_when_the_program_file_is_replaced(sockvisor, tmp_path):
    program = tmp_path / "app"
    program.write_text(f"#!{sys.executable}\nimport signal\nwhile True: signal.pause()\n")
    program.chmod(0o755)
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {program}
        numprocesses = 1
        [plugin:reloader]
        use = circus.plugins.command_reloader.CommandReloader
        loop_rate = 0.2
    """)
    old = sv.wait_workers(1)[0]
    # A deploy: the new file written aside, then renamed over the old one (new inode).
    staged = tmp_path / "app.new"
    staged.write_text(program.read_text() + "# v2\n")
    staged.chmod(0o755)
    os.rename(staged, program)
    sv.wait_log(rf"watcher app: rolling reload \(\[plugin:reloader\] {program} changed",
                timeout=15)
    sv.wait_workers(1, exclude=[old], timeout=15)


@pytest.mark.timeout(60)
def test_watchdog_replaces_a_worker_that_stops_sending_heartbeats(
        sockvisor, plugin_worker, tmp_path):
    flag = tmp_path / "hang"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    udp.close()
    sv = sockvisor(f"""
        [socket:web]
        port = 0
        [watcher:web]
        cmd = {plugin_worker} --heartbeat {port} --hb-flag {flag}
        sockets = web
        [plugin:watchdog]
        use = circus.plugins.watchdog.WatchDog
        loop_rate = 0.3
        max_count = 5
        port = {port}
    """)
    sv.wait_log(rf"watchdog listening on 127.0.0.1:{port}")
    old = sv.wait_workers(1)[0]
    # Heartbeats arrive: well past loop_rate * max_count, it is still the same worker.
    deadline = time.monotonic() + 3.0
    wait_for(lambda: time.monotonic() > deadline, timeout=5, interval=0.1)
    assert sv.worker_pids() == [old]
    flag.touch()
    sv.wait_log(rf"web\[{old}\] sent no heartbeat", timeout=15)
    sv.wait_workers(1, exclude=[old], timeout=15)


@pytest.mark.timeout(60)
def test_flapping_plugin_becomes_the_restart_limit(sockvisor, scripts):
    sv = sockvisor(f"""
        [watcher:crash]
        cmd = {scripts.cmd("worker.py", "--exit", "3")}
        [plugin:flapping]
        use = circus.plugins.flapping.Flapping
        attempts = 2
        max_retry = 1
        retry_in = 0.2
    """, globals="start_failure = continue")
    # attempts * (max_retry + 1) = 4 failed starts allowed: FATAL at the 5th.
    sv.wait_log(r"watcher crash is FATAL: 5 failed starts within [\d.]+s "
                r"\(max_restarts = 4\)", timeout=30)


THIRD_PARTY_PLUGIN = '''
import json
import os
import sys
from circus.plugins import CircusPlugin
from circus.util import AsyncPeriodicCallback


class Scaler(CircusPlugin):
    """Asks for the watcher list, scales `watcher` up by one, records the events."""
    name = "scaler"

    def __init__(self, *args, **config):
        super().__init__(*args, **config)
        self.out = config["out"]
        self.watcher = config["watcher"]
        self.done = False

    def handle_init(self):
        self.period = AsyncPeriodicCallback(self.look, 100)
        self.period.start()

    def look(self):
        if not self.done:
            self.done = True
            listing = self.call("list")
            with open(self.out, "w") as handle:
                json.dump({"list": listing, "config": self.config,
                           "cwd": os.getcwd(), "path": sys.path}, handle)
            self.cast("incr", name=self.watcher)

    def handle_recv(self, data):
        with open(self.out + ".events", "a") as handle:
            handle.write(data[0].decode() + "\\n")

    def handle_stop(self):
        self.period.stop()
'''


@pytest.mark.timeout(60)
def test_third_party_plugin_runs_as_circus_runs_it(sockvisor, scripts, tmp_path,
                                                   monkeypatch):
    pytest.importorskip("circus")
    package = tmp_path / "site" / "acme_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scaler.py").write_text(THIRD_PARTY_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = tmp_path / "plugin.json"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--no-serve")}
        numprocesses = 1
        [plugin:scaler]
        use = acme_plugins.scaler.Scaler
        watcher = web
        out = {out}
    """)
    # Its cast("incr") reached sockvisor: a second worker.
    sv.wait_workers(2, match="worker.py", timeout=20)
    seen = __import__("json").loads(out.read_text())
    assert seen["list"]["status"] == "ok" and seen["list"]["watchers"] == ["web"]
    assert seen["config"]["name"] == "plugin:scaler"   # Circus's --config, as Circus builds it
    # Runs as root: nothing may be imported from sockvisor's working directory,
    # which may be a folder another user can write (a planted `circus/`).
    assert seen["cwd"] == "/", seen["cwd"]
    assert not {"", str(sv.directory)} & set(seen["path"]), seen["path"]
    wait_for(lambda: (tmp_path / "plugin.json.events").exists()
             and "watcher.web.spawn" in (tmp_path / "plugin.json.events").read_text())
    plugin_pid = int(sv.wait_log(r"\[plugin:scaler\] started \S+ \(pid (\d+)\)")[0].group(1))
    assert sv.stop() == 0
    assert is_gone(plugin_pid)


def test_third_party_plugin_that_is_not_installed_is_refused(tmp_path):
    from conftest import run_cli
    conf = tmp_path / "circus.ini"
    conf.write_text(textwrap.dedent(f"""
        [circus]
        endpoint = ipc://{tmp_path}/ctl
        [watcher:web]
        cmd = /bin/sleep 1
        [plugin:mine]
        use = no_such_package_here.plugins.Mine
    """))
    result = run_cli("check", str(conf))
    assert result.returncode != 0
    assert "[plugin:mine]: use:" in result.stderr
    assert "the package that provides no_such_package_here.plugins" in result.stderr


@pytest.mark.timeout(60)
def test_max_age_added_by_reloadconfig_and_refused_by_set(sockvisor, scripts):
    import signal as signals
    import subprocess
    body = f"""
        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--no-serve")}
    """
    sv = sockvisor(body)
    old = sv.wait_workers(1)
    result = subprocess.run([sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint",
                             f"ipc://{sv.directory}/ctl", "set", "web", "max_age", "1"],
                            capture_output=True, text=True, timeout=15)
    assert result.returncode != 0 and "reloadconfig" in result.stdout + result.stderr
    sv.conf.write_text(sv.conf.read_text() + "max_age = 1\nmax_age_variance = 0\n")
    sv.signal(signals.SIGHUP)
    sv.wait_log(r"replaced by web\[\d+\] \(max_age", timeout=20)
    sv.wait_workers(1, exclude=old)


@pytest.mark.timeout(60)
def test_http_observer_counts_a_refused_connection_as_a_failure(sockvisor, scripts):
    nobody_listens = free_port()
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--no-serve")}
        [plugin:http]
        use = circus.plugins.http_observer.HttpObserver
        check_url = http://127.0.0.1:{nobody_listens}/
        loop_rate = 0.2
        timeout = 1
        restart_on_error = web
    """)
    # It keeps checking after a failure (a second reload), and never dies of it.
    sv.wait_log(r"watcher web: rolling reload \(\[plugin:http\]", count=2, timeout=20)
    assert "stopped by an error" not in sv.log()
