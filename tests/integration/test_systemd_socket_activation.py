"""Socket activation into sockvisor with the real systemd-socket-activate.

`systemd-socket-activate -l ADDR --fdname=web CMD` binds ADDR, waits for the
first connection, then execs CMD in its own process with the socket as fd 3 and
LISTEN_FDS=1, LISTEN_FDNAMES=web, LISTEN_PID=<that pid> (and, besides -E
variables, only TERM, PATH, USER and HOME from its environment).  sockvisor must
adopt that fd for [socket:web] instead of binding, and its workers serve the
very connection that woke it up.  Run as root and told to drop to `nobody`
before sockvisor starts, it shows that sockvisor needs no privilege to serve a
port below 1024.  A passed socket that is not what the config describes is a
start-up error (exit 3) naming the socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import sockvisor

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import free_port, port_is_free, wait_for  # noqa: E402
from systemd_helpers import (services, SOCKVISOR, clean_env, read_http_reply,  # noqa: E402,F401
                             send_request, worker_states, write_config, write_worker)

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
IS_ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.access(ACTIVATE, os.X_OK),
                       reason="systemd-socket-activate is not installed"),
]


def web_config(directory: Path, port: int, *, python: str = sys.executable,
               endpoint: Path | None | bool = None) -> tuple[Path, Path]:
    state = directory / "state"
    state.mkdir(exist_ok=True)
    worker = write_worker(directory)
    conf = write_config(directory, f"""
        [socket:web]
        host = 127.0.0.1
        port = {port}

        [watcher:web]
        cmd = {python} {worker} --state {state}
        sockets = web
        numprocesses = 2
        graceful_timeout = 2
    """, endpoint=endpoint)
    return conf, state


def first_connection(port: int, service) -> socket.socket:
    """Connect as soon as systemd-socket-activate listens; that wakes it up."""
    def connect() -> socket.socket | None:
        if service.proc.poll() is not None:
            raise AssertionError(f"exited before listening\n{service.describe()}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            return None
    return wait_for(connect, 15, message=lambda: f"port {port} to listen\n"
                                                 f"{service.describe()}")


def activate(port: int, *command: str, env: dict[str, str] | None = None) -> list[str]:
    argv = [ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web"]
    for key, value in (env or {}).items():
        argv += ["-E", f"{key}={value}"]
    return argv + list(command)


def test_sockvisor_adopts_the_activated_socket(tmp_path, services):
    port = free_port()
    conf, state = web_config(tmp_path, port)
    sv = services.start(activate(port, *SOCKVISOR, str(conf),
                                 env={"PYTHONUNBUFFERED": "1"}), clean_env())
    client = first_connection(port, sv)
    with client:
        send_request(client)
        reply = read_http_reply(client)   # the connection that triggered the exec
    # systemd-socket-activate exec'd sockvisor in its own process: LISTEN_PID matched.
    assert reply["ppid"] == sv.pid
    assert "sockvisor" in " ".join(psutil.Process(sv.pid).cmdline())
    log = sv.log()
    assert f"socket web adopted from the service manager: 127.0.0.1:{port}" in log
    assert "listening on" not in log          # it did not bind anything itself
    # Both workers serve on that one socket.
    wait_for(lambda: len(worker_states(state)) == 2, 10)
    assert {w["port"] for w in worker_states(state)} == {port}
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_mismatched_socket_is_a_startup_error_naming_it(tmp_path, services):
    passed_port = free_port()
    wanted_port = free_port()
    while wanted_port == passed_port:
        wanted_port = free_port()
    conf, state = web_config(tmp_path, wanted_port)
    sv = services.start(activate(passed_port, *SOCKVISOR, str(conf)), clean_env())
    client = first_connection(passed_port, sv)
    client.close()
    assert sv.wait_exit() == 3
    log = sv.log()
    assert "[socket:web]" in log
    assert f"port {passed_port}, config wants {wanted_port}" in log
    assert not list(state.iterdir())           # nothing was spawned
    assert port_is_free(wanted_port)           # and nothing bound instead


def dual_stack_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not dual_stack_available(), reason="no dual-stack IPv6 here")
@pytest.mark.parametrize("host, adopted", [("::", True), ("0.0.0.0", False)])
def test_listen_stream_port_only_is_the_ipv6_wildcard(tmp_path, services, host, adopted):
    """`-l PORT` (like ListenStream=PORT in a .socket unit) is [::]:PORT, serving
    IPv4 too: [socket:web] must say host = ::, and a 0.0.0.0 section is refused
    with a hint saying so."""
    port = free_port()
    conf, state = web_config(tmp_path, port)
    conf.write_text(conf.read_text().replace("host = 127.0.0.1", f"host = {host}"))
    argv = activate(port, *SOCKVISOR, str(conf))
    argv[argv.index("-l") + 1] = str(port)
    sv = services.start(argv, clean_env())
    client = first_connection(port, sv)
    with client:
        if adopted:
            send_request(client)
            assert read_http_reply(client)["ppid"] == sv.pid
            assert f"socket web adopted from the service manager: [::]:{port}" in sv.log()
            sv.signal(signal.SIGTERM)
            assert sv.wait_exit() == 0
            return
        assert sv.wait_exit() == 3
    log = sv.log()
    assert f"[socket:web] the socket passed by the service manager (fd 3, [::]:{port}) " \
           f"does not match the config (0.0.0.0:{port})" in log
    assert "host = ::" in log


def privileged_free_port() -> int:
    for port in [81, *range(900, 1024)]:
        if port_is_free(port):
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root: systemd-socket-activate binds "
                                        "a port < 1024, then sockvisor drops to nobody")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) missing")
def test_unprivileged_sockvisor_serves_a_privileged_port(services, world_readable_dir):
    """Root binds 127.0.0.1:<port < 1024>; sockvisor and its workers run as nobody.

    nobody cannot reach the test interpreter under /root, nor pytest's 0700 tmp
    tree: Debian's /usr/bin/python3 runs a copy of the sockvisor package from a
    world-readable directory.  The config names no endpoint, so the control
    channel is optional, as sockvisor documents: with Debian's python3-zmq it
    opens under $XDG_RUNTIME_DIR, without it sockvisor serves with a warning.
    Either way the test runs, so it needs nothing the README's set-up lacks.
    """
    nobody = pwd.getpwnam("nobody")
    top = world_readable_dir
    lib = top / "lib"
    shutil.copytree(Path(sockvisor.__file__).parent, lib / "sockvisor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [lib, *lib.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = top / "run"                     # nobody's XDG_RUNTIME_DIR
    run.mkdir(mode=0o700)
    os.chown(run, nobody.pw_uid, nobody.pw_gid)
    port = privileged_free_port()
    conf, state = web_config(top, port, python="/usr/bin/python3", endpoint=False)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    conf.chmod(0o644)
    has_zmq = subprocess.run(["/usr/bin/python3", "-c", "import zmq"],
                             capture_output=True).returncode == 0

    sv = services.start(
        activate(port, "setpriv", "--reuid", "nobody", "--regid", "nogroup",
                 "--clear-groups", "/usr/bin/python3", "-m", "sockvisor", "start", str(conf),
                 env={"PYTHONPATH": str(lib), "PYTHONDONTWRITEBYTECODE": "1",
                      "PYTHONUNBUFFERED": "1", "XDG_RUNTIME_DIR": str(run)}),
        clean_env())
    client = first_connection(port, sv)
    with client:
        send_request(client)
        reply = read_http_reply(client)
    process = psutil.Process(sv.pid)
    assert "sockvisor" in " ".join(process.cmdline())
    assert process.uids().real == process.uids().effective == nobody.pw_uid
    assert reply["ppid"] == sv.pid
    assert reply["uids"] == [nobody.pw_uid] * 3
    assert f"socket web adopted from the service manager: 127.0.0.1:{port}" in sv.log()
    if has_zmq:
        assert f"control endpoint ipc://{run}/sockvisor/" in sv.log()
    else:
        assert "control channel disabled" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
