"""Attack: hijack a *retired* listening socket after an upgrade forgot it.

test_control_tcp_hijacked_listener.py is the attack on a socket in the table:
a `nobody` worker takes its root-created fd 3 out of LISTEN, connect()s it to
the loopback tcp:// control port, and the kernel says uid 0.  sockvisor refuses
such a peer by the socket's inode (control/peer.py, step 5), and it remembers
the inodes of retired sockets too, "a worker may still hold one".

`upgrade` is refused while sockvisor itself still keeps a retired socket open
for workers of a failed reload (upgrade.refusal), so no worker sockvisor gave a
retired socket to is alive at the exec.  But a worker's copy of a socket is the
worker's to pass on: here the worker holding [socket:old] sends it (SCM_RIGHTS)
to a worker of another watcher, of the same user, that holds no socket of
sockvisor's.  reloadconfig then removes [socket:old] and its watcher; the
giver exits, sockvisor closes its own fd (the socket lives on in the keeper),
and nothing is left that refuses an upgrade.  After the exec the keeper
hijacks the retired socket and sends `add` (a watcher that would run as root)
through it: the upgraded sockvisor must still know the socket as one it handed
out, and serve the peer as a stranger.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from sockvisor.control.client import ControlClient

from conftest import Sockvisor, _clean_env, free_port, wait_for
from group_member import SYSTEM_PYTHON
from hijack import assert_add_refused_through

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user")]

# Serves its fd 3 ([socket:old]) to whoever connects to SHARE.
GIVER = textwrap.dedent("""\
    import os, socket, sys
    share = sys.argv[1]
    server = socket.socket(socket.AF_UNIX)
    server.bind(share)
    os.chmod(share, 0o777)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        socket.send_fds(conn, [b"fd"], [3])
        conn.close()
    """)

# Takes the socket from the giver, says which port it listens on (GOT), waits
# for TRIGGER, then hijacks it as test_control_tcp_hijacked_listener.py does
# and forwards the connection to the unix socket PROXY.
KEEPER = textwrap.dedent("""\
    import ctypes, os, socket, sys, threading, time
    share, got, trigger, control, proxy = sys.argv[1:6]
    deadline = time.monotonic() + 30
    while True:
        try:
            giver = socket.socket(socket.AF_UNIX)
            giver.connect(share)
            break
        except OSError:
            giver.close()
            if time.monotonic() > deadline:
                sys.exit("no giver")
            time.sleep(0.05)
    _, (fd,), _, _ = socket.recv_fds(giver, 16, 1)
    giver.close()
    held = socket.socket(fileno=fd)
    with open(got + ".tmp", "w") as out:
        out.write(str(held.getsockname()[1]))
    os.rename(got + ".tmp", got)
    while not os.path.exists(trigger):
        if time.monotonic() > deadline + 60:
            sys.exit("no trigger")
        time.sleep(0.05)
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = ctypes.create_string_buffer(16)
    if libc.connect(fd, unspec, 16) != 0:
        sys.exit(f"connect(AF_UNSPEC): errno {ctypes.get_errno()}")
    held.setblocking(True)
    held.connect(("127.0.0.1", int(control)))
    server = socket.socket(socket.AF_UNIX)
    server.bind(proxy)
    os.chmod(proxy, 0o777)
    server.listen(1)
    print("hijacked", held.getsockname(), "->", held.getpeername(), flush=True)
    client, _ = server.accept()

    def pump(a, b):
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    threading.Thread(target=pump, args=(client, held), daemon=True).start()
    pump(held, client)
    """)


def _config(control: int, events: int, giver: str | None, keeper: str) -> str:
    text = textwrap.dedent(f"""\
        [circus]
        endpoint = tcp://127.0.0.1:{control}
        pubsub_endpoint = tcp://127.0.0.1:{events}

        [watcher:keeper]
        cmd = {keeper}
        numprocesses = 1
        uid = nobody
        gid = nogroup
        respawn = false
        """)
    if giver is not None:
        text += textwrap.dedent(f"""
            [socket:old]
            host = 127.0.0.1
            port = 0

            [watcher:giver]
            cmd = {giver}
            sockets = old
            numprocesses = 1
            uid = nobody
            gid = nogroup
            respawn = false
            """)
    return text


@pytest.mark.timeout(120)
def test_upgrade_does_not_forget_a_retired_socket_a_worker_still_holds(world_readable_dir):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a worker as nobody")
    for name, text in (("giver.py", GIVER), ("keeper.py", KEEPER)):
        (world_readable_dir / name).write_text(text)
        (world_readable_dir / name).chmod(0o644)
    shared = world_readable_dir / "w"   # where nobody may create its files
    shared.mkdir()
    shared.chmod(0o777)
    share, got, trigger, proxy = (shared / n for n in ("share.sock", "got", "go",
                                                       "proxy.sock"))
    marker = world_readable_dir / "PWNED"
    control, events = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{control}"
    giver = f"{SYSTEM_PYTHON} -u {world_readable_dir / 'giver.py'} {share}"
    keeper = (f"{SYSTEM_PYTHON} -u {world_readable_dir / 'keeper.py'} "
              f"{share} {got} {trigger} {control} {proxy}")
    directory = world_readable_dir / "sv"
    directory.mkdir()
    sv = Sockvisor(directory, _config(control, events, giver, keeper))
    try:
        sv.wait_ready()
        address = sv.address("old")
        port = int(address.rpartition(":")[2])
        wait_for(lambda: got.exists() or sv.proc.poll() is not None, 20,
                 message=sv.describe)
        assert got.read_text() == str(port), sv.describe()

        # reloadconfig retires [socket:old]; once its worker is gone sockvisor
        # closes it -- and nothing refuses an upgrade any more.
        sv.conf.write_text(_config(control, events, None, keeper))
        with ControlClient(endpoint, 30) as client:
            client.call("reloadconfig")
        sv.wait_log(rf"socket old \({re.escape(address)}\) closed", 20)
        upgraded = subprocess.run(
            [sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint", endpoint, "--json",
             "upgrade"], env=_clean_env(), capture_output=True, text=True, timeout=60)
        assert upgraded.returncode == 0, \
            f"{upgraded.stdout}\n{upgraded.stderr}\n{sv.describe()}"
        with ControlClient(endpoint, 10) as client:
            assert client.call("upgrade", {"result": True})["upgrades"] == 1
            assert list(client.call("list")["watchers"]) == ["keeper"]

        # The keeper, a worker still, hijacks the retired socket now.
        trigger.write_text("")
        assert_add_refused_through(sv, proxy, endpoint, marker, ["keeper"],
                                   "after an upgrade, a retired listening socket")
    finally:
        sv.cleanup()
