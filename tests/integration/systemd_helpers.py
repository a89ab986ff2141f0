"""Helpers for the tests/integration/test_systemd_*.py tests: the test plays systemd.

* `ServiceManager` is the receiving end of $NOTIFY_SOCKET: every datagram
  sockvisor sends, parsed, with the fds passed along (FDSTORE=1), the sender's
  pid and the time it arrived on CLOCK_MONOTONIC and CLOCK_BOOTTIME.
* `Service` runs sockvisor (or a wrapper that execs it: systemd-socket-activate,
  unshare, setpriv) with the environment a service manager gives, stderr to a
  file, and kills the whole process tree at teardown.
* `write_worker` installs the sd_worker, `http_worker.py` under the name
  `sd_worker.py`: it reports readiness the sd_notify way (`--notify-after S`)
  and records what happened to it in a state directory (`--state DIR`).

Waiting is by condition with a deadline: `wait_for` from conftest.py, or a
`select` on the notify socket with a deadline; never a bare sleep.
"""

from __future__ import annotations

import array
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import psutil
import pytest

import http_worker
from conftest import parse_http_response, read_until_eof, wait_for

#: What a service manager (or the test runner's own one) may have put in our
#: environment; sockvisor gets exactly what each test says instead.
SCRUBBED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
            "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
            "FDSTORE")

#: Runs ARGV with LISTEN_PID and WATCHDOG_PID set to its own pid (what systemd
#: sets between fork and exec), after moving the fd given by --fd-at-3 to fd 3.
EXEC_AS_SELF = textwrap.dedent("""\
    import os, sys
    args = sys.argv[1:]
    if args[0] == "--fd-at-3":
        fd = int(args[1]); args = args[2:]
        if fd != 3:
            os.dup2(fd, 3)
            os.close(fd)
    for name in os.environ.get("SET_OWN_PID", "").split(","):
        if name:
            os.environ[name] = str(os.getpid())
    os.environ.pop("SET_OWN_PID", None)
    os.execvp(args[0], args)
""")

SOCKVISOR = [sys.executable, "-m", "sockvisor", "start"]

TEARDOWN_DEADLINE = 5.0


