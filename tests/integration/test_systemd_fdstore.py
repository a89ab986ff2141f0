"""The service manager's fd store: listening sockets that outlive sockvisor.

With the store enabled, sockvisor sends each listening socket to the manager
(FDSTORE=1, FDNAME=<section name>, the fd by SCM_RIGHTS).  When sockvisor dies,
the manager still holds the socket, so clients keep queueing in its backlog; the
next sockvisor gets it back as fd 3 with LISTEN_FDS/LISTEN_FDNAMES and serves
the queued connections.  The test plays the manager, including the restart.

When is the store enabled?  systemd >= 254 sets $FDSTORE when
FileDescriptorStoreMax= is configured; 252 (Debian 12) does not, so
`[sockvisor] fdstore = true` says it instead, and `false` refuses even with
$FDSTORE.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import free_port, is_gone, wait_for  # noqa: E402
from control_client_helpers import fd_link, ok  # noqa: E402
from systemd_helpers import (services, manager, SOCKVISOR, clean_env, exec_as_self,  # noqa: E402,F401
                             read_http_reply, send_request, worker_states,
                             write_config, write_worker)

pytestmark = pytest.mark.timeout(90)


def config(directory: Path, globals_: str = "") -> tuple[Path, Path]:
    directory.mkdir(exist_ok=True)
    state = directory / "state"
    state.mkdir(exist_ok=True)
    worker = write_worker(directory)
    conf = write_config(directory, f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {worker} --state {state}
        sockets = web
        numprocesses = 2
        graceful_timeout = 2
    """, globals_=globals_)
    return conf, state


@pytest.mark.parametrize("fdstore_env, option, stored", [
    (None, None, False),          # systemd 252 without the option: no store
    ("4", None, True),            # systemd >= 254 with FileDescriptorStoreMax=4
    (None, "fdstore = true", True),     # systemd 252 told by the config
    ("4", "fdstore = false", False),    # the config refuses the store
])
def test_fdstore_only_when_allowed(tmp_path, services, manager, fdstore_env, option,
                                   stored):
    conf, _state = config(tmp_path / "sv", globals_=option or "")
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(NOTIFY_SOCKET=manager.address, FDSTORE=fdstore_env))
    manager.expect_field("READY", "1", alive=sv.proc)
    stores = manager.with_key("FDSTORE")
    if not stored:
        assert not stores and not manager.with_key("FDSTOREREMOVE"), manager.messages
    else:
        [store] = stores
        assert store.fields == {"FDSTORE": "1", "FDNAME": "web"}
        [fd] = store.fds
        port = int(sv.wait_log(r"socket web listening on 127\.0\.0\.1:(\d+)$").group(1))
        with socket.socket(fileno=os.dup(fd)) as held:
            assert held.getsockname() == ("127.0.0.1", port)
            assert held.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_restart_from_the_fd_store_serves_the_queued_connection(tmp_path, services,
                                                                 manager):
    conf, state = config(tmp_path / "sv")
    env = clean_env(NOTIFY_SOCKET=manager.address, FDSTORE="4")
    first = services.start(SOCKVISOR + [str(conf)], env, name="first")
    store = manager.expect_field("FDSTORE", "1", alive=first.proc)
    assert store.fields["FDNAME"] == "web"
    [stored_fd] = store.fds
    manager.expect_field("READY", "1", alive=first.proc)
    port = int(first.wait_log(r"socket web listening on 127\.0\.0\.1:(\d+)$").group(1))
    first_workers = [w["pid"] for w in wait_for(
        lambda: len(worker_states(state)) == 2 and worker_states(state), 10,
        message=lambda: f"two workers serving\n{first.describe()}")]

    # sockvisor dies hard; its workers follow (PR_SET_PDEATHSIG).  Only the
    # manager's copy of the socket is left.
    first.track()
    first.proc.kill()
    assert first.wait_exit() == -signal.SIGKILL
    wait_for(lambda: all(is_gone(pid) for pid in first_workers), 10,
             message="the first generation of workers to die with sockvisor")

    # A client arrives while nobody runs: the kernel queues it in the stored
    # socket's backlog.
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        send_request(client)

        # The manager restarts the service with the stored fd as fd 3.
        argv, extra = exec_as_self(SOCKVISOR + [str(conf)], fd_at_3=stored_fd)
        second = services.start(argv, {**env, **extra, "LISTEN_FDS": "1",
                                       "LISTEN_FDNAMES": "web"},
                                pass_fds=[stored_fd], name="second")
        second.wait_log(r"socket web adopted from the service manager: "
                        rf"127\.0\.0\.1:{port}$")
        reply = read_http_reply(client)
    finally:
        client.close()
    # Served by a worker of the new sockvisor.
    assert reply["ppid"] == second.pid
    assert reply["pid"] not in first_workers
    assert "listening on" not in second.log()     # adopted, not bound again

    # The new sockvisor puts the socket back in the store (the manager keeps one
    # copy per socket) and says it is ready.
    restore = manager.expect(lambda m: m.fields.get("FDSTORE") == "1"
                             and m.pid == second.pid, what="FDSTORE from the second",
                             alive=second.proc)
    assert restore.fields["FDNAME"] == "web"
    [again] = restore.fds
    assert os.fstat(again).st_ino == os.fstat(stored_fd).st_ino
    manager.expect(lambda m: m.fields.get("READY") == "1" and m.pid == second.pid,
                   what="READY from the second", alive=second.proc)
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    # Its workers were its own children, and they are gone too.
    assert all(psutil.Process(pid).ppid() != second.pid
               for pid in first_workers if psutil.pid_exists(pid))


