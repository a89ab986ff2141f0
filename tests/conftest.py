"""Shared test fixtures: one polling helper, a real `sockvisor` process, worker scripts.

Everything here is meant to be reused by every test file:

* `wait_for(condition, timeout)` is the one way a test waits for something.  It
  polls a condition with a deadline and fails with a message that says what was
  awaited; no test synchronises with a bare `time.sleep`.
* The `sockvisor` fixture is a factory: `sockvisor(body)` writes a config (a
  `[sockvisor]` section with `endpoint = ipc://DIR/ctl` plus `body`) into
  `tmp_path`, starts the real `python -m sockvisor start CONF` in its own session
  with stdout/stderr going to files, and waits for the `sockvisor ready:` log
  line.  Tests learn bound ports from the `socket NAME listening on HOST:PORT`
  log line, so they do not depend on the control channel.  Teardown sends
  SIGTERM, waits with a deadline, then SIGKILLs the process group and every
  worker pid the test saw (workers run in their own sessions, so killing
  sockvisor's group alone would not reach them).
* The `scripts` fixture writes small stdlib worker programs into `tmp_path`
  (`worker.py`: the HTTP worker of `http_worker.py`, by default a blocking
  accept() loop on fd 3; an environment probe, an output spewer, a ticker
  printing a numbered line every 10 ms) and builds `cmd` lines for them.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import psutil
import pytest

import http_worker

T = TypeVar("T")

#: Environment variables of the test runner that must not reach sockvisor: they
#: would make it adopt fds or talk to a service manager that is not there.
_SCRUBBED_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
                 "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")

_TEARDOWN_DEADLINE = 5.0


# --------------------------------------------------------------------------- waiting

def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
             message: str | Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    Fails the test after `timeout` seconds; `message` (a string, or a callable
    evaluated only on failure, e.g. to include the current log) says what was
    awaited.  An exception raised by `condition` propagates at once, which lets
    a condition fail fast (e.g. "sockvisor exited while we waited").
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for "
                                 f"{text or getattr(condition, '__name__', 'condition')}")
        time.sleep(interval)


# --------------------------------------------------------------------------- network helpers

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound to 0, read back, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def http_get(port: int, path: str = "/", host: str = "127.0.0.1",
             timeout: float = 2.0) -> dict[str, Any]:
    """GET from a test worker; return its JSON body (pid, wid, uid, ...)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        assert response.status == 200, f"HTTP {response.status}"
        return json.loads(response.read())
    finally:
        connection.close()


def unix_http_get(path: str, timeout: float = 2.0) -> dict[str, Any]:
    """The same request as `http_get`, over a unix stream socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
        return parse_http_response(read_until_eof(sock))


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_http_response(raw: bytes) -> dict[str, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"not an HTTP response: {raw[:200]!r}"
    status_line = head.split(b"\r\n", 1)[0]
    assert b" 200 " in status_line, f"unexpected status: {status_line!r}"
    return json.loads(body)


def _proc_net_listening() -> list[tuple[int, int]]:
    """(port, inode) of every listening TCP socket in this network namespace."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A":   # TCP_LISTEN
                found.append((int(local.rsplit(":", 1)[1], 16), inode))
    return found


def listening_inodes(port: int) -> set[int]:
    """Inodes of the listening TCP sockets on `port`."""
    return {inode for p, inode in _proc_net_listening() if p == port}


def socket_inodes(pid: int) -> dict[int, int]:
    """fd -> socket inode for every socket `pid` holds."""
    result = {}
    for fd, target in fd_targets(pid).items():
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            result[fd] = int(match.group(1))
    return result


def fd_targets(pid: int) -> dict[int, str]:
    """fd -> readlink target, from /proc/PID/fd."""
    directory = f"/proc/{pid}/fd"
    targets = {}
    for name in os.listdir(directory):
        try:
            targets[int(name)] = os.readlink(f"{directory}/{name}")
        except FileNotFoundError:
            pass   # closed while we looked
    return targets


# --------------------------------------------------------------------------- processes

