"""End to end: who may talk to sockvisor's control channel, and what they may do.

* The default endpoint is an ipc socket file of mode 0600 in a 0700 directory of
  sockvisor's own: as root, another user cannot even connect to it (the kernel
  says EACCES before ZeroMQ is involved).
* `endpoint_group` makes that endpoint 0660 for the group, and opens a second,
  owner-only endpoint: on the group endpoint the commands that decide what runs,
  as whom, or which files root writes (`add`, `set web cmd …`) are refused with
  errno FORBIDDEN, while operating commands work.
* A non-loopback tcp:// endpoint is refused without CURVE keys (loopback: see
  tests/security/test_control_tcp_loopback.py); with them, only a client whose
  key is authorized gets an answer.

The users run `/usr/bin/python3` (Debian's, reachable by everyone, unlike the
test interpreter under /root) with a plain AF_UNIX connect: that is the kernel's
permission check, which is what matters; it has no pyzmq to speak ZMTP anyway.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess

import pytest
import zmq.auth

from sockvisor import paths
from sockvisor.control.protocol import ErrNo

from conftest import free_port, run_cli
from control_client_helpers import (bare_sockvisor, call, describe, ok,  # noqa: F401
                                    run_ctl)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: runs clients as other users")
SYSTEM_PYTHON = "/usr/bin/python3"

CONNECT = """
import errno, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def connect_as(user: str, path: str) -> str:
    """'connected', or the errno name of a plain AF_UNIX connect to `path` as `user`
    (with only that user's primary group)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a client as {user}")
    entry = pwd.getpwnam(user)
    result = subprocess.run([SYSTEM_PYTHON, "-c", CONNECT, path], user=entry.pw_uid,
                            group=entry.pw_gid, extra_groups=[], cwd="/",
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, describe(result)
    return result.stdout.strip()


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def ipc_path(endpoint: str) -> str:
    assert endpoint.startswith("ipc://"), endpoint
    return endpoint[len("ipc://"):]


WATCHER = """
[socket:web]
port = 0

