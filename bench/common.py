"""Shared pieces of the side-by-side benchmarks (sockvisor vs Circus 0.19).

Every benchmark runs the real supervisors as separate processes, on a config
written to a private temp directory, serving the same tiny worker on a loopback
socket, and measures them from outside:

  * `free_port()` picks an ephemeral port on 127.0.0.1 for a `[socket:web]`;
  * `write_worker(directory)` writes `worker.py`, which runs the tests' stdlib-only
    HTTP worker (tests/http_worker.py) with its arguments: it serves on an
    inherited listening fd, fd 3 under sockvisor (checked the sd_listen_fds way:
    `LISTEN_PID` must be its own pid), or the fd given as `--fd
    $(circus.sockets.web)` under Circus (`worker_args()`).  It answers every
    request with JSON that holds its pid, so a client can tell which worker served
    it.  `WORKER_OPTIONS` make it wait in select() (Circus's sockets are
    non-blocking); `reload_worker_options(start_delay)` make it fit for reloads:
    it ends on SIGTERM only between two requests, can take `start_delay` seconds
    to start, and then sends `READY=1` to $NOTIFY_SOCKET if it has one;
  * `start_sockvisor(...)` / `start_circus(...)` write the config, start the
    supervisor (its output goes to a log file in the temp directory), wait until
    a worker answers, and return a `Supervised` handle; `Supervised.stop()` stops
    it (SIGTERM, bounded wait, SIGKILL) and kills any worker left behind;
  * `Supervised.endpoint` is the supervisor's control endpoint (ipc:// in the temp
    directory); `console_script(name)` finds sockvisorctl / circusctl themselves, not
    a pyenv shim;
  * `http_get_pid()` asks the worker which pid it is (tests/http_load.py's
    `request`; `on_connect` sees the connection first); `NewChildPoller` notices a
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

# The worker is the tests' HTTP worker, tests/http_worker.py (one program for the
# tests and the benchmarks; its options are documented there), and the one client
# request is tests/http_load.py's.
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS_DIR not in sys.path:
    sys.path.append(TESTS_DIR)
import http_load  # noqa: E402
import http_worker  # noqa: E402

# The plain worker: it waits in select() and lets EAGAIN pass, because Circus hands
# out non-blocking listening sockets and O_NONBLOCK lives on the file the
# supervisor shares (so the worker must not change the flag under its supervisor).
WORKER_OPTIONS: tuple[str, ...] = ("--poll",)


# --------------------------------------------------------------------------- small helpers

def free_port(host: str = HOST) -> int:
    """An ephemeral TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def write_worker(directory: str) -> str:
    """Install the worker in `directory`: a copy of tests/http_worker.py, its bytecode
    compiled once into __pycache__, and `worker.py`, which imports it and runs it with
    its arguments; the path of `worker.py`.

    Run as a script, the program would be compiled again at every start (and so would
    an import without the .pyc, where bytecode is not written: PYTHONDONTWRITEBYTECODE):
    a few ms of every respawn figure that belong to neither supervisor.
    """
    import importlib.util
    import py_compile
    module = str(http_worker.install(directory))
    py_compile.compile(module, cfile=importlib.util.cache_from_source(module), doraise=True)
    path = os.path.join(directory, "worker.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"import sys\nsys.path.insert(0, {directory!r})\n"
                     "import http_worker\nhttp_worker.main(sys.argv[1:])\n")
    return path


def reload_worker_options(start_delay: float = 0.0) -> tuple[str, ...]:
    """The worker made fit for reloads.  A stop ends it only between two requests, as
    any real server's graceful stop does (otherwise every reload would cut the request
    in progress, under either supervisor); give it a non-blocking socket (Circus
    always does; sockvisor with `blocking = false`), so that a worker that loses the
    race for a connection goes back to select() and notices the stop.  It sleeps
    `start_delay` seconds ("initialisation") before it serves, then sends READY=1 to
    $NOTIFY_SOCKET if it has one (sockvisor sets it for every worker; Circus does not)."""
    return ("--graceful", "--delay", repr(float(start_delay)), "--notify")


def worker_args(worker: str, options: Sequence[str], fd: str | None = None) -> str:
    """The worker's arguments after the interpreter: the script, `--fd FD` (Circus:
    `$(circus.sockets.web)`; sockvisor: none, fd 3 by sd_listen_fds), the options."""
    return " ".join([worker, *(["--fd", fd] if fd else []), *options])


