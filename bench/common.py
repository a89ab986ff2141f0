"""Shared pieces of the side-by-side benchmarks (sockvisor vs Circus 0.19).

Every benchmark runs the real supervisors as separate processes, on a config
written to a private temp directory, serving the same tiny worker on a loopback
socket, and measures them from outside:

  * `free_port()` picks an ephemeral port on 127.0.0.1 for a `[socket:web]`;
  * `write_worker(directory)` writes `WORKER_SOURCE`, a stdlib-only HTTP worker
    that serves on an inherited listening fd: fd 3 under sockvisor (checked the
    sd_listen_fds way: `LISTEN_PID` must be its own pid, `LISTEN_FDS` >= 1), or
    the fd number given as argv[1] under Circus (`$(circus.sockets.web)`).  It
    answers every request with `pid <its pid>`, so a client can tell which worker
    served it;
  * `start_sockvisor(...)` / `start_circus(...)` write the config, start the
    supervisor (its output goes to a log file in the temp directory), wait until
    a worker answers, and return a `Supervised` handle; `Supervised.stop()` stops
    it (SIGTERM, bounded wait, SIGKILL) and kills any worker left behind;
  * `http_get_pid()` asks the worker which pid it is; `NewChildPoller` notices a
    new child of the supervisor cheaply enough to poll every 0.5 ms;
  * `median()`, `percentile()`, `format_table()` and `machine_info()` for the report.

Everything stays on 127.0.0.1; nothing here needs root.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import psutil

HOST = "127.0.0.1"

# The worker: a plain accept loop, so that its start-up is mostly the interpreter's.
# Circus hands out non-blocking listening sockets and O_NONBLOCK lives on the
# file the supervisor shares, so the worker waits with select() and tolerates
# EAGAIN instead of changing the flag under its supervisor.
WORKER_SOURCE = '''\
"""Benchmark worker: answers every HTTP request with its pid, on an inherited fd."""
import os, select, socket, sys

def listening_fd():
    if len(sys.argv) > 1:                      # Circus: $(circus.sockets.web)
        return int(sys.argv[1])
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("worker: LISTEN_PID is not my pid; no socket was passed to me")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("worker: LISTEN_FDS < 1")
    return 3                                   # sd_listen_fds: the first fd is 3

def main():
    listener = socket.socket(fileno=listening_fd())
    body = ("pid %d\\n" % os.getpid()).encode()
    answer = (b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n"
              b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body)) + body
    while True:
        select.select([listener], [], [])
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        try:
            conn.settimeout(5)
            request = b""
            while b"\\r\\n\\r\\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()

main()
'''


# --------------------------------------------------------------------------- small helpers

def free_port(host: str = HOST) -> int:
    """An ephemeral TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def write_worker(directory: str) -> str:
    path = os.path.join(directory, "worker.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(WORKER_SOURCE)
    return path


def http_get_pid(port: int, timeout: float, host: str = HOST) -> int:
    """GET / from the worker behind `port`; return the pid it says it has.

    Raises OSError (connection refused/reset, timeout) or ValueError (not our answer).
    """
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ValueError(f"unexpected answer {data[:80]!r}")
    word, _, number = body.strip().partition(b" ")
    if word != b"pid" or not number.isdigit():
        raise ValueError(f"unexpected body {body[:80]!r}")
    return int(number)


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.01,
             what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            result = condition()
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _proc_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat[stat.rindex(b")") + 2:].split()[1])


class NewChildPoller:
    """Notices a child of `parent` that did not exist when the poller was armed.

    psutil's `Process.children()` reads /proc/*/stat for every process on the
    machine (about 1.2 ms a call on the machine these numbers come from), which is
    longer than the 0.5 ms poll interval and keeps a CPU busy while the supervisor
    and the new worker need it.  This does the same ppid test, but reads the stat
    file only of pids that appeared since `arm()`: one listdir of /proc per poll.
    Every `full_every` polls it also asks psutil, in case the new child reused a
    pid from the snapshot.
    """

    def __init__(self, parent: int, full_every: int = 200):
        self.parent = parent
        self.full_every = full_every
        self.known: set[int] = set()
        self.exclude: set[int] = set()
        self.polls = 0

    def arm(self, exclude: Iterable[int] = ()) -> None:
        self.known = _proc_pids()
        self.exclude = set(exclude)
        self.polls = 0

    def poll(self) -> int | None:
        self.polls += 1
        for pid in sorted(_proc_pids() - self.known):
            if _ppid(pid) == self.parent:
                return pid
        if self.polls % self.full_every == 0:
            for pid in children(self.parent):
                if pid not in self.exclude:
                    return pid
        return None


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of `pid`, by psutil."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
    return found


# --------------------------------------------------------------------------- statistics