def is_gone(pid_or_process: int | psutil.Process) -> bool:
    """True if the process no longer runs (a zombie counts as gone)."""
    try:
        process = (pid_or_process if isinstance(pid_or_process, psutil.Process)
                   else psutil.Process(pid_or_process))
        return (not process.is_running()
                or process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def run_cli(*args: str, timeout: float = 30.0, cwd: str | os.PathLike | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python -m sockvisor ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "sockvisor", *args], cwd=cwd,
                          env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def _clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class FailingSyscalls:
    """strace attached to one thread of `pid` (sockvisor's main thread: its
    children are not traced), making `syscalls` fail with `error` -- a fault
    injected into the real process.  Skips the test where strace is missing or
    may not trace.  `detach()` when done."""

    def __init__(self, pid: int, syscalls: str, error: str):
        strace = shutil.which("strace")
        if strace is None:
            pytest.skip(f"strace is needed to make {syscalls} fail")
        self.process = subprocess.Popen(
            [strace, "-p", str(pid), "-e", f"trace={syscalls}",
             "-e", f"inject={syscalls}:error={error}", "-o", "/dev/null"],
            stderr=subprocess.PIPE, text=True)
        said = self.process.stderr.readline()
        if "attached" not in said:
            self.detach()
            pytest.skip(f"strace cannot trace sockvisor here: {said.strip()}")

    def detach(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)


class Sockvisor:
    """One running `sockvisor start`, with helpers to look at it from outside."""

    def __init__(self, directory: Path, config_text: str, pass_fds: Iterable[int] = (),
                 stdout: int | None = None, argv_prefix: Iterable[str] = ()):
        # argv_prefix: a command that execs the rest (unshare, nsenter), so that
        # the pid is still sockvisor's.
        self.directory = directory
        self.conf = directory / "sockvisor.ini"
        self.conf.write_text(config_text)
        self.stdout_path = directory / "stdout"
        self.stderr_path = directory / "stderr"
        self.tracked: list[psutil.Process] = []
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*argv_prefix, sys.executable, "-m", "sockvisor", "start", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=out if stdout is None else stdout,
                stderr=err, cwd=directory,
                env=_clean_env(), start_new_session=True, pass_fds=tuple(pass_fds))
        self.pid = self.proc.pid
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<Sockvisor pid={self.pid} {self.conf}>"

    # ---- output

    def log(self) -> str:
        """sockvisor's stderr so far (its log)."""
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def describe(self) -> str:
        status = self.proc.poll()
        state = "running" if status is None else f"exited with {status}"
        return (f"sockvisor {self.pid} ({state})\n--- stderr ---\n{self.log()}"
                f"\n--- stdout ---\n{self.stdout()[-4000:]}")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1
                 ) -> list[re.Match[str]]:
        """Wait until the log has `count` lines matching the regex `pattern`."""
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> list[re.Match[str]] | None:
            matches = list(regex.finditer(self.log()))
            return matches if len(matches) >= count else None
        return wait_for(found, timeout,
                        message=lambda: f"{pattern!r} x{count} in the log\n{self.describe()}")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log(), re.MULTILINE))

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if "sockvisor ready:" in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"sockvisor exited before it was ready\n"
                                     f"{self.describe()}")
            return False
        wait_for(ready, timeout, message=lambda: f"sockvisor ready\n{self.describe()}")

    # ---- sockets

    def address(self, name: str) -> str:
        """The bound address of [socket:NAME], from the `listening on` log line."""
        match = re.search(rf"socket {re.escape(name)} listening on (\S+)$", self.log(),
                          re.MULTILINE)
        assert match, f"no 'socket {name} listening on' line\n{self.describe()}"
        return match.group(1)

    def port(self, name: str) -> int:
        return int(self.address(name).rpartition(":")[2])

    def http_get(self, port: int, path: str = "/", timeout: float = 2.0) -> dict[str, Any]:
        return http_get(port, path, timeout=timeout)

    def wait_answering(self, port: int, pids: Iterable[int], max_requests: int = 4000,
                       timeout: float = 20.0) -> set[int]:
        """Send requests, one after another and at most `max_requests`, until every
        worker in `pids` has answered one; return the pids that answered.

        The deadline is the real bound: a worker that is "started" may still be
        importing Python and not yet in accept(), and on a loaded machine the others
        answer a few hundred requests meanwhile (CI once saw 200 go by).  The count
        only keeps the loop finite should requests fail fast."""
        wanted = set(pids)
        answered: set[int] = set()
        sent = 0

        def all_answered() -> bool:
            nonlocal sent
            assert sent < max_requests, (f"only {answered} of {wanted} answered "
                                         f"{max_requests} requests")
            sent += 1
            answered.add(self.http_get(port)["pid"])
            return wanted <= answered
        # A short pause between requests: back to back, the client and the workers
        # already answering would take the CPU from the one still starting up.
        wait_for(all_answered, timeout, interval=0.005,
                 message=lambda: f"{wanted} to answer (got {answered})")
        return answered

    # ---- workers

    def children(self, include_zombies: bool = False) -> list[psutil.Process]:
        """sockvisor's direct children (its workers), remembered for teardown."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in children:
            self.track(child)
            try:
                if include_zombies or child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                pass
        return alive

    def zombies(self) -> list[int]:
        """Children of sockvisor that have exited and not been reaped."""
        zombies = []
        for child in self.children(include_zombies=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return zombies

    def worker_pids(self, match: str | None = None) -> list[int]:
        """Pids of live workers, optionally only those whose command line contains
        `match` (a fork that has not exec'd yet still looks like sockvisor)."""
        pids = []
        for child in self.children():
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            if match is None or match in cmdline:
                pids.append(child.pid)
        return sorted(pids)

    def wait_workers(self, count: int, match: str | None = None, timeout: float = 10.0,
                     exclude: Iterable[int] = ()) -> list[int]:
        """Wait until exactly `count` live workers (matching) exist, none of them in
        `exclude` (e.g. the pid just killed, to wait for its replacement)."""
        excluded = set(exclude)

        def current() -> list[int] | None:
            pids = self.worker_pids(match)
            return pids if len(pids) == count and not excluded & set(pids) else None
        return wait_for(current, timeout,
                        message=lambda: f"{count} workers matching {match!r} "
                                        f"(have {self.worker_pids(match)})\n{self.describe()}")

    def track(self, pid_or_process: int | psutil.Process) -> None:
        """Remember a process to SIGKILL at teardown if it is still there."""
        try:
            process = (pid_or_process if isinstance(pid_or_process, psutil.Process)
                       else psutil.Process(pid_or_process))
        except psutil.NoSuchProcess:
            return
        if all(p.pid != process.pid for p in self.tracked):
            self.tracked.append(process)

    # ---- stopping

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sockvisor did not exit within {timeout:g}s\n"
                                 f"{self.describe()}") from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.proc.poll() is None:
            self.children()   # remember the workers before they go
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def cleanup(self) -> None:
        """Teardown: SIGTERM, bounded wait, SIGKILL the group and every tracked pid.

        The group is killed while sockvisor is at worst a zombie not yet reaped,
        which keeps its pid — the group id — from being reused by someone else.
        """
        if self.proc.returncode is None:
            try:
                for child in psutil.Process(self.pid).children(recursive=True):
                    self.track(child)
            except psutil.NoSuchProcess:
                pass
            if not self._exited():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    wait_for(self._exited, _TEARDOWN_DEADLINE, interval=0.02)
                except AssertionError:
                    pass   # SIGKILL below
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        else:
            # Already reaped by the test: kill what is left of its group one by one.
            for process in psutil.process_iter():
                try:
                    if os.getpgid(process.pid) == self.pid:
                        process.kill()
                except (ProcessLookupError, psutil.NoSuchProcess):
                    pass
        for process in self.tracked:
            try:
                process.kill()   # psutil refuses if the pid was reused meanwhile
            except psutil.NoSuchProcess:
                pass

    def _exited(self) -> bool:
        """Has sockvisor exited?  Without reaping it (WNOWAIT)."""
        result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return result is not None


