"""Under journald, each worker line is a journal entry of its watcher and worker.

sockvisor's stdout/stderr is the journal stream ($JOURNAL_STREAM names it); a
`prefix` or `inherit` watcher's lines then go to /run/systemd/journal/socket by journald's
native protocol with SYSLOG_IDENTIFIER = the watcher and SYSLOG_PID = the
worker's pid (so `journalctl -t web`, `journalctl SYSLOG_PID=N` work), the
line's `<N>` prefix as PRIORITY.  The journal here is a datagram socket this
test binds and reads, mounted at /run/systemd in a mount namespace of
sockvisor's own; stdout and stderr are a file whose dev:ino JOURNAL_STREAM names.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from conftest import Sockvisor, wait_for


def parse_native(data: bytes) -> dict[str, bytes]:
    """One datagram of the native journal protocol → its fields."""
    fields: dict[str, bytes] = {}
    while data:
        head, newline, rest = data.partition(b"\n")
        assert newline, data
        if b"=" in head:
            name, _, value = head.partition(b"=")
            data = rest
        else:
            name = head
            (size,) = struct.unpack("<Q", rest[:8])
            value, data = rest[8:8 + size], rest[8 + size:]
            assert data[:1] == b"\n"
            data = data[1:]
        fields[name.decode()] = value
    return fields


@pytest.mark.timeout(60)
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
@pytest.mark.parametrize("mode", ["prefix", "inherit"])
def test_worker_lines_are_entries_of_the_watcher_and_worker(tmp_path, scripts, mode):
    (tmp_path / "systemd" / "journal").mkdir(parents=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "systemd" / "journal" / "socket"))
    journal.setblocking(False)
    entries: list[dict[str, bytes]] = []

    def received() -> list[dict[str, bytes]]:
        while True:
            try:
                entries.append(parse_native(journal.recv(1 << 20)))
            except BlockingIOError:
                return entries

    directory = tmp_path / "sv"
    directory.mkdir()
    config = f"""
[sockvisor]
endpoint = ipc://{directory}/ctl

[watcher:web]
cmd = {scripts.cmd("worker.py")} --say "hello journal" --say-err "<3>it broke" --no-serve
numprocesses = 2
stdout = {mode}
stderr = {mode}
graceful_timeout = 1
"""
    under_journald = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount --bind "$0" /run/systemd || exit 9; '
        'export JOURNAL_STREAM="$(stat -L -c %d:%i /proc/self/fd/2)"; exec "$@" 1>&2',   # both streams the journal, as under systemd
        str(tmp_path / "systemd")]
    sv = Sockvisor(directory, config, argv_prefix=under_journald)
    try:
        sv.wait_ready()
        pids = sorted(sv.wait_workers(2, "worker.py"))
        wait_for(lambda: len(received()) >= 4, 10,
                 message=lambda: f"4 entries, got {entries}\n{sv.describe()}")
        assert sorted(int(e["SYSLOG_PID"]) for e in entries) == sorted(pids * 2)
        assert {e["SYSLOG_IDENTIFIER"] for e in entries} == {b"web"}
        said = {(e["MESSAGE"], e["PRIORITY"], e["SOCKVISOR_STREAM"]) for e in entries}
        assert said == {(b"hello journal", b"6", b"stdout"), (b"it broke", b"3", b"stderr")}
        # Not also through the stream (journald would have each line twice).
        assert "hello journal" not in sv.log()
    finally:
        sv.cleanup()
        journal.close()
