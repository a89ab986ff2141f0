"""Helpers for the control-channel tests: requests (checked, raw, from the CLIs),
a worker that says which config it runs, a client load, and an event subscriber.

Built on `conftest.py`: its `sockvisor` fixture starts the real binary with
`endpoint = ipc://DIR/ctl`, its `wait_for` is the one way to wait.  Ports are
read back over the control channel (`listsockets`), never from the log.

The echo worker (`echo_worker_cmd`: `http_worker.py --graceful`) serves HTTP
on every socket it is handed (fds 3…) and answers with
its pid, wid, the port the request came in on and `$VERSION` -- so a test changes
`env = VERSION=…` in the config and sees which generation answered.  It needs
non-blocking sockets (`blocking = false` in the config): a worker that loses the
race for a connection goes back to `select` and notices SIGTERM, which makes it
finish the request in hand and exit.  So a rolling reload, done right, fails no
request.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

import http_worker
from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import is_error

from conftest import Sockvisor, _clean_env, http_get, wait_for

def echo_worker_cmd(directory: Path) -> str:
    """A `cmd = …` line running the echo worker: `http_worker.py --graceful`, which
    serves every socket it is handed and answers pid, wid, port and $VERSION."""
    return http_worker.cmd(http_worker.install(directory, "echo_worker.py"), "--graceful")


# --------------------------------------------------------------------------- requests

def endpoint_of(sv: Sockvisor) -> str:
    """The control endpoint the `sockvisor` fixture configures."""
    return f"ipc://{sv.directory}/ctl"


def call(endpoint: str, command: str, properties: dict[str, Any] | None = None,
         timeout: float = 15.0) -> dict[str, Any]:
    """One request, one reply (error replies are returned, not raised)."""
    with ControlClient(endpoint, timeout) as client:
        return client.call(command, properties or {})


def ok(endpoint: str, command: str, properties: dict[str, Any] | None = None,
       timeout: float = 15.0) -> dict[str, Any]:
    """A request that must succeed; its reply.  (In Circus's shape, `status NAME`
    answers with the watcher's state as the reply's "status".)"""
    reply = call(endpoint, command, properties, timeout)
    assert reply.get("status") not in ("error", None) and not is_error(reply), \
        f"{command} {properties}: {reply}"
    return reply


def sockets_of(endpoint: str) -> dict[str, dict[str, Any]]:
    """name -> `listsockets` entry (fd, host, port, backlog, …)."""
    return {entry["name"]: entry for entry in ok(endpoint, "listsockets")["sockets"]}


def port_of(endpoint: str, name: str) -> int:
    return sockets_of(endpoint)[name]["port"]


def pids_of(endpoint: str, watcher: str) -> list[int]:
    return ok(endpoint, "list", {"name": watcher})["pids"]


def raw_exchange(endpoint: str, frames: list[bytes], kind: int = zmq.DEALER,
                 timeout: float = 5.0) -> list[bytes] | None:
    """Send `frames` as one message on a fresh socket; the reply's frames, or None.

    A REQ socket adds (and strips) the empty delimiter frame itself, and sends
    one frame per `send` (so only the last frame goes without SNDMORE)."""
    context = zmq.Context.instance()
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


def raw_reply(endpoint: str, frames: list[bytes], kind: int = zmq.DEALER,
              timeout: float = 5.0) -> dict[str, Any]:
    """`raw_exchange` expecting exactly one JSON object frame back."""
    reply = raw_exchange(endpoint, frames, kind, timeout)
    assert reply is not None, f"no reply within {timeout}s to {_short(frames)}"
    assert len(reply) == 1, f"expected one reply frame, got {_short(reply)}"
    decoded = json.loads(reply[0])
    assert isinstance(decoded, dict), decoded
    return decoded


def _short(frames: list[bytes]) -> str:
    return repr([frame[:80] + (b"..." if len(frame) > 80 else b"") for frame in frames])


# --------------------------------------------------------------------------- command lines

def run_ctl(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`sockvisorctl ARGS` (as `python -m sockvisor.cli.ctl`), to completion."""
    return subprocess.run([sys.executable, "-m", "sockvisor.cli.ctl", *args],
                          env=env if env is not None else _clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def alone(*argv: str) -> list[str]:
    """`argv` in a mount namespace of its own with an empty /run/sockvisor: on a
    machine where, as far as it can see, no root-run sockvisor has a default
    endpoint (other tests' sockvisors run beside ours).  Not root: root's
    sockvisors' folders are closed to us anyway, and unshare would need root."""
    if os.geteuid() != 0:
        return list(argv)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mkdir -p /run/sockvisor && mount -t tmpfs -o mode=0755 sockvisor-test /run/sockvisor '
            '&& exec "$@"', "sh", *argv]