@pytest.fixture
def sockvisor(tmp_path: Path):
    """Factory: `sockvisor(body, name="sv", ready=True, globals="")` → a running Sockvisor.

    `body` holds the [socket:…] and [watcher:…] sections; `globals` extra lines
    for the [sockvisor] section; `pass_fds` fds sockvisor inherits (as from a
    careless parent); `stdout` an fd to be sockvisor's stdout instead of the
    `stdout` file (e.g. a pipe nobody reads).  Each instance gets its own directory
    `tmp_path/name` (config, stdout, stderr, the control endpoint).
    """
    instances: list[Sockvisor] = []

    def start(body: str, *, name: str = "sv", ready: bool = True, globals: str = "",
              loglevel: str = "debug", timeout: float = 15.0,
              pass_fds: Iterable[int] = (), stdout: int | None = None) -> Sockvisor:
        directory = tmp_path / name
        directory.mkdir()
        text = (f"[sockvisor]\nendpoint = ipc://{directory}/ctl\nloglevel = {loglevel}\n"
                f"{textwrap.dedent(globals).strip()}\n\n{textwrap.dedent(body).strip()}\n")
        instance = Sockvisor(directory, text, pass_fds, stdout)
        instances.append(instance)
        if ready:
            instance.wait_ready(timeout)
        return instance

    yield start
    for instance in instances:
        instance.cleanup()


