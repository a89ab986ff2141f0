"""Attacks, as root: a worker turns the shared listening socket into something
listen() cannot repair, to take it out of service for every worker.

Every worker's fd 3 is sockvisor's own listening socket (a duplicate of the fd).
A worker running as `nobody`

* `connect()`s it with AF_UNSPEC (on a listening TCP socket: "disconnect", it
  leaves LISTEN), or `shutdown(SHUT_RD)`s it, and then
* `connect()`s it to a loopback listener of its own: the socket is now an
  ordinary client connection, and listen() on it fails with EINVAL;
* clears SO_REUSEADDR on it first, so that a socket bound beside it at the same
  port would be refused -- sockvisor sets it back through its own fd.

sockvisor must bind a new socket at the very address (the port the kernel chose
for `port = 0`), say so (`socket.web.relisten` with `replaced: true`), and
replace the workers still holding the dead socket -- also those that do not die
of it: `good` here is a server that logs accept() errors and goes on, as nginx
does, so it would sit on the dead socket serving nothing for ever.  A unix
socket a worker shut down is bound anew already; its running workers must be
replaced the same way.

The attacker really runs as `nobody` (Debian's /usr/bin/python3, scripts in a
world-readable folder); it attacks once (a marker file says it did) and either
exits or stays alive holding the dead socket.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from sockvisor.control.client import ControlClient

from conftest import free_port, http_get, is_gone, unix_http_get, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from control_helpers import endpoint, subscribed, sync_events  # noqa: E402

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the worker runs as nobody"),
    pytest.mark.timeout(90),
]

SYSTEM_PYTHON = "/usr/bin/python3"

# argv: MARKER SEQUENCE(unspec|shutrd|unix) exit|stay.  Waits for SIGUSR1 (writes
# MARKER.waiting first), attacks fd 3 once, writes MARKER; a later run just waits.
ATTACKER = r'''
import ctypes, os, select, signal, socket, struct, sys
marker, sequence, after = sys.argv[1:4]
if os.path.exists(marker):
    while True:
        signal.pause()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
open(marker + ".waiting", "w").close()
signal.sigwait({signal.SIGUSR1})
shared = socket.socket(fileno=3)
if sequence == "unix":
    shared.shutdown(socket.SHUT_RD)
elif sequence == "squat":
    # Out of LISTEN, and a listener of our own at the very address: the port's
    # clients are served by nobody's socket.
    address = shared.getsockname()
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = struct.pack("=H14s", socket.AF_UNSPEC, b"")
    if libc.connect(3, unspec, len(unspec)) != 0:
        sys.exit(f"connect(AF_UNSPEC): {os.strerror(ctypes.get_errno())}")
    mine = socket.socket(shared.family, socket.SOCK_STREAM)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    mine.bind(address)
    mine.listen(16)
else:
    loopback = "::1" if shared.family == socket.AF_INET6 else "127.0.0.1"
    mine = socket.socket(shared.family, socket.SOCK_STREAM)
    mine.bind((loopback, 0))
    mine.listen(1)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    if sequence == "unspec":
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = struct.pack("=H14s", socket.AF_UNSPEC, b"")
        if libc.connect(3, unspec, len(unspec)) != 0:
            sys.exit(f"connect(AF_UNSPEC): {os.strerror(ctypes.get_errno())}")
    else:
        shared.shutdown(socket.SHUT_RD)
    try:
        shared.connect(mine.getsockname())
    except BlockingIOError:   # the file is non-blocking (blocking = false)
        select.select([], [shared], [], 5)
    held = mine.accept()   # keep the connection up for as long as we live
open(marker, "w").close()
if after == "exit":
    sys.exit(1)
while True:
    signal.pause()
'''

# A server that survives accept() errors: select() on fd 3 (non-blocking),
# answer each request with {"pid": ...}; an accept() that fails is logged and
# tried again a little later (nginx: "accept() failed (22: Invalid argument)").
SURVIVOR = r'''
import json, os, select, socket, sys, time
listener = socket.socket(fileno=3)
while True:
    select.select([listener], [], [])
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        continue
    except OSError as exc:
        print(f"accept() failed: {exc}", file=sys.stderr, flush=True)
        time.sleep(0.1)
        continue
    with connection:
        connection.setblocking(True)
        connection.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                break
            request += chunk
        body = json.dumps({"pid": os.getpid()}).encode()
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                           + body)
'''


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o644)
    return path


def _call(sv, command: str, properties: dict | None = None) -> dict:
    with ControlClient(f"ipc://{sv.directory}/ctl", 30.0) as client:
        reply = client.call(command, properties or {})
    assert reply["status"] != "error", reply
    return reply


def _socket_entry(sv) -> dict:
    return {e["name"]: e for e in _call(sv, "listsockets")["sockets"]}["web"]


def _start(sockvisor, tmp_path, world_readable_dir, socket_lines: list[str],
           sequence: str, after: str):
    attacker = _write(world_readable_dir, "attacker.py", ATTACKER)
    survivor = _write(tmp_path, "survivor.py", SURVIVOR)
    markers = world_readable_dir / "markers"
    markers.mkdir()
    markers.chmod(0o777)   # nobody writes its marker there
    marker = markers / "attacked"
    sv = sockvisor("\n".join([
        "[socket:web]", *socket_lines, "blocking = false", "",
        "[watcher:good]", f"cmd = {sys.executable} {survivor}", "sockets = web",
        "numprocesses = 2", "graceful_timeout = 1", "min_uptime = 0.2", "",
        "[watcher:bad]", f"cmd = {SYSTEM_PYTHON} {attacker} {marker} {sequence} {after}",
        "sockets = web", "uid = nobody", "graceful_timeout = 1",
        "min_uptime = 0.2", ""]))
    return sv, marker


def _attack(sv, events, marker: Path) -> set[int]:
    """Make sure the events flow, let the attacker loose; the `good` pids that held
    the socket when it was attacked."""
    sync_events(events, endpoint(sv), "good")
    good = set(sv.wait_workers(2, "survivor.py"))
    wait_for(Path(f"{marker}.waiting").exists, 10, message="the attacker to start")
    _call(sv, "signal", {"name": "bad", "signum": "USR1"})
    wait_for(marker.exists, 10, message=lambda: f"the attack\n{sv.describe()}")
    return good


def _replaced_by_new_workers(sv, good_before: set[int], answer) -> None:
    """Answers come from new `good` workers again; the old ones were retired."""
    def new_answer() -> dict | None:
        try:
            reply = answer()
        except (OSError, socket.timeout, AssertionError):
            return None
        return reply if reply["pid"] not in good_before else None
    wait_for(new_answer, 20, interval=0.05,
             message=lambda: f"an answer from a new worker\n{sv.describe()}")
    wait_for(lambda: all(is_gone(pid) for pid in good_before), 20,
             message=lambda: f"the workers on the dead socket ({sorted(good_before)}) "
                             f"to be retired\n{sv.describe()}")
    now = set(sv.wait_workers(2, "survivor.py", timeout=20))
    for _ in range(20):   # and it stays so: every request answered, by them
        assert answer()["pid"] in now


@pytest.mark.parametrize("host, sequence, after", [
    ("127.0.0.1", "unspec", "stay"),
    ("127.0.0.1", "shutrd", "exit"),
    ("::1", "unspec", "exit"),
])
def test_a_hijacked_tcp_socket_is_bound_anew_at_the_same_port(
        sockvisor, tmp_path, world_readable_dir, host, sequence, after):
    sv, marker = _start(sockvisor, tmp_path, world_readable_dir,
                        [f"host = {host}", "port = 0"], sequence, after)
    port = sv.port("web")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with subscribed(f"ipc://{sv.directory}/ctl.events") as events:
        good_before = _attack(sv, events, marker)
        if after == "stay":
            # Nothing exits: `listsockets` (as `status`) checks and repairs.
            entry = _socket_entry(sv)
        event = events.wait("socket.web.relisten", timeout=15)
    assert (event["address"], event["replaced"]) == (address, True), event
    assert event["how"].startswith("bound anew"), event

    _replaced_by_new_workers(sv, good_before, lambda: http_get(port, host=host))
    entry = _socket_entry(sv)
    assert (entry["port"], entry["listening"], entry["relistened"]) == (port, True, 1), entry
    sv.wait_log(r"socket web \(.*\) was shut down by a worker", 10)


def test_running_workers_on_a_unix_socket_shut_down_are_replaced(
        sockvisor, tmp_path, world_readable_dir):
    path = tmp_path / "web.sock"
    sv, marker = _start(sockvisor, tmp_path, world_readable_dir, [f"path = {path}"],
                        "unix", "stay")
    with subscribed(f"ipc://{sv.directory}/ctl.events") as events:
        good_before = _attack(sv, events, marker)
        _call(sv, "status")   # checks and repairs too
        event = events.wait("socket.web.relisten", timeout=15)
    assert event["replaced"] is True, event
    _replaced_by_new_workers(sv, good_before, lambda: unix_http_get(str(path)))
    entry = _socket_entry(sv)
    assert entry["listening"] and entry["relistened"] == 1, entry



@pytest.mark.parametrize("fixed_port", [False, True])
def test_a_worker_listening_on_the_port_itself_is_killed_and_the_port_taken_back(
        sockvisor, tmp_path, world_readable_dir, fixed_port):
    """The attacker takes the shared socket out of LISTEN and binds a listener of
    its own at the same address: clients would reach nobody's socket, and no
    new socket of sockvisor's can be bound there.  sockvisor finds the worker
    holding the listener (/proc/net/tcp, its fds), kills it, binds the port anew
    and replaces the workers on the dead socket."""
    sv, marker = _start(sockvisor, tmp_path, world_readable_dir,
                        ["host = 127.0.0.1", f"port = {free_port() if fixed_port else 0}"],
                        "squat", "stay")
    port = sv.port("web")
    with subscribed(f"ipc://{sv.directory}/ctl.events") as events:
        good_before = _attack(sv, events, marker)
        [attacker] = sv.worker_pids("attacker.py")
        _socket_entry(sv)   # checks: the port is taken -> the squatter is found
        squatter = events.wait("socket.web.squatter", timeout=15)
        assert squatter["pid"] == attacker, squatter
        event = events.wait("socket.web.relisten", timeout=15)
    assert event["address"] == f"127.0.0.1:{port}", event
    wait_for(lambda: is_gone(attacker), 10)
    if event["replaced"]:   # bound anew: the workers on the dead socket are rolled
        _replaced_by_new_workers(sv, good_before, lambda: http_get(port))
    else:   # the port was free again: the same socket listens again
        good = set(sv.wait_workers(2, "survivor.py"))
        for _ in range(20):
            assert http_get(port)["pid"] in good
    entry = _socket_entry(sv)
    assert (entry["port"], entry["listening"]) == (port, True), entry
    sv.wait_log(rf"socket web: bad\[{attacker}\] \(pid {attacker}\) listens on "
                rf"127.0.0.1:{port} itself.*: killed")