def test_stored_socket_of_a_removed_section_is_dropped_from_the_store(
        tmp_path, services, manager):
    """A socket in the store whose [socket:NAME] section is gone is closed and
    removed from the store, or the manager would hold its address for ever."""
    conf, _state = config(tmp_path / "sv")
    stray = socket.socket()
    stray.bind(("127.0.0.1", 0))
    stray.listen()
    try:
        argv, extra = exec_as_self(SOCKVISOR + [str(conf)], fd_at_3=stray.fileno())
        sv = services.start(argv, clean_env(NOTIFY_SOCKET=manager.address, FDSTORE="4",
                                            LISTEN_FDS="1", LISTEN_FDNAMES="old", **extra),
                            pass_fds=[stray.fileno()])
        manager.expect_field("READY", "1", alive=sv.proc)
    finally:
        stray.close()
    assert [m.fields for m in manager.with_key("FDSTOREREMOVE")
            if m.fields.get("FDNAME") == "old"] == [{"FDSTOREREMOVE": "1", "FDNAME": "old"}]
    assert "passed by the service manager as 'old' matches no [socket:NAME]" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_reloadconfig_keeps_the_store_in_step_with_renamed_and_swapped_sockets(
        tmp_path, services, manager):
    """After reloadconfig the store must hold each listening socket under its new
    name -- checked against a model of systemd's store, which ignores a second
    FDSTORE=1 of an fd it holds (keeping the first name): a socket taken over by a
    renamed section, or two swapping addresses, must leave under the old name
    first, or a restart from the store would lose them."""
    directory = tmp_path / "sv"
    directory.mkdir()
    worker = write_worker(directory)

    def body(*sockets: tuple[str, int]) -> str:
        text = ""
        for name, port in sockets:
            text += f"""
                [socket:{name}]
                host = 127.0.0.1
                port = {port}

                [watcher:{name}]
                cmd = {sys.executable} {worker}
                sockets = {name}
                graceful_timeout = 2
            """
        return text

    one = free_port()
    two = wait_for(lambda: (port := free_port()) != one and port, 5,
                   message="a second free port")
    conf = write_config(directory, body(("a", one), ("b", two)), globals_="fdstore = true")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    manager.expect_field("READY", "1", alive=sv.proc)
    endpoint = f"ipc://{directory}/ctl"
    inode = {entry["name"]: fd_link(sv.pid, entry["fd"])
             for entry in ok(endpoint, "listsockets")["sockets"]}
    inode = {name: int(link[len("socket:["):-1]) for name, link in inode.items()}

    def store_becomes(expected: dict[str, list[int]]) -> None:
        def matches() -> bool:
            manager.collect(0.05)
            return manager.fd_store() == expected
        wait_for(matches, 10, message=lambda: f"the store {manager.fd_store()} to be "
                                              f"{expected}\n{manager.messages}")

    store_becomes({"a": [inode["a"]], "b": [inode["b"]]})

    # Swap the two addresses: each name now has the other's socket.
    write_config(directory, body(("a", two), ("b", one)), globals_="fdstore = true")
    reply = ok(endpoint, "reloadconfig", timeout=60)
    assert reply["sockets_taken_over"] == {"a": "b", "b": "a"}, reply
    store_becomes({"a": [inode["b"]], "b": [inode["a"]]})

    # Rename b to c, same address: c has b's socket, b is gone from the store.
    write_config(directory, body(("a", two), ("c", one)), globals_="fdstore = true")
    reply = ok(endpoint, "reloadconfig", timeout=60)
    assert reply["sockets_taken_over"] == {"c": "b"}, reply
    store_becomes({"a": [inode["b"]], "c": [inode["a"]]})

    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# Shut the unix socket down once (a hostile or buggy worker), then idle.
_SHUTDOWN_ONCE = r'''
import os, signal, socket, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    socket.socket(fileno=3).shutdown(socket.SHUT_RD)
    sys.exit(1)
while True:
    signal.pause()
'''


def test_a_unix_socket_bound_anew_replaces_the_stored_one(tmp_path, services, manager):
    """No listen() undoes a unix socket's shutdown(): sockvisor binds a new socket
    at the path (sockets.keep_listening).  The store must then hold the new one,
    or a restart from the store would adopt the dead socket and refuse everyone."""
    directory = tmp_path / "sv"
    directory.mkdir()
    script = directory / "shutdown_once.py"
    script.write_text(_SHUTDOWN_ONCE)
    path = directory / "app.sock"
    conf = write_config(directory, f"""
        [socket:app]
        path = {path}

        [watcher:app]
        cmd = {sys.executable} {script} {directory / "shut-down"}
        sockets = app
        graceful_timeout = 2
        min_uptime = 0
    """, globals_="fdstore = true\nstart_failure = continue")
    sv = services.start(SOCKVISOR + [str(conf)], clean_env(NOTIFY_SOCKET=manager.address))
    first = manager.expect_field("FDSTORE", "1", alive=sv.proc)
    [first_fd] = first.fds
    first_inode = os.fstat(first_fd).st_ino
    sv.wait_log(r"socket app .*was shut down by a worker")

    def store_holds_a_new_socket() -> bool:
        manager.collect(0.05)
        store = manager.fd_store()
        return store.get("app") not in (None, [first_inode]) and store
    store = wait_for(store_holds_a_new_socket, 10,
                     message=lambda: f"a new socket in the store\n{manager.messages}")
    [inode] = store["app"]
    assert os.stat(path).st_ino != first_inode   # not the file: the socket's inode
    held = [m for m in manager.with_key("FDSTORE") if m.fields.get("FDNAME") == "app"][-1]
    with socket.socket(fileno=os.dup(held.fds[0])) as stored:
        assert stored.getsockname() == str(path)
        stored.settimeout(5)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))          # the stored socket takes connections
            stored.accept()[0].close()
    assert os.fstat(held.fds[0]).st_ino == inode
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
