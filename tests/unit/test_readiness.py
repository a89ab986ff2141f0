"""sockvisor.readiness: workers' sd_notify messages reach the supervisor.

Real processes send to the listener's abstract address; the test runs the
asyncio loop until the callback has seen what it expects (with a deadline),
never sleeps.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sockvisor.readiness import MAX_MESSAGE, ReadinessListener, parse_notify_message

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 10.0


# --------------------------------------------------------------------------- helpers

class Collector:
    """A callback that records messages and wakes up whoever waits for `n`."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, dict[str, str]]] = []
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def __call__(self, pid: int, fields: dict[str, str]) -> None:
        self.messages.append((pid, fields))
        for n, fut in self._waiters:
            if len(self.messages) >= n and not fut.done():
                fut.set_result(None)

    async def wait_for(self, n: int) -> list[tuple[int, dict[str, str]]]:
        if len(self.messages) < n:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            await asyncio.wait_for(fut, DEADLINE)
        return self.messages


def sender(listener: ReadinessListener) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect("\0" + listener.address[1:])
    return sock


async def wait_exit(proc: subprocess.Popen) -> int:
    """Wait for a child without blocking the loop (the reader must keep going)."""
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), DEADLINE)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def child_env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    env["NOTIFY_SOCKET"] = address
    return env


# --------------------------------------------------------------------------- parse_notify_message

@pytest.mark.parametrize("data, expected", [
    (b"READY=1", {"READY": "1"}),
    (b"READY=1\n", {"READY": "1"}),
    (b"READY=1\nSTATUS=serving on :80\n", {"READY": "1", "STATUS": "serving on :80"}),
    (b"STATUS=a=b", {"STATUS": "a=b"}),
    (b"STATUS=", {"STATUS": ""}),
    (b"", {}),
    (b"\n\n", {}),
    (b"garbage\nREADY=1", {"READY": "1"}),
    (b"=1\nREADY=1", {"READY": "1"}),
    (b"BAD KEY=1\nREADY=1", {"READY": "1"}),
    (b"READY=1\0junk\nSTATUS=x", {"STATUS": "x"}),
    (b"STATUS=caf\xc3\xa9", {"STATUS": "caf\u00e9"}),
    (b"STATUS=\xff", {"STATUS": "\ufffd"}),
    (b"STATUS=a\nSTATUS=b", {"STATUS": "b"}),
    (b"K\xffY=1\nREADY=1", {"READY": "1"}),
])
def test_parse_notify_message(data, expected):
    assert parse_notify_message(data) == expected


# --------------------------------------------------------------------------- the listener

def test_address_is_abstract_and_unique():
    with ReadinessListener("web") as a, ReadinessListener("web") as b:
        assert a.address.startswith(f"@sockvisor/{os.getpid()}/web/")
        assert a.address != b.address
        assert len(a.address) < 108
        # Not a file anywhere, and not inherited by children.
        assert not os.path.exists(a.address[1:])
        assert not os.get_inheritable(a.fileno())
        assert not os.get_blocking(a.fileno())


def test_name_hint_is_sanitised():
    with ReadinessListener("we b/../x" * 20) as listener:
        middle = listener.address.split("/")[2]
        assert set(middle) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
        assert len(middle) <= 40
    with ReadinessListener() as listener:
        assert listener.address.count("/") == 2


def test_child_process_ready_reports_its_pid():
    """A worker sends READY=1 exactly as it would to systemd."""
    script = textwrap.dedent("""
        import os, socket
        addr = os.environ["NOTIFY_SOCKET"]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"READY=1\\nSTATUS=up\\n", "\\0" + addr[1:])
    """)

    async def main():
        collector = Collector()
        with ReadinessListener("web") as listener:
            listener.start(asyncio.get_running_loop(), collector)
            proc = subprocess.Popen([sys.executable, "-c", script],
                                    env=child_env(listener.address))
            try:
                messages = await collector.wait_for(1)
            finally:
                await wait_exit(proc)
        assert proc.returncode == 0
        assert messages == [(proc.pid, {"READY": "1", "STATUS": "up"})]

    asyncio.run(main())


