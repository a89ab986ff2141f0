"""Attack: a local user drives sockvisor through a loopback tcp:// control endpoint.

Circus's configs write its default out (`endpoint = tcp://127.0.0.1:5555`), and
circusctl with no flags goes there.  Any local user can connect to a loopback
port, so the port itself is no credential: sockvisor asks the kernel who owns
the peer's socket (sock_diag, control/peer.py) and serves root (owner rights) and
`endpoint_group` members (operator rights) only.  Everyone else gets an error
reply and nothing runs -- checked here by running the real circusctl and
sockvisorctl as `nobody` and comparing the worker count before and after.

`nobody` cannot reach the test interpreter (under /root, 0700), so its clients
run on Debian's /usr/bin/python3 with python3-zmq, importing copies of sockvisor,
circus and tornado from a world-readable directory (group_member.py does the
same for sockvisor).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import ErrNo

from conftest import Sockvisor, _clean_env, free_port, port_is_free, wait_for
from group_member import SYSTEM_PYTHON

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user")]

SECRET = "hunter2-not-for-nobody"


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"{result.args!r} exited {result.returncode}\n--- stdout ---\n{result.stdout}"
            f"\n--- stderr ---\n{result.stderr}")


class Nobody:
    """Clients run as `nobody` (no supplementary groups): sockvisorctl, and
    circusctl when Circus is installed."""

    def __init__(self, top: Path):
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            pytest.skip(f"{SYSTEM_PYTHON} is needed to run a client as nobody")
        if subprocess.run([SYSTEM_PYTHON, "-c", "import zmq, psutil"],
                          capture_output=True).returncode != 0:
            pytest.skip(f"{SYSTEM_PYTHON} has no zmq/psutil (python3-zmq, python3-psutil)")
        entry = pwd.getpwnam("nobody")
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.lib = top / "lib"
        packages = ["sockvisor"]
        try:
            import circus
            import tornado
            packages += ["circus", "tornado"]
            self.has_circus = True
            del circus, tornado
        except ImportError:
            self.has_circus = False
        for name in packages:
            source = Path(__import__(name).__file__).parent
            shutil.copytree(source, self.lib / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for path in [self.lib, *self.lib.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.lib),
                       "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
        return subprocess.run([SYSTEM_PYTHON, *argv], user=self.uid, group=self.gid,
                              extra_groups=[], cwd="/", env=environment,
                              capture_output=True, text=True, timeout=60)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("-m", "sockvisor.cli.ctl", *args)

    def circusctl(self, *args: str) -> subprocess.CompletedProcess:
        if not self.has_circus:
            pytest.skip("Circus 0.19 (circusctl) is not installed")
        return self.run("-c", "from circus.circusctl import main; main()", *args)


def root_ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockvisor.cli.ctl", *args],
                          env=_clean_env(), capture_output=True, text=True, timeout=60)


def root_circusctl(*args: str) -> subprocess.CompletedProcess:
    """The installed `circusctl` script, as root, with exactly `args` (no flags added)."""
    pytest.importorskip("circus", reason="Circus 0.19 (circusctl) is not installed")
    script = shutil.which("circusctl")
    command = ([script] if script else
               [sys.executable, "-c", "from circus.circusctl import main; main()"])
    return subprocess.run([*command, *args], env=_clean_env(), capture_output=True,
                          text=True, timeout=60)


def numprocesses(endpoint: str) -> int:
    with ControlClient(endpoint, 10) as client:
        reply = client.call("numprocesses", {"name": "web"})
    assert reply["status"] == "ok", reply
    return reply["numprocesses"]


@pytest.fixture
def tcp_sockvisor(world_readable_dir, scripts):
    """start(endpoint, pubsub, extra globals) -> a running Sockvisor on a tcp endpoint."""
    instances: list[Sockvisor] = []

    def start(endpoint: str, pubsub: str, extra: str = "") -> Sockvisor:
        directory = world_readable_dir / f"sv{len(instances)}"
        directory.mkdir()
        sv = Sockvisor(directory, textwrap.dedent(f"""\
            [circus]
            endpoint = {endpoint}
            pubsub_endpoint = {pubsub}
            {extra}

            [socket:web]
            host = 127.0.0.1
            port = 0

            [watcher:web]
            cmd = {scripts.cmd("worker.py")}
            sockets = web
            numprocesses = 1
            graceful_timeout = 1
            env = SECRET={SECRET}
            """))
        instances.append(sv)
        sv.wait_ready()
        return sv

    yield start
    for sv in instances:
        sv.cleanup()


@pytest.mark.timeout(120)
def test_circusctl_without_flags_on_circus_default_endpoint(tcp_sockvisor,
                                                             world_readable_dir):
    """Circus's default written out: root's circusctl (no flags) drives it; the same
    circusctl run by nobody is refused and changes nothing."""
    pytest.importorskip("circus", reason="Circus 0.19 (circusctl) is not installed")
    for port in (5555, 5556):
        if not port_is_free(port):
            pytest.skip(f"127.0.0.1:{port} (Circus's default endpoint) is in use here")
    endpoint = "tcp://127.0.0.1:5555"
    sv = tcp_sockvisor(endpoint, "tcp://127.0.0.1:5556")
    nobody = Nobody(world_readable_dir)

    result = root_circusctl("status")
    assert result.returncode == 0 and result.stdout.strip() == "web: active", \
        describe(result)
    result = root_circusctl("incr", "web")
    assert result.returncode == 0 and result.stdout.strip() == "2", describe(result)
    sv.wait_workers(2, "worker.py")
    before = sv.wait_workers(2, "worker.py")
    result = root_circusctl("reload", "web")
    assert result.returncode == 0 and result.stdout.strip() == "ok", describe(result)
    sv.wait_workers(2, "worker.py", exclude=before)

    # nobody: the same circusctl, no flags.  Refused: an error, nothing changes.
    for args in (["incr", "web"], ["add", "evil", "touch /tmp/sockvisor-owned"],
                 ["quit"]):
        result = nobody.circusctl(*args)
        assert result.returncode != 0, describe(result)
        assert "not allowed" in (result.stdout + result.stderr), describe(result)
    result = nobody.circusctl("status")
    assert result.returncode != 0, describe(result)
    assert sv.proc.poll() is None, "nobody's quit stopped sockvisor"
    assert numprocesses(endpoint) == 2
    with ControlClient(endpoint, 10) as client:
        assert [w for w in client.call("list")["watchers"]] == ["web"]
    assert not os.path.exists("/tmp/sockvisor-owned")


@pytest.mark.timeout(120)
def test_sockvisorctl_tcp_root_served_nobody_refused(tcp_sockvisor, world_readable_dir):
    control, events = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{control}"
    sv = tcp_sockvisor(endpoint, f"tcp://127.0.0.1:{events}")
    nobody = Nobody(world_readable_dir)

    result = root_ctl("--endpoint", endpoint, "status")
    assert result.returncode == 0 and "active" in result.stdout, describe(result)
    result = root_ctl("--endpoint", endpoint, "options", "web")
    assert result.returncode == 0 and SECRET in result.stdout, describe(result)

    for args in (["incr", "web"], ["status"], ["options", "web"], ["quit"]):
        result = nobody.ctl("--endpoint", endpoint, *args)
        assert result.returncode != 0, describe(result)
        assert "not allowed" in result.stderr, describe(result)
        assert SECRET not in result.stdout + result.stderr
    result = nobody.ctl("--endpoint", endpoint, "--json", "incr", "web")
    reply = json.loads(result.stdout)
    assert reply["status"] == "error" and reply["errno"] == ErrNo.FORBIDDEN, reply
    assert sv.proc.poll() is None
    assert numprocesses(endpoint) == 1
    result = root_ctl("--endpoint", endpoint, "incr", "web")
    assert result.returncode == 0, describe(result)
    assert numprocesses(endpoint) == 2


@pytest.mark.timeout(120)
def test_endpoint_group_member_operates_over_tcp(tcp_sockvisor, world_readable_dir):
    """nobody's primary group as endpoint_group: nobody gets operator rights
    (look, scale within the maximum; never quit, never see env values)."""
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    endpoint = (f"tcp://[::1]:{_free_port_v6()}" if _has_ipv6()
                else f"tcp://127.0.0.1:{free_port()}")
    sv = tcp_sockvisor(endpoint, f"tcp://127.0.0.1:{free_port()}",
                       f"endpoint_group = {group}")
    nobody = Nobody(world_readable_dir)

    result = nobody.ctl("--endpoint", endpoint, "status")
    assert result.returncode == 0 and "active" in result.stdout, describe(result)
    result = nobody.ctl("--endpoint", endpoint, "incr", "web")
    assert result.returncode == 0, describe(result)
    wait_for(lambda: len(sv.worker_pids("worker.py")) == 2, 10)
    result = nobody.ctl("--endpoint", endpoint, "options", "web")
    assert result.returncode == 0, describe(result)
    assert SECRET not in result.stdout and "redacted" in result.stdout
    result = nobody.ctl("--endpoint", endpoint, "quit")
    assert result.returncode != 0 and "not allowed" in result.stderr, describe(result)
    assert sv.proc.poll() is None
    with ControlClient(endpoint, 10) as client:   # root: the owner
        reply = client.call("options", {"name": "web"})
    assert reply["options"]["env"]["SECRET"] == SECRET


def _has_ipv6() -> bool:
    try:
        _free_port_v6()
        return True
    except OSError:
        return False


def _free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def test_non_loopback_tcp_still_needs_curve(tmp_path, scripts):
    conf = tmp_path / "tcp.ini"
    for endpoint in (f"tcp://0.0.0.0:{free_port()}", "tcp://*:5555",
                     "tcp://192.0.2.1:5555", "tcp://eth0:5555"):
        conf.write_text(f"[circus]\nendpoint = {endpoint}\n\n[watcher:web]\n"
                        f"cmd = {scripts.cmd('worker.py')}\n")
        result = subprocess.run([sys.executable, "-m", "sockvisor", "check", str(conf)],
                                env=_clean_env(), capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2, describe(result)
        assert "curve_secret_key_file" in result.stderr, describe(result)


SUBSCRIBER = r"""
import json, sys, zmq
sub = zmq.Context.instance().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
while True:
    topic, data = sub.recv_multipart()
    sys.stdout.write(json.dumps([topic.decode(), data.decode()]) + "\n")
    sys.stdout.flush()