# --------------------------------------------------------------------------- worker scripts

PROBE = r'''
"""Test worker: record what sockvisor handed us into a JSON file, then wait.

argv: --out PATH, then anything (recorded as is).  The file is written to a
temporary name and renamed, so a reader never sees half of it.
"""
import fcntl, json, os, signal, socket, sys

args = sys.argv[1:]
out = args[args.index("--out") + 1]
fds = {}
for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
    sock = socket.socket(fileno=fd)
    fds[str(fd)] = {"sockname": sock.getsockname(),
                    "nonblocking": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
                    "listening": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))}
    sock.detach()
seen = {"pid": os.getpid(), "argv": args,
        "env": {key: os.environ.get(key) for key in (
            "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "SERVER_STARTER_PORT",
            "SOCKVISOR_WID")},
        "fds": fds}
with open(out + ".tmp", "w") as handle:
    json.dump(seen, handle)
os.rename(out + ".tmp", out)
while True:
    signal.pause()
'''

SPEW = r'''
"""Test worker: write COUNT numbered lines of WIDTH bytes to stdout, then "done", then wait."""
import os, signal, sys

count, width = int(sys.argv[1]), int(sys.argv[2])
out = os.fdopen(1, "w", buffering=1)
for number in range(count):
    prefix = f"line {number:06d} "
    out.write(prefix + "x" * (width - len(prefix) - 1) + "\n")
out.write("done\n")
out.flush()
while True:
    signal.pause()
'''

TICKER = r'''
"""Test worker: print "tick PID N" every 10 ms, for ever; exit 4 at once if $CRASH."""
import os, sys, time

if os.environ.get("CRASH"):
    sys.exit(4)
out = os.fdopen(1, "w", buffering=1)
number = 0
while True:
    out.write(f"tick {os.getpid()} {number}\n")
    number += 1
    time.sleep(0.01)
'''

_SCRIPTS = {"probe.py": PROBE, "spew.py": SPEW, "ticker.py": TICKER}


class Scripts:
    """Worker scripts written into a directory, and `cmd` lines that run them."""

    def __init__(self, directory: Path, python: str = sys.executable):
        self.directory = directory
        self.python = python
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The script `name` in the directory, written on first use.  `worker.py` is
        the HTTP worker of `http_worker.py` (its options are documented there)."""
        if name == "worker.py":
            return http_worker.install(self.directory, name)
        target = self.directory / name
        if not target.exists():
            target.write_text(textwrap.dedent(_SCRIPTS[name]).lstrip())
            target.chmod(0o644)
        return target

    def cmd(self, name: str, *args: str) -> str:
        """A `cmd = ...` value: the interpreter, the script, then `args` (not quoted
        again, so $(sockvisor.…) substitutions stay as they are)."""
        return " ".join([shlex.quote(self.python), shlex.quote(str(self.path(name))),
                         *args])


@pytest.fixture
def scripts(tmp_path: Path) -> Scripts:
    return Scripts(tmp_path / "workers")


@pytest.fixture
def world_readable_dir():
    """A 0755 directory outside pytest's (possibly 0700) tmp tree, removed afterwards;
    for workers that run as an unprivileged user."""
    directory = tempfile.mkdtemp(prefix="sockvisor-test-")
    os.chmod(directory, 0o755)
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- Circus-style worker

# Appends "hup PID" to OUT on SIGHUP and goes on; prints "line N" to stdout on
# SIGUSR1 (flushed at once); with --tick, prints "tick N" every 0.1 s.
HUPPER = r'''
import os, signal, sys, time
args = sys.argv[1:]
out = args[args.index("--out") + 1] if "--out" in args else None
count = [0]
def hup(signum, frame):
    with open(out, "a") as handle:
        handle.write(f"hup {os.getpid()}\n")
def line(signum, frame):
    count[0] += 1
    sys.stdout.write(f"line {count[0]}\n")
    sys.stdout.flush()
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGUSR1, line)
number = 0
while True:
    if "--tick" in args:
        sys.stdout.write(f"tick {number}\n")
        sys.stdout.flush()
        number += 1
        time.sleep(0.1)
    else:
        signal.pause()
'''


@pytest.fixture
def hupper(tmp_path: Path) -> str:
    """A worker for the Circus send_hup and stream tests (HUPPER above): its command."""
    path = tmp_path / "hupper.py"
    path.write_text(HUPPER)
    return f"{sys.executable} {path}"