def test_child_using_sockvisor_notifier():
    """Our own Notifier, in a worker, talks to our own listener."""
    script = "from sockvisor.systemd import Notifier; Notifier.from_environ().ready('hi')"

    async def main():
        collector = Collector()
        with ReadinessListener() as listener:
            listener.start(asyncio.get_running_loop(), collector)
            proc = subprocess.Popen([sys.executable, "-c", script],
                                    env=child_env(listener.address))
            try:
                messages = await collector.wait_for(1)
            finally:
                await wait_exit(proc)
        assert messages == [(proc.pid, {"READY": "1", "STATUS": "hi"})]

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("systemd-notify") is None,
                    reason="systemd-notify is not installed")
def test_systemd_notify_tool():
    """libsystemd's sd_notify (via systemd-notify) understands our address.

    systemd-notify speaks for the process that ran it (its parent, here the
    worker's shell): with privileges it puts the parent's pid in the
    credentials, without them the kernel records its own pid.
    """
    async def main():
        collector = Collector()
        with ReadinessListener() as listener:
            listener.start(asyncio.get_running_loop(), collector)
            proc = subprocess.Popen(
                ["/bin/sh", "-c", "systemd-notify --ready --status=booted; exit 0"],
                env=child_env(listener.address), stderr=subprocess.PIPE, text=True)
            try:
                messages = await collector.wait_for(1)
            finally:
                await wait_exit(proc)
        assert proc.returncode == 0
        # systemd-notify then waits on sd_notify_barrier(3): it passes a pipe
        # with BARRIER=1 and waits for the receiver to close it -- which the
        # listener does with every fd it gets.
        assert "barrier" not in proc.stderr.read().lower()
        pid, fields = messages[0]
        if os.geteuid() == 0:
            assert pid == proc.pid
        else:
            assert pid not in (proc.pid, os.getpid())
        assert fields["READY"] == "1"
        assert fields["STATUS"] == "booted"

    asyncio.run(main())


