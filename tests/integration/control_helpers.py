"""Helpers for the reload and scaling tests: talk to sockvisor over its control
channel, a worker that serves HTTP on fd 3 with sd_notify readiness and a graceful
SIGTERM, and a bounded client load that records every request.

Built on `conftest.py` (its `sockvisor` fixture starts the real binary, its
`wait_for` is the one way to wait).  Ports are read back through the control
channel (`listsockets`), never guessed.

The worker (`ServeWorker`: `http_worker.py` with `--mode-file PATH --graceful
--notify --exit-if-set CRASH`) reads a *mode file* when it starts, so a test can
change what the next generation does without touching the config:

* ``delay=SECONDS`` — sleep that long before sending ``READY=1`` (slow start);
* ``crash`` — exit with status 3 at once (a generation that cannot start);
* ``noready`` — never send ``READY=1`` and never serve;
* ``ready_then_exit=SECONDS`` — send ``READY=1`` at once, never serve, and exit
  with status 3 that much later: gunicorn's master says READY=1 before its
  workers import the app, and halts when they cannot;
* anything else (or no file) — start at once.

It also exits with status 4 when ``$CRASH`` is set, for `set web env CRASH=1`.
It answers each request with ``{"pid", "wid"}`` and, on SIGTERM, finishes the
request in hand and exits: the old generation retires without dropping a
request.  Its socket must be non-blocking (``blocking = false``), so that a
worker that loses the race for a connection goes back to `select` instead of
blocking in `accept`, where it could not notice SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import http_worker
from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import is_error

from conftest import Sockvisor, _clean_env, parse_http_response, read_until_eof, wait_for

#: The options that make `http_worker.py` the worker described above.
SERVE_OPTIONS = ("--graceful", "--notify", "--exit-if-set", "CRASH")


class ServeWorker:
    """The worker script and its mode file, in a directory of the test."""

    def __init__(self, directory: Path):
        self.script = http_worker.install(directory, "serve.py")
        self.mode_file = directory / "mode"
        self.set_mode("")

    @property
    def cmd(self) -> str:
        return http_worker.cmd(self.script, "--mode-file", self.mode_file, *SERVE_OPTIONS)

    def set_mode(self, text: str) -> None:
        """What workers started from now on do (see the module docstring)."""
        tmp = self.mode_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(self.mode_file)


# --------------------------------------------------------------------------- control channel

def endpoint(sv: Sockvisor) -> str:
    return f"ipc://{sv.directory}/ctl"


@contextlib.contextmanager
def control(sv: Sockvisor, timeout: float = 30.0) -> Iterator["Control"]:
    client = Control(sv, timeout)
    try:
        yield client
    finally:
        client.close()


class Control:
    """A ControlClient (one zmq socket: use one per thread) with checked calls."""

    def __init__(self, sv: Sockvisor, timeout: float = 30.0):
        self.sv = sv
        self.client = ControlClient(endpoint(sv), timeout)

    def close(self) -> None:
        self.client.close()

    def raw(self, command: str, timeout: float | None = None, **properties: Any
            ) -> dict[str, Any]:
        return self.client.call(command, properties, timeout=timeout)

    def call(self, command: str, timeout: float | None = None, **properties: Any
             ) -> dict[str, Any]:
        reply = self.raw(command, timeout=timeout, **properties)
        # Not `status == "ok"`: `status` replies put the watcher's state there, as
        # Circus does; an error is what carries an errno.
        assert not is_error(reply), (f"{command} {properties} failed: {reply}\n"
                                             f"{self.sv.describe()}")
        return reply

    def status(self, name: str) -> dict[str, Any]:
        """The `status NAME` detail: state, generation, ready, workers [...]."""
        return self.call("status", name=name)["watcher"]

    def port(self, socket_name: str) -> int:
        for entry in self.call("listsockets")["sockets"]:
            if entry["name"] == socket_name:
                return entry["port"]
        raise AssertionError(f"no socket {socket_name!r} in listsockets")

    def wait_ready(self, name: str, count: int, timeout: float = 10.0,
                   generation: int | None = None) -> dict[str, Any]:
        """Wait until NAME is active with exactly `count` workers, all ready (and all
        of `generation`, if given); return that status."""
        def settled() -> dict[str, Any] | None:
            detail = self.status(name)
            workers = detail["workers"]
            if (detail["state"] == "active" and len(workers) == count
                    and all(w["ready"] for w in workers)
                    and (generation is None
                         or all(w["generation"] == generation for w in workers))):
                return detail
            return None
        return wait_for(settled, timeout,
                        message=lambda: f"{name}: {count} ready workers "
                                        f"(status {self.status(name)})\n{self.sv.describe()}")


def ctl(sv: Sockvisor, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `sockvisorctl --endpoint … ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint",
                           endpoint(sv), *args], env=_clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def worker_pids(detail: dict[str, Any], generation: int | None = None) -> set[int]:
    return {w["pid"] for w in detail["workers"]
            if generation is None or w["generation"] == generation}


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat ("R", "S", "Z" for a zombie...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def is_reaped(pid: int) -> bool:
    """The pid is gone for good: its parent collected it (a killed child stays in
    /proc as a zombie until then).  Tests check this soon after the kill, before
    the pid could be reused."""
    return not os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------- client load

def request_once(port: int, timeout: float = 5.0) -> dict[str, Any]:
    """One GET on a new connection; the worker's JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
        return parse_http_response(read_until_eof(sock))


@dataclass
class Sample:
    started: float       # time.monotonic() when the request began
    latency: float
    pid: int | None      # None: it failed
    error: str = ""


@dataclass
class Load:
    """A few threads doing GETs, each on a new connection, until `stop()` or until
    `max_requests` in all; every request is recorded."""
    port: int
    threads: int = 3
    max_requests: int = 20000
    pause: float = 0.0          # between two requests of one thread
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.threads)]

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            began = time.monotonic()
            try:
                pid = request_once(self.port)["pid"]
                sample = Sample(began, time.monotonic() - began, pid)
            except Exception as exc:   # noqa: BLE001 - every failure is a result
                sample = Sample(began, time.monotonic() - began, None,
                                f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.samples.append(sample)
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self._threads), "load threads stuck"

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- results

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def failures(self) -> list[Sample]:
        return [s for s in self.snapshot() if s.pid is None]

    def pids(self) -> Counter:
        return Counter(s.pid for s in self.snapshot() if s.pid is not None)

    def answered_by(self, pids: set[int]) -> bool:
        return any(s.pid in pids for s in self.snapshot())

    def between(self, start: float, end: float) -> list[Sample]:
        """Requests that were in flight at some time in [start, end]."""
        return [s for s in self.snapshot()
                if s.started <= end and s.started + s.latency >= start]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --------------------------------------------------------------------------- configs

def socket_section(name: str = "web") -> str:
    """A loopback TCP socket on a port the kernel picks, non-blocking (see above)."""
    return f"[socket:{name}]\nhost = 127.0.0.1\nport = 0\nblocking = false\n\n"


def watcher_section(name: str, worker: ServeWorker, *, socket: str = "web",
                    numprocesses: int = 2, ready: str = "started", **options: Any) -> str:
    """A [watcher:NAME] running `worker`; `options` are more `key = value` lines."""
    lines = [f"[watcher:{name}]", f"cmd = {worker.cmd}", f"sockets = {socket}",
             f"numprocesses = {numprocesses}", f"ready = {ready}"]
    options.setdefault("graceful_timeout", 5)
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n\n"
