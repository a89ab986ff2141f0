"""Attack: a worker turns the listening socket root gave it into a control client.

The loopback tcp:// relay (control/relay.py) judges a client by the uid the
kernel records on the peer's socket -- the uid of whoever *created* that socket.
Every worker holds sockets root created: the listening sockets sockvisor bound
(or adopted from systemd) and handed it as fd 3….  A worker running as `nobody`
can take its fd 3 out of LISTEN (connect() with AF_UNSPEC) and connect() that
very socket to the control port: the kernel then says uid 0 for the peer.  If
the relay believed it, nobody would get owner rights (run any command as root).

sockvisor remembers the inode of every listening socket it ever held
(sockets.py) and peer.py refuses a peer whose socket is one of them: the relay
serves it as a stranger (errno 7, nothing runs).

The worker forwards the hijacked connection to a unix socket, so that the test
can speak ZMTP through it with pyzmq.

Not covered (not cheaply repairable): the hijacked socket stays out of
service for every other worker sharing it.  It is now a connected socket
(CLOSE_WAIT once the relay lets go, while sockvisor and the worker hold it),
which listen() refuses with EINVAL, so keep_listening() cannot repair it the way
it repairs a worker's shutdown(): that needs a fresh socket on the same port.
"""

from __future__ import annotations

import os
import textwrap

import pytest


from conftest import Sockvisor, free_port
from group_member import SYSTEM_PYTHON
from hijack import assert_add_refused_through

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user")]

HIJACKER = textwrap.dedent("""\
    import ctypes, os, socket, sys, threading
    control, proxy = int(sys.argv[1]), sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    # struct sockaddr with sa_family = AF_UNSPEC: tcp_disconnect(), out of LISTEN.
    unspec = ctypes.create_string_buffer(16)
    if libc.connect(3, unspec, 16) != 0:
        sys.exit(f"connect(AF_UNSPEC): errno {ctypes.get_errno()}")
    conn = socket.socket(fileno=3)
    conn.setblocking(True)
    conn.connect(("127.0.0.1", control))
    server = socket.socket(socket.AF_UNIX)
    server.bind(proxy)
    os.chmod(proxy, 0o777)
    server.listen(1)
    print("hijacked", conn.getsockname(), "->", conn.getpeername(), flush=True)
    client, _ = server.accept()

    def pump(a, b):
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    threading.Thread(target=pump, args=(client, conn), daemon=True).start()
    pump(conn, client)
    """)


@pytest.mark.timeout(90)
def test_worker_cannot_pass_for_root_with_its_listening_socket(world_readable_dir):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a worker as nobody")
    script = world_readable_dir / "hijacker.py"
    script.write_text(HIJACKER)
    script.chmod(0o644)
    shared = world_readable_dir / "w"   # where nobody may create its unix socket
    shared.mkdir()
    shared.chmod(0o777)
    proxy = shared / "proxy.sock"
    marker = world_readable_dir / "PWNED"
    control = free_port()
    endpoint = f"tcp://127.0.0.1:{control}"
    directory = world_readable_dir / "sv"
    directory.mkdir()
    sv = Sockvisor(directory, textwrap.dedent(f"""\
        [circus]
        endpoint = {endpoint}
        pubsub_endpoint = tcp://127.0.0.1:{free_port()}

        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {SYSTEM_PYTHON} -u {script} {control} {proxy}
        sockets = web
        numprocesses = 1
        uid = nobody
        gid = nogroup
        respawn = false
        """))
    try:
        sv.wait_ready()
        assert_add_refused_through(sv, proxy, endpoint, marker, ["web"],
                                   "a worker's hijacked listening socket")
    finally:
        sv.cleanup()
