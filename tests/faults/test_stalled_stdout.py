"""Fault: sockvisor's own stdout is a pipe nobody reads (a stuck log shipper, a
`sockvisor start | less` left alone) while a worker with `stdout = prefix` or
`inherit` (its lines pass through sockvisor too) keeps writing.  The pipe fills
after 64 kB; from then on every write would block.
sockvisor must go on answering its control channel and obey SIGTERM, dropping
(and counting) worker output it cannot pass on.  A reader that is only slow
loses nothing: the workers wait for it, as they would writing to it directly.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from conftest import wait_for
from sockvisor.control.client import ControlClient


@pytest.mark.parametrize("mode", ["prefix", "inherit"])
def test_a_stalled_stdout_reader_never_freezes_sockvisor(sockvisor, scripts, mode):
    read_end, write_end = os.pipe()   # read_end stays open and is never read
    try:
        sv = sockvisor(f"""
            [watcher:spew]
            cmd = {scripts.cmd("spew.py", "40000", "100")}
            stdout = {mode}
            graceful_timeout = 1
        """, stdout=write_end)
        os.close(write_end)
        write_end = -1
        endpoint = f"ipc://{sv.directory}/ctl"
        # 4 MB of output against a 64 kB pipe: the reader stalls within the first
        # few chunks; then the control channel must still answer at once.
        sv.wait_log(r"not keeping up.*dropped", timeout=20)
        for _ in range(5):
            started = time.monotonic()
            with ControlClient(endpoint, timeout=5) as client:
                reply = client.call("status", {"name": "spew"})
            assert reply.get("status") == "active", reply
            assert time.monotonic() - started < 5
        with ControlClient(endpoint, timeout=5) as client:
            stats = client.call("stats", {"name": "spew"})
        assert stats["output"]["stdout"]["dropped_bytes"] > 0, stats
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit(10) == 0, sv.describe()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_a_slow_reader_slows_the_worker_and_loses_nothing(sockvisor, scripts):
    """A reader slower than the worker, but reading (a terminal, a log shipper):
    the worker waits, as it did writing to that reader itself; no line is lost."""
    read_end, write_end = os.pipe()
    received = bytearray()

    def read_slowly() -> None:
        # The fault itself: about 4 MB/s, far slower than the worker writes.
        while chunk := os.read(read_end, 16384):
            received.extend(chunk)
            time.sleep(0.004)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    sv = None
    try:
        sv = sockvisor(f"""
            [watcher:spew]
            cmd = {scripts.cmd("spew.py", "40000", "100")}
            graceful_timeout = 1
        """, stdout=write_end)
        os.close(write_end)
        write_end = -1
        # 4 MB through a 1 MiB buffer: without back-pressure most of it is dropped.
        wait_for(lambda: received.endswith(b"done\n"), 30,
                 message=lambda: f"{len(received)} bytes so far\n{sv.describe()}")
        lines = bytes(received).splitlines()
        assert len(lines) == 40001
        assert [int(line.split()[1]) for line in lines[:-1]] == list(range(40000))
        with ControlClient(f"ipc://{sv.directory}/ctl", timeout=5) as client:
            stats = client.call("stats", {"name": "spew"})
        assert stats["output"]["stdout"]["dropped_bytes"] == 0, stats
        assert "not keeping up" not in sv.log()
    finally:
        if write_end >= 0:
            os.close(write_end)
        if sv is not None:
            sv.cleanup()   # the last writer gone: the reader sees EOF
        reader.join(10)
        os.close(read_end)