def clean_env(**overrides: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --------------------------------------------------------------------------- the manager

@dataclass
class Message:
    fields: dict[str, str]
    fds: list[int]
    pid: int | None            # the sender, as the kernel says (SCM_CREDENTIALS)
    monotonic: float           # arrival, time.monotonic() (CLOCK_MONOTONIC)
    boottime: float            # arrival, CLOCK_BOOTTIME (comparable with /proc starttime)

    def __repr__(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"<{text}{f' fds={self.fds}' if self.fds else ''} @{self.monotonic:.3f}>"


class ServiceManager:
    """A datagram socket at `address` (a path, or `@abstract`) that reads sd_notify."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[Message] = []
        self._cursor = 0

    def close(self) -> None:
        for message in self.messages:
            for fd in message.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            message.fds = []
        self.sock.close()

    def _receive(self, deadline: float) -> Message | None:
        """One datagram, or None if none arrived before `deadline`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            return None
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(64 * 4), socket.MSG_CMSG_CLOEXEC)
        now, boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        fds: list[int] = []
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[:len(payload) - len(payload) % 4])
                fds.extend(received)
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder, signed=True)
        fields = {}
        for line in data.decode().split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        message = Message(fields, fds, pid, now, boot)
        self.messages.append(message)
        return message

    def expect(self, predicate: Callable[[Message], bool], timeout: float = 15.0,
               what: str = "a message", alive: subprocess.Popen | None = None) -> Message:
        """The next message (after the last one `expect` returned) that matches.

        Fails after `timeout`, or at once if `alive` (the service) has exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.messages):
                message = self.messages[self._cursor]
                self._cursor += 1
                if predicate(message):
                    return message
            if alive is not None and alive.poll() is not None:
                # Read what it sent before it died, then give up.
                while self._receive(time.monotonic() + 0.01):
                    pass
                if any(predicate(m) for m in self.messages[self._cursor:]):
                    continue
                raise AssertionError(f"the service exited ({alive.returncode}) before "
                                     f"{what}; got {self.messages}")
            step = min(deadline, time.monotonic() + 0.1)
            if self._receive(step) is None and time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"got {self.messages}")

    def expect_field(self, key: str, value: str | None = None, **kwargs) -> Message:
        return self.expect(lambda m: key in m.fields and (value is None
                                                          or m.fields[key] == value),
                           what=f"{key}={value if value is not None else '*'}", **kwargs)

    def collect(self, seconds: float) -> list[Message]:
        """Every message that arrives in the next `seconds` (a bounded window)."""
        deadline = time.monotonic() + seconds
        start = len(self.messages)
        while self._receive(deadline) is not None:
            pass
        self._cursor = len(self.messages)
        return self.messages[start:]

    def with_key(self, key: str) -> list[Message]:
        return [m for m in self.messages if key in m.fields]

    def fd_store(self) -> dict[str, list[int]]:
        """The inodes systemd's fd store would hold, by FDNAME, after the messages so
        far.  As systemd does: FDSTOREREMOVE=1 drops every fd named FDNAME, and a
        FDSTORE=1 of a file already in the store is suppressed -- the stored fd
        keeps its first name."""
        store: list[tuple[str, tuple[int, int]]] = []
        for message in self.messages:
            name = message.fields.get("FDNAME", "stored")
            if message.fields.get("FDSTOREREMOVE") == "1":
                store = [(n, file) for n, file in store if n != name]
            if message.fields.get("FDSTORE") == "1":
                for fd in message.fds:
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) not in {file for _, file in store}:
                        store.append((name, (st.st_dev, st.st_ino)))
        by_name: dict[str, list[int]] = {}
        for name, (_dev, inode) in store:
            by_name.setdefault(name, []).append(inode)
        return by_name


# --------------------------------------------------------------------------- the service

def write_config(directory: Path, body: str, *, globals_: str = "",
                 loglevel: str = "debug", endpoint: Path | None | bool = None) -> Path:
    """`directory/sockvisor.ini`: [sockvisor] with an ipc endpoint, then `body`.

    `endpoint=False` writes none: sockvisor then uses its default endpoint, and
    runs without a control channel when its interpreter has no pyzmq.
    """
    if endpoint is False:
        endpoint_line = ""
    else:
        endpoint_line = f"endpoint = ipc://{endpoint or directory / 'ctl'}\n"
    conf = directory / "sockvisor.ini"
    conf.write_text(f"[sockvisor]\n{endpoint_line}loglevel = {loglevel}\n"
                    f"{textwrap.dedent(globals_).strip()}\n\n"
                    f"{textwrap.dedent(body).strip()}\n")
    return conf


class Service:
    """A process tree rooted at `argv` (sockvisor, or something that execs it)."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path, *,
                 stderr_path: Path | None = None, pass_fds: Iterable[int] = (),
                 name: str = "service") -> None:
        self.argv = argv
        self.directory = directory
        self.stderr_path = stderr_path or directory / f"{name}.stderr"
        self.stdout_path = directory / f"{name}.stdout"
        self.tracked: dict[int, psutil.Process] = {}
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=directory,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         pass_fds=tuple(pass_fds), start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        status = self.proc.poll()
        state = "running" if status is None else f"exited with {status}"
        return (f"{shlex.join(self.argv)} [{self.pid}] {state}\n--- stderr ---\n"
                f"{self.log()}")

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> re.Match[str] | None:
            match = regex.search(self.log())
            if match is None and self.proc.poll() is not None:
                match = regex.search(self.log())
                if match is None:
                    raise AssertionError(f"exited before logging {pattern!r}\n"
                                         f"{self.describe()}")
            return match
        return wait_for(found, timeout, message=lambda: f"{pattern!r} in the log\n"
                                                        f"{self.describe()}")

    def track(self) -> None:
        """Remember every process of the tree, to kill whatever is left at teardown."""
        try:
            root = psutil.Process(self.pid)
            for process in [root, *root.children(recursive=True)]:
                self.tracked.setdefault(process.pid, process)
        except psutil.NoSuchProcess:
            pass

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout:g}s\n"
                                 f"{self.describe()}") from None

    def cleanup(self) -> None:
        self.track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TEARDOWN_DEADLINE)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for process in self.tracked.values():
            try:
                process.kill()       # psutil refuses if the pid was reused meanwhile
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(TEARDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            pass


class Services:
    """Factory fixture helper: starts `Service`s and cleans all of them up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Service] = []

    def start(self, argv: list[str], env: dict[str, str], **kwargs) -> Service:
        service = Service(argv, env, self.directory, **kwargs)
        self.started.append(service)
        return service

    def cleanup(self) -> None:
        for service in reversed(self.started):
            service.cleanup()


def exec_as_self(argv: list[str], *, fd_at_3: int | None = None,
                 own_pid: tuple[str, ...] = ("LISTEN_PID",),
                 python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """argv (and env additions) that run `argv` with `own_pid` variables set to
    its own pid, and `fd_at_3` moved to fd 3, as a service manager does."""
    wrapper = [python, "-c", EXEC_AS_SELF]
    if fd_at_3 is not None:
        wrapper += ["--fd-at-3", str(fd_at_3)]
    return wrapper + argv, {"SET_OWN_PID": ",".join(own_pid)}


# --------------------------------------------------------------------------- workers

def write_worker(directory: Path) -> Path:
    """The sd_worker: `http_worker.py` (a blocking accept() loop on fd 3 answering
    HTTP with JSON) written as `sd_worker.py` in `directory`.  The systemd tests use
    its `--state DIR`, `--notify-after S` and `--daemonize` options."""
    return http_worker.install(directory, "sd_worker.py")


def worker_states(state_dir: Path) -> list[dict]:
    """What each worker recorded (complete files only), oldest first."""
    states = []
    for path in state_dir.glob("*.json"):
        try:
            states.append(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            pass
    return sorted(states, key=lambda s: s["started"])


def read_http_reply(sock: socket.socket) -> dict:
    """Read a whole HTTP/1.0 reply from `sock` and return its JSON body."""
    return parse_http_response(read_until_eof(sock))


def send_request(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")


def ns_pid(host_pid: int) -> list[int]:
    """The pids of `host_pid` in each nested PID namespace (NSpid in /proc)."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(part) for part in line.split()[1:]]
    return [host_pid]


def boottime_started(pid: int) -> float:
    """When `pid` was forked, on CLOCK_BOOTTIME (from /proc/PID/stat, 1/CLK_TCK s)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Probe:
    """Result of a one-off check, for skip decisions."""
    ok: bool
    reason: str = ""
    extra: dict = field(default_factory=dict)


def can_unshare_pid() -> Probe:
    if os.geteuid() != 0:
        return Probe(False, "needs root to create a PID namespace")
    try:
        result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return Probe(False, f"unshare unavailable: {exc}")
    if result.returncode != 0:
        return Probe(False, f"unshare --pid --fork --mount-proc fails here: "
                            f"{result.stderr.strip()}")
    return Probe(True)


# --------------------------------------------------------------------------- fixtures
# Imported by the test_systemd_* modules (pytest registers imported fixtures).

@pytest.fixture
def services(tmp_path):
    """Processes a test starts; the whole tree of each is killed at teardown."""
    started = Services(tmp_path)
    yield started
    started.cleanup()


@pytest.fixture
def manager(tmp_path):
    """The test playing systemd: a datagram NOTIFY_SOCKET in tmp_path."""
    made = ServiceManager(str(tmp_path / "notify.sock"))
    yield made
    made.close()