[watcher:web]
cmd = {cmd}
sockets = web
graceful_timeout = 1
"""


def test_default_endpoint_is_an_owner_only_socket_file(bare_sockvisor, scripts):
    sv = bare_sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py")))
    control = paths.default_endpoint(str(sv.conf))
    path = ipc_path(control)
    directory = os.path.dirname(path)
    if ROOT:
        assert directory.startswith("/run/sockvisor/"), directory
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert mode(path) == 0o600, oct(mode(path))
    assert st.st_uid == os.geteuid()
    assert mode(directory) == 0o700, oct(mode(directory))
    assert os.stat(directory).st_uid == os.geteuid()
    events = ipc_path(paths.default_pubsub_endpoint(str(sv.conf)))
    assert mode(events) == 0o600, oct(mode(events))
    assert not os.path.exists(ipc_path(paths.default_admin_endpoint(str(sv.conf))))
    # The owner is served there.
    assert ok(control, "status")["statuses"] == {"web": "active"}


@needs_root
def test_another_user_cannot_connect_to_the_default_endpoint(bare_sockvisor, scripts):
    sv = bare_sockvisor(WATCHER.format(cmd=scripts.cmd("worker.py")))
    control = ipc_path(paths.default_endpoint(str(sv.conf)))
    events = ipc_path(paths.default_pubsub_endpoint(str(sv.conf)))
    assert connect_as("nobody", control) == "EACCES"
    assert connect_as("nobody", events) == "EACCES"
    # The same program as root connects: the refusal above is the permissions.
    assert ok(paths.default_endpoint(str(sv.conf)), "numwatchers")["numwatchers"] == 1


def _operator_group() -> tuple[str, str]:
    """(group, a user whose primary group it is), for endpoint_group."""
    for user in ("www-data", "daemon", "bin"):
        try:
            entry = pwd.getpwnam(user)
            return grp.getgrgid(entry.pw_gid).gr_name, user
        except KeyError:
            continue
    pytest.skip("no system user with its own primary group to act as the operator")


@needs_root
@pytest.mark.timeout(60)
def test_endpoint_group_operates_but_cannot_decide_what_runs(bare_sockvisor, scripts,
                                                            tmp_path):
    group, member = _operator_group()
    sv = bare_sockvisor(f"[sockvisor]\nendpoint_group = {group}\n"
                        + WATCHER.format(cmd=scripts.cmd("worker.py"))
                        + "operator_signals = CONT\n")
    conf = str(sv.conf)
    shared, admin = paths.default_endpoint(conf), paths.default_admin_endpoint(conf)
    gid = grp.getgrnam(group).gr_gid

    # Files: the shared endpoint is the group's, the admin one root's only.
    directory = os.path.dirname(ipc_path(shared))
    assert mode(directory) == 0o710 and os.stat(directory).st_gid == gid
    assert mode(ipc_path(shared)) == 0o660 and os.stat(ipc_path(shared)).st_gid == gid
    assert mode(ipc_path(admin)) == 0o600 and os.stat(ipc_path(admin)).st_uid == 0
    events = ipc_path(paths.default_pubsub_endpoint(conf))
    assert mode(events) == 0o660 and os.stat(events).st_gid == gid
    assert connect_as(member, ipc_path(shared)) == "connected"
    assert connect_as(member, ipc_path(admin)) == "EACCES"
    assert connect_as("nobody", ipc_path(shared)) == "EACCES"

    cmd_before = ok(shared, "get", {"name": "web", "keys": ["cmd", "args"]})["options"]
    marker = tmp_path / "should-not-exist"
    forbidden = [
        ("add", {"name": "evil", "cmd": f"/bin/touch {marker}", "start": True}),
        ("set", {"name": "web", "options": {"cmd": f"/bin/touch {marker}"}}),
        # Option names are case-insensitive on the wire: so is the check.
        ("set", {"name": "web", "options": {"CMD": f"/bin/touch {marker}"}}),
        ("set", {"name": "web", "options": {"Args": "--marker x"}}),
        ("set", {"name": "web", "options": {"uid": "0"}}),
        ("set", {"name": "web", "options": {"env": "LD_PRELOAD=/tmp/x.so"}}),
        ("set", {"name": "web", "options": {"graceful_timeout": 2, "working_dir": "/"}}),
        # Root would append the worker's output to any file named here.
        ("set", {"name": "web", "options": {"stdout": f"file:{marker}"}}),
        ("set", {"name": "web", "options": {"stderr_stream.filename": str(marker)}}),
    ]
    for command, props in forbidden:
        reply = call(shared, command, props)
        assert reply["status"] == "error" and reply["errno"] == ErrNo.FORBIDDEN, \
            f"{command} {props} on the group endpoint: {reply}"
        assert "owner endpoint" in reply["reason"]
    assert ok(shared, "numwatchers")["numwatchers"] == 1
    assert ok(shared, "get", {"name": "web", "keys": ["cmd", "args"]})["options"] \
        == cmd_before
    assert not marker.exists()

    # Operating works there.
    assert ok(shared, "status")["statuses"] == {"web": "active"}
    assert ok(shared, "incr", {"name": "web"})["numprocesses"] == 2
    sv.wait_workers(2, "worker.py")
    assert ok(shared, "reload", {"name": "web"})["watcher"]["replaced"] == 2
    [pid, _] = ok(shared, "list", {"name": "web"})["pids"]
    assert ok(shared, "signal", {"name": "web", "signum": "CONT", "pid": pid})["pids"] \
        == [pid]
    assert ok(shared, "set", {"name": "web", "options": {"reload_batch": 1}})
    assert ok(shared, "get", {"name": "web", "keys": ["reload_batch"]}
              )["options"]["reload_batch"] == 1

    # The owner endpoint may add (and sockvisorctl -c CONF picks it for root).
    added = ok(admin, "add", {"name": "extra", "cmd": scripts.cmd("worker.py") +
                              " --no-serve", "options": {"graceful_timeout": 1}})
    assert added["watcher"]["name"] == "extra"
    result = run_ctl("-c", conf, "rm", "extra")
    assert result.returncode == 0, describe(result)
    result = run_ctl("-c", conf, "set", "web", "graceful_timeout", "1")
    assert result.returncode == 0, describe(result)


def test_non_loopback_tcp_endpoint_without_curve_keys_is_refused(tmp_path, scripts):
    conf = tmp_path / "tcp.ini"
    conf.write_text(f"[sockvisor]\nendpoint = tcp://0.0.0.0:{free_port()}\n"
                    + WATCHER.format(cmd=scripts.cmd("worker.py")))
    for command in ("check", "start"):
        result = run_cli(command, str(conf))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "[sockvisor]: endpoint" in result.stderr
        assert "curve_secret_key_file" in result.stderr
        assert "ipc://" in result.stderr


@pytest.mark.timeout(60)
def test_tcp_endpoint_with_curve_answers_only_authorized_keys(bare_sockvisor, scripts,
                                                               tmp_path):
    keys = tmp_path / "keys"
    for name in ("server", "client", "intruder"):
        (keys / name).mkdir(parents=True)
        zmq.auth.create_certificates(str(keys / name), name)
    authorized = keys / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((keys / "client" / "client.key").read_bytes())

    control, events = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{control}"
    bare_sockvisor(f"""[sockvisor]
endpoint = {endpoint}
pubsub_endpoint = tcp://127.0.0.1:{events}
curve_secret_key_file = {keys}/server/server.key_secret
curve_authorized_keys_dir = {authorized}
""" + WATCHER.format(cmd=scripts.cmd("worker.py")))

    server_key = str(keys / "server" / "server.key")
    result = run_ctl("--endpoint", endpoint, "--curve-server-key", server_key,
                     "--curve-client-key", str(keys / "client" / "client.key_secret"),
                     "status")
    assert result.returncode == 0, describe(result)
    assert "web" in result.stdout and "active" in result.stdout

    # A key that is not in the authorized directory: ZAP drops it, no reply.
    result = run_ctl("--endpoint", endpoint, "--curve-server-key", server_key,
                     "--curve-client-key", str(keys / "intruder" / "intruder.key_secret"),
                     "--timeout", "1", "status")
    assert result.returncode == 3, describe(result)
    assert "no answer" in result.stderr
    # No CURVE at all: the handshake fails, no reply either.
    result = run_ctl("--endpoint", endpoint, "--timeout", "1", "status")
    assert result.returncode == 3, describe(result)