def console_script(name: str) -> str:
    """The installed console script `name` in this interpreter's scripts directory.

    Not whatever PATH finds first: under pyenv that is a bash shim that adds about
    100 ms to every call.
    """
    import sysconfig
    path = os.path.join(sysconfig.get_path("scripts"), name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{name} is not installed in {os.path.dirname(path)}")
    return path


def http_get_pid(port: int, timeout: float,
                 on_connect: Callable[[socket.socket], None] | None = None) -> int:
    """GET / from the worker behind 127.0.0.1:`port`; return the pid it says it has.

    Raises OSError (connection refused/reset, timeout) or ValueError (not our answer);
    `http_load.classify` names which.  `on_connect(conn)`, if given, is called once the
    connection is established and before the request is sent (soak.py notes the client
    port there, to tell later which worker had accepted a request that failed).
    """
    pid = http_load.request(port, timeout, on_connect).get("pid")
    if not isinstance(pid, int):
        raise ValueError(f"no pid in the answer from port {port}")
    return pid


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
    endpoint: str = ""             # the control endpoint

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
        """Wait until exactly `numprocesses` workers (default 1) run and one of them
        answers; return the first one's pid (with one worker: the worker's pid)."""
        expected = int(self.settings.get("numprocesses", 1))  # type: ignore[arg-type]

        def serving() -> int | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with status "
                                   f"{self.process.returncode}:\n{self.log_tail()}")
            pids = self.workers()
            if len(pids) == expected and http_get_pid(self.port, timeout=1.0) in pids:
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
            config_path: str, settings: dict[str, object], timeout: float,
            endpoint: str = "") -> Supervised:
    log_path = os.path.join(directory, f"{kind}.log")
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=directory,
                               start_new_session=True)
    supervised = Supervised(label, kind, process, directory, port, config_path, log_path,
                            settings, log, endpoint)
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
                    timeout: float = 15.0,
                    worker_options: Sequence[str] = WORKER_OPTIONS,
                    socket_options: dict[str, object] | None = None) -> Supervised:
    """Start `sockvisor start` on a fresh config in `directory` (which must exist).

    `socket_options` go into `[socket:web]` (e.g. `blocking = false`).
    """
    port = free_port()
    worker = write_worker(directory)
    options: dict[str, object] = {"cmd": f"{sys.executable} "
                                         f"{worker_args(worker, worker_options)}",
                                  "numprocesses": numprocesses, "sockets": "web",
                                  "graceful_timeout": 5}
    options.update(watcher or {})
    endpoint = f"ipc://{directory}/sockvisor-control"
    config = {"sockvisor": {"loglevel": loglevel,
                            "endpoint": endpoint,
                            "pubsub_endpoint": f"ipc://{directory}/sockvisor-events",
                            **(globals_ or {})},
              "socket:web": {"host": HOST, "port": port, **(socket_options or {})},
              "watcher:web": options}
    path = os.path.join(directory, "sockvisor.ini")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_ini(config))
    argv = [sys.executable, "-m", "sockvisor", "start", path]
    return _launch(label, "sockvisor", argv, directory, port, path, options, timeout,
                   endpoint)


def start_circus(directory: str, *, label: str = "circus",
                 check_delay: float | None = None,
                 watcher: dict[str, object] | None = None,
                 numprocesses: int = 1, loglevel: str = "warning",
                 timeout: float = 15.0,
                 worker_options: Sequence[str] = WORKER_OPTIONS) -> Supervised:
    """Start `circusd` on a fresh config in `directory`; check_delay None: Circus's default."""
    port = free_port()
    worker = write_worker(directory)
    options: dict[str, object] = {"cmd": sys.executable,
                                  "args": worker_args(worker, worker_options,
                                                      "$(circus.sockets.web)"),
                                  "numprocesses": numprocesses, "use_sockets": "True",
                                  "graceful_timeout": 5}
    options.update(watcher or {})
    endpoint = f"ipc://{directory}/circus-control"
    circus_options: dict[str, object] = {
        "endpoint": endpoint,
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
    return _launch(label, "circus", argv, directory, port, path, settings, timeout,
                   endpoint)


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


# --------------------------------------------------------------------------- any worker, any config
# Used by throughput.py, idle.py and scale.py: workers that are not the HTTP worker
# (a Go HTTP server, /bin/sleep), sockets optional, readiness decided by the caller.

def launch_supervisor(kind: str, directory: str, sections: dict[str, dict[str, object]],
                      *, label: str | None = None, loglevel: str = "warning",
                      port: int = 0, ready: Callable[["Supervised"], object] | None = None,
                      timeout: float = 30.0) -> Supervised:
    """Write `sections` as `<kind>.ini` in `directory` and start sockvisor or circusd on it.

    `ready(supervised)` is polled (see `wait_for`) until it returns something truthy;
    None: only wait until the control endpoint answers.  On any failure the
    supervisor is stopped before the exception propagates.
    """
    if kind not in ("sockvisor", "circus"):
        raise ValueError(f"unknown supervisor kind {kind!r}")
    path = os.path.join(directory, f"{kind}.ini")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_ini(sections))
    if kind == "sockvisor":
        argv = [sys.executable, "-m", "sockvisor", "start", path]
    else:
        argv = [sys.executable, "-c", "from circus.circusd import main; main()",
                "--log-level", loglevel, path]
    log_path = os.path.join(directory, f"{kind}.log")
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=directory,
                               start_new_session=True)
    watcher = next((v for k, v in sections.items() if k.startswith("watcher:")), {})
    supervised = Supervised(label or kind, kind, process, directory, port, path, log_path,
                            dict(watcher), log)
    check = ready or (lambda sup: control_call(sup, "list", timeout=1.0))

    def condition() -> object:
        if process.poll() is not None:
            raise RuntimeError(f"{supervised.label} exited with status "
                               f"{process.returncode}:\n{supervised.log_tail()}")
        return check(supervised)
    try:
        wait_for(condition, timeout, interval=0.05, what=f"{supervised.label} to be ready")
    except TimeoutError as exc:
        supervised.stop()
        raise TimeoutError(f"{exc}\n{supervised.log_tail()}") from None
    except BaseException:
        supervised.stop()
        raise
    return supervised