"""


class Subscriber:
    """A SUB client printing every event as a JSON line, read by a thread."""

    def __init__(self, command: list[str], **popen: Any):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                        **popen)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout),
                         daemon=True).start()

    def saw(self, word: str) -> bool:
        return any(word in line for line in self.lines)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("member", [False, True], ids=["stranger", "member"])
def test_loopback_tcp_events_reach_owner_and_members_only(tcp_sockvisor,
                                                          world_readable_dir, member):
    """Events on loopback tcp go to root and endpoint_group members, as the ipc
    events file would; anyone else is disconnected by the relay.  What members
    see holds nothing `options` would redact."""
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    control, events = free_port(), free_port()
    endpoint, events_endpoint = f"tcp://127.0.0.1:{control}", f"tcp://127.0.0.1:{events}"
    sv = tcp_sockvisor(endpoint, events_endpoint,
                       f"endpoint_group = {group}" if member else "")
    nobody = Nobody(world_readable_dir)
    script = world_readable_dir / "subscriber.py"
    script.write_text(SUBSCRIBER)
    script.chmod(0o644)
    theirs = Subscriber([SYSTEM_PYTHON, str(script), events_endpoint], user=nobody.uid,
                        group=nobody.gid, extra_groups=[], cwd="/",
                        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    ours = Subscriber([sys.executable, str(script), events_endpoint], env=_clean_env())
    try:
        # A subscription takes effect some time after the connection: change the
        # worker count until root's subscriber (and a member's) has seen a spawn.
        expected = [ours, theirs] if member else [ours]
        for count in range(2, 8):
            with ControlClient(endpoint, 10) as client:
                assert client.call("set", {"name": "web", "options":
                                           {"numprocesses": count}})["status"] == "ok"
            try:
                wait_for(lambda: all(s.saw(".spawn") for s in expected), 2)
                break
            except AssertionError:
                continue
        assert ours.saw(".spawn"), ours.lines
        if member:
            assert theirs.saw(".spawn"), theirs.lines
            assert not any(SECRET in line for line in theirs.lines)
        else:
            sv.wait_log(r"events tcp://127\.0\.0\.1:\d+: closed a connection from "
                        r"uid 65534: no rights")
            assert theirs.lines == []
    finally:
        ours.close()
        theirs.close()


FAKE_SOCKVISOR = r"""
import json, sys, zmq
router = zmq.Context.instance().socket(zmq.ROUTER)
router.bind(sys.argv[1])
sys.stdout.write("listening\n"); sys.stdout.flush()
while True:
    identity, request = router.recv_multipart()
    sys.stdout.write(request.decode() + "\n"); sys.stdout.flush()
    reply = {"id": json.loads(request)["id"], "status": "ok", "time": 0,
             "statuses": {"web": "active"}, "numprocesses": 1}
    router.send_multipart([identity, json.dumps(reply).encode()])
