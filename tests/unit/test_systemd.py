"""sockvisor.systemd against real sockets.

The test plays the service manager: it binds a datagram socket, points
NOTIFY_SOCKET at it in an environ dict and reads what the Notifier sends.
Socket activation with real fds at 3, 4, ... happens in a child interpreter,
never inside pytest, whose own fds we must not disturb.
"""

from __future__ import annotations

import array
import json
import logging
import os
import secrets
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sockvisor import systemd
from sockvisor.systemd import Notifier, fdstore_allowed, listen_fds, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers

class Manager:
    """A fake service manager: the receiving end of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(5)   # a deadline, not a synchronisation sleep

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def fields(self) -> dict[str, str]:
        lines = self.recv().decode().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def pending(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request, tmp_path):
    if request.param == "path":
        address = str(tmp_path / "notify")
    else:
        address = f"@sockvisor-test/{os.getpid()}/{secrets.token_hex(6)}"
    mgr = Manager(address)
    yield mgr
    mgr.close()


@pytest.fixture
def notifier(manager):
    n = Notifier.from_environ({"NOTIFY_SOCKET": manager.address})
    yield n
    n.close()


# --------------------------------------------------------------------------- Notifier

def test_disabled_without_notify_socket(caplog):
    n = Notifier.from_environ({})
    assert not n.enabled
    assert n.address is None
    with caplog.at_level(logging.DEBUG, logger="sockvisor.systemd"):
        assert n.ready("x") is False
        assert n.reloading() is False
        assert n.stopping() is False
        assert n.status("x") is False
        assert n.mainpid(1) is False
        assert n.watchdog() is False
        assert n.extend_timeout(3) is False
        assert n.fdstore([0], "stdin") is False
        assert n.fdstore_remove("stdin") is False
        assert n.send(X=1) is False
    assert caplog.records == []


def test_unsupported_address_disables_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sockvisor.systemd"):
        n = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False
    assert "vsock:2:1234" in caplog.text


def test_from_environ_unset_removes_the_variable(manager):
    env = {"NOTIFY_SOCKET": manager.address, "OTHER": "1"}
    n = Notifier.from_environ(env, unset=True)
    assert env == {"OTHER": "1"}
    assert n.enabled and n.ready()
    assert manager.fields() == {"READY": "1"}
    n.close()


def test_ready(notifier, manager):
    assert notifier.enabled
    assert notifier.ready() is True
    assert manager.recv() == b"READY=1\n"
    assert notifier.ready(status="serving 4 workers")
    assert manager.recv() == b"READY=1\nSTATUS=serving 4 workers\n"


def test_each_message(notifier, manager):
    notifier.stopping()
    assert manager.fields() == {"STOPPING": "1"}
    notifier.status("line one\nline two")
    assert manager.fields() == {"STATUS": "line one line two"}
    notifier.mainpid(1234)
    assert manager.fields() == {"MAINPID": "1234"}
    notifier.watchdog()
    assert manager.fields() == {"WATCHDOG": "1"}
    notifier.extend_timeout(2.5)
    assert manager.fields() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    notifier.fdstore_remove("web")
    assert manager.fields() == {"FDSTOREREMOVE": "1", "FDNAME": "web"}
    notifier.send(STATUS="a", ERRNO=5)
    assert manager.recv() == b"STATUS=a\nERRNO=5\n"


def test_reloading_carries_the_monotonic_clock(notifier, manager):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = manager.fields()
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert list(fields) == ["RELOADING", "MONOTONIC_USEC"]


def test_send_rejects_bad_keys_and_values(notifier, manager):
    with pytest.raises(ValueError):
        notifier.send(ready=1)
    with pytest.raises(ValueError):
        notifier.send(STATUS="a\nREADY=1")
    with pytest.raises(ValueError):
        notifier.send()
    assert not manager.pending()


def test_fdstore_passes_the_same_socket(notifier, manager):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        assert notifier.fdstore([listener.fileno()], "web")
        fds = array.array("i")
        msg, ancdata, _flags, _addr = manager.sock.recvmsg(
            4096, socket.CMSG_SPACE(4 * fds.itemsize))
        assert msg == b"FDSTORE=1\nFDNAME=web\n"
        assert len(ancdata) == 1
        level, kind, payload = ancdata[0]
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds.frombytes(payload)
        assert len(fds) == 1
        received = socket.socket(fileno=fds[0])
        try:
            assert received.fileno() != listener.fileno()
            assert received.getsockname() == listener.getsockname()
            assert received.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        finally:
            received.close()
        # The caller's fd is untouched.
        assert listener.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()


def test_fdstore_rejects_bad_names(notifier):
    for name in ("", "a:b", "tab\there", "x" * 256):
        with pytest.raises(ValueError):
            notifier.fdstore([0], name)
    with pytest.raises(ValueError):
        notifier.fdstore([], "web")
    with pytest.raises(ValueError):
        notifier.fdstore_remove("a:b")


def test_failure_is_logged_once_then_recovers(tmp_path, caplog):
    path = tmp_path / "notify"
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.DEBUG, logger="sockvisor.systemd"):
        assert n.ready() is False            # ENOENT: nobody listens yet
        assert n.watchdog() is False
        assert n.status("x") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()

    mgr = Manager(str(path))
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sockvisor.systemd"):
            assert n.ready() is True
        assert mgr.recv() == b"READY=1\n"
        assert "delivered again" in caplog.text
    finally:
        mgr.close()
    n.close()


def test_reconnects_when_the_manager_recreates_its_socket(tmp_path, caplog):
    path = tmp_path / "notify"
    first = Manager(str(path))
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
    assert n.ready()
    assert first.recv() == b"READY=1\n"
    # The manager goes away and comes back at the same path (daemon-reexec).
    first.close()
    path.unlink()
    second = Manager(str(path))
    try:
        with caplog.at_level(logging.WARNING, logger="sockvisor.systemd"):
            assert n.watchdog() is True
        assert second.recv() == b"WATCHDOG=1\n"
        assert caplog.records == []
    finally:
        second.close()
        n.close()


def test_manager_gone_is_not_an_exception(manager, notifier, caplog):
    assert notifier.ready()
    manager.close()
    if not manager.address.startswith("@"):
        os.unlink(manager.address)
    with caplog.at_level(logging.WARNING, logger="sockvisor.systemd"):
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    assert len(caplog.records) == 1


def test_full_queue_does_not_block_or_raise(notifier, manager, caplog):
    # The manager never reads: the datagram queue fills up and sendmsg would
    # block.  The notifier must drop the message instead (EAGAIN).
    with caplog.at_level(logging.WARNING, logger="sockvisor.systemd"):
        for _ in range(100_000):
            if not notifier.status("x" * 1000):
                break
        else:
            pytest.fail("the receive queue never filled up")
    assert len(caplog.records) == 1
    assert "temporarily unavailable" in caplog.text
    # Once the manager reads again, messages flow.
    manager.sock.setblocking(False)
    try:
        while True:
            manager.sock.recv(4096)
    except BlockingIOError:
        pass
    manager.sock.settimeout(5)
    assert notifier.ready()
    assert manager.recv() == b"READY=1\n"


# --------------------------------------------------------------------------- watchdog / fdstore

@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_PID": str(os.getpid())}, None),
])
def test_watchdog_interval(environ, expected):
    assert watchdog_interval(environ) == expected


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("0", False), ("-1", False), ("many", False),
    ("1", True), ("16", True),
])
def test_fdstore_allowed(value, expected):
    environ = {} if value is None else {"FDSTORE": value}
    assert fdstore_allowed(environ) is expected


# --------------------------------------------------------------------------- listen_fds, in-process
# Only cases that never touch fds 3...: pid mismatch, zero, malformed values.

def test_listen_fds_not_for_us_but_unset():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2",
           "LISTEN_FDNAMES": "a:b", "LISTEN_PIDFDID": "7", "PATH": "/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/bin"}


def test_listen_fds_without_variables():
    env = {"PATH": "/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/bin"}


def test_listen_fds_keeps_variables_when_asked():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert listen_fds(env, unset=False) == []
    assert env == {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}


@pytest.mark.parametrize("pid, fds", [
    ("me", "1"), ("{pid}", "one"), ("{pid}", "-1"), ("{pid}", ""),
])
def test_listen_fds_bad_values(pid, fds, caplog):
    env = {"LISTEN_PID": pid.format(pid=os.getpid()), "LISTEN_FDS": fds}
    with caplog.at_level(logging.WARNING, logger="sockvisor.systemd"):
        assert listen_fds(env) == []
    assert caplog.records, "a malformed value must be logged"
    assert env == {}


# --------------------------------------------------------------------------- listen_fds, in a child

# The child puts the sockets it was given (pass_fds) at 3, 4, ..., sets
# LISTEN_PID to its own pid as a service manager would between fork and exec,
# and reports what listen_fds() made of it.
CHILD = textwrap.dedent("""
    import fcntl, json, os, socket, sys
    from sockvisor.systemd import listen_fds
    given = json.loads(sys.argv[1])
    for target, fd in enumerate(given, start=3):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
    if os.environ.get("SET_LISTEN_PID"):
        os.environ["LISTEN_PID"] = str(os.getpid())
    before = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
    result = listen_fds(unset=os.environ.get("UNSET", "1") == "1")
    print(json.dumps({
        "before": before,
        "result": result,
        "cloexec": [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
                    for _, fd in result],
        "names": [socket.socket(fileno=os.dup(fd)).getsockname() for _, fd in result],
        "after": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    }))