def run_ctl_alone(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess:
    """`sockvisorctl ARGS` where no other sockvisor is to be found (see `alone`)."""
    return subprocess.run(alone(sys.executable, "-m", "sockvisor.cli.ctl", *args),
                          env=env if env is not None else _clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"{result.args!r} exited {result.returncode}\n--- stdout ---\n{result.stdout}"
            f"\n--- stderr ---\n{result.stderr}")


# --------------------------------------------------------------------------- /proc

def fd_link(pid: int, fd: int) -> str:
    """readlink /proc/PID/fd/FD, e.g. 'socket:[12345]'."""
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def listen_backlog(port: int) -> int | None:
    """The backlog of the socket listening on 127.0.0.1:PORT, from `ss -ltn`
    (Send-Q of a listening socket); None if ss is not available."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    output = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True,
                            text=True, timeout=10).stdout
    for line in output.splitlines():
        fields = line.split()
        # State Recv-Q Send-Q Local:Port Peer:Port
        if len(fields) >= 4 and fields[3].endswith(f":{port}"):
            return int(fields[2])
    return None


# --------------------------------------------------------------------------- load

class Load:
    """Client threads sending HTTP requests one after another until stopped.

    `results` holds every answer (the worker's JSON), `failures` every request
    that did not get one, with the exception."""

    def __init__(self, port: int, threads: int = 2, timeout: float = 5.0):
        self.port = port
        self.timeout = timeout
        self.results: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = http_get(self.port, timeout=self.timeout)
            except Exception as exc:   # every kind of failure counts
                with self._lock:
                    self.failures.append(f"{time.monotonic():.3f} {exc!r}")
                continue
            with self._lock:
                self.results.append(answer)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def versions(self) -> list[str | None]:
        with self._lock:
            return [answer.get("version") for answer in self.results]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)


# --------------------------------------------------------------------------- events

class Events:
    """A SUB socket on sockvisor's event endpoint, collecting `(topic, data)`."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context.instance()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self.sock.connect(endpoint)
            # The subscription goes out right after the handshake.
            assert monitor.poll(10_000), f"no ZMTP handshake with {endpoint}"
            monitor.recv_multipart()
        finally:
            self.sock.disable_monitor()
            monitor.close(linger=0)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        while self.sock.poll(0, zmq.POLLIN):
            topic, payload = self.sock.recv_multipart()
            self.seen.append((topic.decode(), json.loads(payload)))
        return self.seen

    def wait(self, topic: str, timeout: float = 10.0, **match: Any
             ) -> dict[str, Any]:
        """The first event (seen so far or to come) whose topic is `topic` and whose
        data has the `match` items."""
        def found() -> dict[str, Any] | None:
            self.sock.poll(50, zmq.POLLIN)
            for seen_topic, data in self.drain():
                if seen_topic == topic and all(data.get(k) == v for k, v in match.items()):
                    return data
            return None
        return wait_for(found, timeout, interval=0,
                        message=lambda: f"event {topic} {match or ''}; seen: "
                                        f"{[t for t, _ in self.seen]}")

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.drain()]

    def close(self) -> None:
        self.sock.close(linger=0)


@contextlib.contextmanager
def subscribed(endpoint: str) -> Iterator[Events]:
    events = Events(endpoint)
    try:
        yield events
    finally:
        events.close()


def sync_events(events: Events, endpoint: str, watcher: str) -> None:
    """Make sure the subscription is in effect: scale `watcher` up and down until
    its spawn event arrives (a SUB only gets what is published after its
    subscription reached the PUB, and nothing says when that was)."""
    def spawn_seen() -> bool:
        ok(endpoint, "incr", {"name": watcher})
        try:
            events.wait(f"watcher.{watcher}.spawn", timeout=1.0)
            return True
        except AssertionError:
            return False
        finally:
            ok(endpoint, "decr", {"name": watcher})
    wait_for(spawn_seen, 10, interval=0, message="the event subscription to work")


# --------------------------------------------------------------------------- sockvisor without the fixture's endpoint

@pytest.fixture
def bare_sockvisor(tmp_path: Path):
    """Factory: `bare_sockvisor(text, name="bare")` runs `sockvisor start` on exactly
    `text` (no endpoint added), so tests can use the default endpoint.  Teardown
    also removes the default endpoint's (then empty) runtime directory."""
    from sockvisor import paths
    instances: list[Sockvisor] = []

    def start(text: str, *, name: str = "bare", ready: bool = True) -> Sockvisor:
        directory = tmp_path / name
        directory.mkdir()
        instance = Sockvisor(directory, text)
        instances.append(instance)
        if ready:
            instance.wait_ready()
        return instance

    yield start
    for instance in instances:
        instance.cleanup()
        runtime = paths.runtime_dir(str(instance.conf))
        with contextlib.suppress(OSError):
            for leftover in os.listdir(runtime):
                os.unlink(os.path.join(runtime, leftover))
            os.rmdir(runtime)