def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 align: str | None = None) -> str:
    """A plain-text table; `align` has one 'l' or 'r' per column (default: first l)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(row, widths, align)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def machine_info() -> dict[str, object]:
    import circus
    import sockvisor
    info: dict[str, object] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "circus": circus.__version__,
        "sockvisor": sockvisor.__version__,
        "psutil": psutil.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "sockvisor"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if head:
            info["sockvisor_commit"] = head + ("+uncommitted sockvisor/ changes" if dirty else "")
    return info


# --------------------------------------------------------------------------- supervisors

@dataclass
class Supervised:
    """A running supervisor with one watcher `web` on 127.0.0.1:`port`."""
    label: str
    kind: str                      # "sockvisor" or "circus"
    process: subprocess.Popen
    directory: str
    port: int
    config_path: str
    log_path: str
    settings: dict[str, object] = field(default_factory=dict)
    _log: object = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def workers(self) -> list[int]:
        """Live worker pids: children of the supervisor running the worker script."""
        found = []
        for pid in children(self.pid):
            with contextlib.suppress(psutil.Error):
                if any(arg.endswith("worker.py") for arg in psutil.Process(pid).cmdline()):
                    found.append(pid)
        return found

    def wait_serving(self, timeout: float = 15.0) -> int:
        """Wait until exactly one worker runs and answers; return its pid."""
        def serving() -> int | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with status "
                                   f"{self.process.returncode}:\n{self.log_tail()}")
            pids = self.workers()
            if len(pids) == 1 and http_get_pid(self.port, timeout=1.0) == pids[0]:
                return pids[0]
            return None
        try:
            return wait_for(serving, timeout, what=f"{self.label} to serve")  # type: ignore[return-value]
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                tail = handle.read().splitlines()[-lines:]
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(f"  | {line}" for line in tail) or "  | (log is empty)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; kill any worker left behind."""
        leftover: list[int] = []
        with contextlib.suppress(psutil.Error):
            leftover = children(self.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return self.process.returncode


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for name, options in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in options.items())
        out.append("")
    return "\n".join(out)


def _launch(label: str, kind: str, argv: list[str], directory: str, port: int,
            config_path: str, settings: dict[str, object], timeout: float) -> Supervised:
    log_path = os.path.join(directory, f"{kind}.log")
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=directory,
                               start_new_session=True)
    supervised = Supervised(label, kind, process, directory, port, config_path, log_path,
                            settings, log)
    try:
        supervised.wait_serving(timeout)
    except BaseException:
        supervised.stop()
        raise
    return supervised


def start_sockvisor(directory: str, *, label: str = "sockvisor",
                    watcher: dict[str, object] | None = None,
                    globals_: dict[str, object] | None = None,
                    numprocesses: int = 1, loglevel: str = "warning",
                    timeout: float = 15.0) -> Supervised:
    """Start `sockvisor start` on a fresh config in `directory` (which must exist)."""
    port = free_port()
    worker = write_worker(directory)
    options: dict[str, object] = {"cmd": f"{sys.executable} {worker}",
                                  "numprocesses": numprocesses, "sockets": "web",
                                  "graceful_timeout": 5}
    options.update(watcher or {})
    config = {"sockvisor": {"loglevel": loglevel,
                            "endpoint": f"ipc://{directory}/sockvisor-control",
                            "pubsub_endpoint": f"ipc://{directory}/sockvisor-events",
                            **(globals_ or {})},
              "socket:web": {"host": HOST, "port": port},
              "watcher:web": options}
    path = os.path.join(directory, "sockvisor.ini")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_ini(config))
    argv = [sys.executable, "-m", "sockvisor", "start", path]
    return _launch(label, "sockvisor", argv, directory, port, path, options, timeout)


def start_circus(directory: str, *, label: str = "circus",
                 check_delay: float | None = None,
                 watcher: dict[str, object] | None = None,
                 numprocesses: int = 1, loglevel: str = "warning",
                 timeout: float = 15.0) -> Supervised:
    """Start `circusd` on a fresh config in `directory`; check_delay None: Circus's default."""
    port = free_port()
    worker = write_worker(directory)
    options: dict[str, object] = {"cmd": sys.executable,
                                  "args": f"{worker} $(circus.sockets.web)",
                                  "numprocesses": numprocesses, "use_sockets": "True",
                                  "graceful_timeout": 5}
    options.update(watcher or {})
    circus_options: dict[str, object] = {
        "endpoint": f"ipc://{directory}/circus-control",
        "pubsub_endpoint": f"ipc://{directory}/circus-pubsub",
        "statsd": "False",
    }
    if check_delay is not None:
        circus_options["check_delay"] = check_delay
    config = {"circus": circus_options,
              "socket:web": {"host": HOST, "port": port},
              "watcher:web": options}
    path = os.path.join(directory, "circus.ini")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_ini(config))
    argv = [sys.executable, "-c", "from circus.circusd import main; main()",
            "--log-level", loglevel, path]
    settings = {**options, "check_delay": effective_circus_check_delay(path)}
    return _launch(label, "circus", argv, directory, port, path, settings, timeout)


def effective_circus_check_delay(config_path: str) -> float:
    """check_delay as circusd will read it from `config_path` (its default included)."""
    from circus.config import get_config
    return float(get_config(config_path)["check_delay"])


@contextlib.contextmanager
def temp_directory(prefix: str = "sockvisor-bench-", keep: bool = False):
    """A private (0700) temp directory, removed afterwards unless `keep`."""
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        yield directory
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