def test_unprivileged_sender_can_notify():
    """uid nobody reaches the abstract socket: no filesystem permissions."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    import pwd
    nobody = pwd.getpwnam("nobody")
    script = ("import os, socket; a = os.environ['NOTIFY_SOCKET'];"
              "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"
              ".sendto(b'READY=1', '\\0' + a[1:])")

    async def main():
        collector = Collector()
        with ReadinessListener() as listener:
            listener.start(asyncio.get_running_loop(), collector)
            env = child_env(listener.address)
            del env["PYTHONPATH"]
            # Debian's interpreter: the default one may live under /root (0700).
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
            proc = subprocess.Popen([python, "-c", script], env=env, cwd="/",
                                    user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
            try:
                messages = await collector.wait_for(1)
            finally:
                await wait_exit(proc)
        assert messages == [(proc.pid, {"READY": "1"})]

    asyncio.run(main())


def test_drains_every_pending_datagram():
    async def main():
        collector = Collector()
        with ReadinessListener() as listener, sender(listener) as s:
            # Queue more than one wake-up's worth before the loop gets to run.
            for i in range(5):
                s.send(f"STATUS={i}".encode())
            listener.start(asyncio.get_running_loop(), collector)
            await collector.wait_for(5)
            for i in range(5, 600):
                s.send(f"STATUS={i}".encode())
                if i % 8 == 0:
                    await collector.wait_for(i + 1)
            messages = await collector.wait_for(600)
        assert [f["STATUS"] for _, f in messages] == [str(i) for i in range(600)]
        assert {pid for pid, _ in messages} == {os.getpid()}

    asyncio.run(main())


def test_passed_fds_are_closed_not_leaked():
    async def main():
        collector = Collector()
        r, w = os.pipe()
        with ReadinessListener() as listener, sender(listener) as s:
            listener.start(asyncio.get_running_loop(), collector)
            before = open_fds()
            fds = array.array("i", [r, w, s.fileno()])
            s.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            # Also a message that carries nothing but fds.
            s.sendmsg([b"junk"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            s.send(b"STATUS=after")
            messages = await collector.wait_for(2)
            after = open_fds()
        os.close(r)
        os.close(w)
        assert messages == [(os.getpid(), {"READY": "1"}), (os.getpid(), {"STATUS": "after"})]
        assert after == before

    asyncio.run(main())


def test_oversized_and_malformed_messages_are_ignored(caplog):
    async def main():
        collector = Collector()
        with ReadinessListener() as listener, sender(listener) as s:
            listener.start(asyncio.get_running_loop(), collector)
            s.send(b"STATUS=" + b"x" * MAX_MESSAGE)
            s.send(b"no key value lines at all")
            s.send(b"")
            s.send(b"STATUS=" + b"y" * (MAX_MESSAGE - 7))   # exactly the limit
            s.send(b"READY=1")
            return await collector.wait_for(2)

    with caplog.at_level(logging.WARNING, logger="sockvisor.readiness"):
        messages = asyncio.run(main())
    assert [f for _, f in messages] == [{"STATUS": "y" * (MAX_MESSAGE - 7)}, {"READY": "1"}]
    assert "longer than 4096" in caplog.text


def test_callback_exception_is_logged_and_reading_goes_on(caplog):
    async def main():
        seen = []
        done = asyncio.get_running_loop().create_future()

        def callback(pid, fields):
            seen.append(fields)
            if "BOOM" in fields:
                raise RuntimeError("callback bug")
            done.set_result(None)

        with ReadinessListener() as listener, sender(listener) as s:
            listener.start(asyncio.get_running_loop(), callback)
            s.send(b"BOOM=1")
            s.send(b"READY=1")
            await asyncio.wait_for(done, DEADLINE)
        return seen

    with caplog.at_level(logging.ERROR, logger="sockvisor.readiness"):
        seen = asyncio.run(main())
    assert seen == [{"BOOM": "1"}, {"READY": "1"}]
    assert "callback bug" in caplog.text


def test_close_removes_the_reader_and_the_socket():
    async def main():
        loop = asyncio.get_running_loop()
        listener = ReadinessListener()
        address = listener.address
        fd = listener.fileno()
        listener.start(loop, lambda pid, fields: None)
        assert loop.remove_reader(fd) is True      # it was registered...
        loop.add_reader(fd, listener._on_readable)
        listener.close()
        assert listener.closed
        assert loop.remove_reader(fd) is False     # ...and close() removed it
        listener.close()                           # idempotent
        with pytest.raises(ValueError):
            listener.fileno()
        with pytest.raises(ValueError):
            listener.start(loop, lambda pid, fields: None)
        # The address is free again: nobody receives.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            with pytest.raises(ConnectionRefusedError):
                s.sendto(b"READY=1", "\0" + address[1:])

    asyncio.run(main())


def test_callback_may_close_the_listener():
    async def main():
        done = asyncio.get_running_loop().create_future()
        listener = ReadinessListener()

        def callback(pid, fields):
            listener.close()
            done.set_result(fields)

        with sender(listener) as s:
            s.send(b"READY=1")
            s.send(b"STATUS=never read")
            listener.start(asyncio.get_running_loop(), callback)
            assert await asyncio.wait_for(done, DEADLINE) == {"READY": "1"}
        assert listener.closed

    asyncio.run(main())


def test_start_twice_is_an_error():
    async def main():
        with ReadinessListener() as listener:
            listener.start(asyncio.get_running_loop(), lambda pid, fields: None)
            with pytest.raises(RuntimeError):
                listener.start(asyncio.get_running_loop(), lambda pid, fields: None)

    asyncio.run(main())
