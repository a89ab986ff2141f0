"""The integration tests' helpers for sockvisor's control channel, its workers and
client load.  The one such module: control_client_helpers.py only re-exports it.

Built on `conftest.py` (its `sockvisor` fixture starts the real binary with
`endpoint = ipc://DIR/ctl`, its `wait_for` is the one way to wait), on
`http_worker.py` (the one HTTP worker program) and on `http_load.py` (the one
client load: `Load`, `Sample`, `request_once`).  Ports are read back through the
control channel (`listsockets`), never guessed.

* Requests: `control(sv)` / `Control` (a client with checked calls, `status`,
  `port`, `wait_ready`), or the functions `call` (error replies returned), `ok`
  (must succeed), `sockets_of`, `port_of`, `pids_of` on an endpoint; `raw_exchange`
  / `raw_reply` send frames as they are.  `ctl(sv, ...)`, `run_ctl`,
  `run_ctl_alone` run `sockvisorctl` (`alone`: where no other sockvisor is found).
* Events: `subscribed(endpoint)` / `Events`, and `sync_events` to know the
  subscription is in effect.
* `bare_sockvisor`: a fixture running sockvisor on exactly the given config (no
  endpoint added), for tests of the default endpoint.
* Configs: `socket_section`, `watcher_section`.

Workers.  `ServeWorker` is `http_worker.py` with `--mode-file PATH --graceful
--notify --exit-if-set CRASH`: it reads a *mode file* when it starts, so a test can
change what the next generation does without touching the config:

* ``delay=SECONDS`` — sleep that long before sending ``READY=1`` (slow start);
* ``crash`` — exit with status 3 at once (a generation that cannot start);
* ``noready`` — never send ``READY=1`` and never serve;
* ``ready_then_exit=SECONDS`` — send ``READY=1`` at once, never serve, and exit
  with status 3 that much later: gunicorn's master says READY=1 before its
  workers import the app, and halts when they cannot;
* anything else (or no file) — start at once.

It also exits with status 4 when ``$CRASH`` is set, for `set web env CRASH=1`.
`echo_worker_cmd(directory)` is `http_worker.py --graceful` alone: it serves
every socket it is handed (fds 3…), and its answers carry `port` and `$VERSION`,
so a test changes `env = VERSION=…` and sees which generation answered.

Both answer each request with JSON (pid, wid, ...) and, on SIGTERM, finish the
request in hand and exit: the old generation retires without dropping a
request.  Their sockets must be non-blocking (``blocking = false``), so that a
worker that loses the race for a connection goes back to `select` instead of
blocking in `accept`, where it could not notice SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

import http_worker
from http_load import Load, Sample, request  # noqa: F401 - re-exported
from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import is_error

from conftest import Sockvisor, _clean_env, wait_for

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


def echo_worker_cmd(directory: Path) -> str:
    """A `cmd = …` line running the echo worker: `http_worker.py --graceful`, which
    serves every socket it is handed and answers pid, wid, port and $VERSION."""
    return http_worker.cmd(http_worker.install(directory, "echo_worker.py"), "--graceful")


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
    return run_ctl("--endpoint", endpoint(sv), *args, timeout=timeout)


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


# --------------------------------------------------------------------------- requests

endpoint_of = endpoint


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


# --------------------------------------------------------------------------- client load

# `Load` and `Sample` are http_load's (the one client load of the tests and the
# benchmarks); `request_once` is its `request`.
request_once = request


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