"""


@pytest.mark.timeout(60)
def test_sockvisorctl_sends_nothing_to_a_port_another_user_squats(world_readable_dir):
    """The mirror attack: while no sockvisor runs, nobody listens on the loopback
    port root's sockvisorctl is pointed at (anyone may bind a free port), to read
    what root sends (`set web env SECRET=…`) and answer what it likes.  The
    client asks the kernel who owns the listener's side and refuses to talk to
    anyone but root or itself."""
    nobody = Nobody(world_readable_dir)
    port = free_port()
    script = world_readable_dir / "fake.py"
    script.write_text(FAKE_SOCKVISOR)
    script.chmod(0o644)
    fake = subprocess.Popen([SYSTEM_PYTHON, str(script), f"tcp://127.0.0.1:{port}"],
                            user=nobody.uid, group=nobody.gid, extra_groups=[], cwd="/",
                            stdout=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(fake.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "listening\n" in lines, 10)
        result = root_ctl("--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "3",
                          "set", "web", "env", f"SECRET={SECRET}")
        assert result.returncode == 3, describe(result)
        assert "uid 65534" in result.stderr or "nobody" in result.stderr, describe(result)
        result = root_ctl("--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "3",
                          "status")
        assert result.returncode == 3, describe(result)
    finally:
        fake.kill()
        fake.wait()
    assert lines == ["listening\n"], "the squatter received requests"


HOARDER = r"""
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held, closed, relayed = [], 0, 0
for _ in range(count):
    conn = socket.create_connection(("127.0.0.1", port))
    conn.settimeout(5)
    held.append(conn)
    try:
        # The relay closes a connection over the limit at once; a relayed one
        # hears the ipc endpoint's ZMTP greeting.
        if conn.recv(1):
            relayed += 1
        else:
            closed += 1
    except OSError:
        closed += 1
print(relayed, closed, flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(60)
def test_a_user_cannot_hold_more_than_its_share_of_connections(tcp_sockvisor,
                                                               world_readable_dir):
    """Each relayed connection costs root two fds: a local user gets PER_UID of
    them, the rest are closed at once, and root is still served meanwhile."""
    from sockvisor.control.relay import PER_UID
    control = free_port()
    endpoint = f"tcp://127.0.0.1:{control}"
    tcp_sockvisor(endpoint, f"tcp://127.0.0.1:{free_port()}")
    nobody = Nobody(world_readable_dir)
    script = world_readable_dir / "hoarder.py"
    script.write_text(HOARDER)
    script.chmod(0o644)
    hoarder = subprocess.Popen(
        [SYSTEM_PYTHON, str(script), str(control), str(PER_UID + 14)], user=nobody.uid,
        group=nobody.gid, extra_groups=[], cwd="/", stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    try:
        relayed, closed = map(int, hoarder.stdout.readline().split())
        assert (relayed, closed) == (PER_UID, 14)
        with ControlClient(endpoint, 10) as client:
            assert client.call("status")["status"] == "ok"
    finally:
        hoarder.kill()
        hoarder.wait()