def control_endpoint(supervised: Supervised) -> str:
    """The control endpoint of a supervisor started by this module."""
    with open(supervised.config_path, encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition("=")
            if key.strip() == "endpoint":
                return value.strip()
    raise ValueError(f"no endpoint in {supervised.config_path}")


_CLIENTS: dict[tuple[int, str], object] = {}


def control_call(supervised: Supervised, command: str,
                 properties: dict[str, object] | None = None,
                 timeout: float = 10.0) -> dict[str, object]:
    """One request on the supervisor's control channel, with its own in-process client
    (sockvisor's ControlClient, Circus's CircusClient), kept open between calls.

    Raises OSError when no answer came or the reply is an error (so that `wait_for`
    keeps polling).
    """
    key = (supervised.pid, supervised.kind)
    client = _CLIENTS.get(key)
    if supervised.kind == "sockvisor":
        from sockvisor.control.client import ControlClient, Unreachable
        if client is None:
            try:
                client = ControlClient(control_endpoint(supervised), timeout)
            except Unreachable as exc:
                raise OSError(str(exc)) from None
            _CLIENTS[key] = client
        try:
            reply = client.call(command, properties or {}, timeout=timeout)  # type: ignore[attr-defined]
        except Unreachable as exc:
            close_control(supervised)     # a DEALER that missed a reply: start afresh
            raise OSError(str(exc)) from None
    else:
        from circus.client import CircusClient
        from circus.exc import CallError
        if client is None:
            client = CircusClient(endpoint=control_endpoint(supervised), timeout=timeout)
            _CLIENTS[key] = client
        client.timeout = timeout * 1000  # type: ignore[attr-defined]  # CircusClient: ms
        try:
            reply = client.call({"command": command,  # type: ignore[attr-defined]
                                 "properties": properties or {}})
        except CallError as exc:
            close_control(supervised)
            raise OSError(str(exc)) from None
    if reply.get("status") == "error":
        raise OSError(f"{supervised.label} {command}: {reply.get('reason', reply)}")
    return reply


def close_control(supervised: Supervised) -> None:
    client = _CLIENTS.pop((supervised.pid, supervised.kind), None)
    if client is not None:
        with contextlib.suppress(Exception):
            if supervised.kind == "sockvisor":
                client.close()  # type: ignore[attr-defined]
            else:
                client.stop()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- /proc sampling

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads, the dead ones included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS   # fields 14 and 15 of stat


def proc_context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every live thread of `pid`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith(("voluntary_ctxt_switches",
                                        "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def kill_processes_with_argv(argv: Sequence[str], sig: int = signal.SIGKILL) -> int:
    """Signal every process whose command line is exactly `argv`; how many there were.

    The benchmarks give their workers an argv no other process has (a private
    binary path, `/bin/sleep <unlikely number>`), so this clean-up finds workers
    wherever they went: other process groups, reparented, supervisor killed.
    """
    wanted = b"\0".join(a.encode() for a in argv) + b"\0"
    count = 0
    for pid in _proc_pids():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read() != wanted:
                    continue
            os.kill(pid, sig)
            count += 1
    return count


def processes_with_argv_prefix(prefix: Sequence[str]) -> list[int]:
    """Pids whose command line starts with `prefix`."""
    wanted = b"\0".join(a.encode() for a in prefix) + b"\0"
    found = []
    for pid in _proc_pids():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(wanted):
                    found.append(pid)
    return found


# --------------------------------------------------------------------------- figures for run_all.py
# Each benchmark's --json output may carry a top-level "figures" list; run_all.py
# prints those rows in its combined table.  One figure:
#   {"figure": str, "sockvisor": str, "circus": str, "other": str (e.g. direct, nginx),
#    "ratio": str, "target": str, "met": True | False | None (no target)}
# Values are already formatted for the table (with units); "ratio" says which way.

def figure(name: str, sockvisor: str, circus: str = "", ratio: str = "",
           target: str = "", met: bool | None = None, other: str = "") -> dict[str, object]:
    return {"figure": name, "sockvisor": sockvisor, "circus": circus, "other": other,
            "ratio": ratio, "target": target, "met": met}
