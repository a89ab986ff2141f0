"""Faults in the log file's filesystem: a full disk.

A log folder on a 64 kB tmpfs fills up after a few chunks; every later write
fails with ENOSPC.  sockvisor says so once (then, rate-limited, how many more
failures it kept quiet about), not once per 64 kB chunk.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs"),
]


@pytest.fixture
def tiny_disk(tmp_path):
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs",
                             str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_is_reported_once_not_per_chunk(tiny_disk, sockvisor, scripts):
    path = tiny_disk / "out.log"
    sv = sockvisor(f"""
        [watcher:spew]
        cmd = {scripts.cmd("spew.py", "40000", "100")}
        stdout = file:{path}
        graceful_timeout = 1
    """)
    [pid] = sv.wait_workers(1, "spew.py")
    sv.wait_log(r"No space left", timeout=20)
    # 4 MB through a 64 kB disk: the worker only gets to print "done" once sockvisor
    # has read (and failed to write) ~60 more chunks.
    wait_for(lambda: _written_all(pid), 30, message=lambda: f"spew to finish\n{sv.describe()}")
    assert sv.log_count(r"No space left") == 1, sv.log()[-3000:]
    assert sv.proc.poll() is None


def _written_all(pid: int) -> bool:
    """The worker has written its 4 MB (its stdout write counter, from /proc)."""
    with open(f"/proc/{pid}/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return int(fields["wchar"]) >= 40000 * 100