""")


def run_child(socks, env_extra):
    fds = [s.fileno() for s in socks]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    env["SET_LISTEN_PID"] = "1"
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(fds)],
                          pass_fds=fds, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.fixture
def two_listeners():
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def test_listen_fds_adopts_named_fds(two_listeners):
    out, _ = run_child(two_listeners, {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:api"})
    assert out["result"] == [["web", 3], ["api", 4]]
    assert out["cloexec"] == [True, True]
    assert out["names"] == [list(s.getsockname()) for s in two_listeners]
    assert set(out["before"]) == {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
    assert out["after"] == {}


def test_listen_fds_missing_names_are_unknown(two_listeners):
    out, _ = run_child(two_listeners, {"LISTEN_FDS": "2"})
    assert out["result"] == [["unknown", 3], ["unknown", 4]]
    out, stderr = run_child(two_listeners, {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"})
    assert out["result"] == [["web", 3], ["unknown", 4]]
    assert "LISTEN_FDNAMES" in stderr       # the mismatch is a warning


def test_listen_fds_unset_false_keeps_the_environment(two_listeners):
    out, _ = run_child(two_listeners, {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:api",
                                       "UNSET": "0"})
    assert out["result"] == [["web", 3], ["api", 4]]
    assert out["after"] == out["before"]


def test_listen_fds_ignores_another_pids_fds(two_listeners):
    out, _ = run_child(two_listeners, {"LISTEN_FDS": "2", "LISTEN_PID": "1",
                                       "SET_LISTEN_PID": ""})
    assert out["result"] == []
    assert out["after"] == {}


def test_listen_fds_closed_fd_is_a_bad_value(two_listeners):
    # LISTEN_FDS claims three fds; fd 5 is not open in the child.
    out, stderr = run_child(two_listeners, {"LISTEN_FDS": "3"})
    assert out["result"] == []
    assert "fd 5" in stderr


SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


@pytest.mark.skipif(not os.access(SOCKET_ACTIVATE, os.X_OK),
                    reason="systemd-socket-activate is not installed")
def test_listen_fds_under_systemd_socket_activate(tmp_path):
    """The real tool sets LISTEN_PID after fork: no help from the test."""
    path = tmp_path / "web.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [SOCKET_ACTIVATE, "--listen", str(path), "--fdname=web",
         sys.executable, "-c", CHILD, "[]"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The tool logs "Listening on ..." once bound, then execs the child on
        # the first connection.
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("Listening on"):
                break
        else:
            pytest.fail(f"systemd-socket-activate did not listen: {''.join(seen)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["result"] == [["web", 3]]
    assert out["names"] == [str(path)]
    assert out["cloexec"] == [True]
    assert out["after"] == {}


def test_module_logger_name():
    assert systemd.log.name == "sockvisor.systemd"
