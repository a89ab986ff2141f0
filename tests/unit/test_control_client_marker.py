"""control/client.py `_upgrading`: the PATH.upgrading marker of an ipc endpoint.

The endpoint's folder may be writable by another user (a worker's /run/app),
who can put anything at PATH.upgrading.  Root's sockvisorctl must neither hang
on it nor read without end: only a regular file, not through a symlink, at most
MARKER_SIZE bytes.  Real files, FIFOs and symlinks in tmp_path.
"""

from __future__ import annotations

import os

import pytest

from sockvisor.control import client


def _endpoint(tmp_path) -> tuple[str, str]:
    path = str(tmp_path / "control.sock")
    return f"ipc://{path}", path + ".upgrading"


def test_a_regular_marker_with_a_live_pid_says_upgrading(tmp_path):
    endpoint, marker = _endpoint(tmp_path)
    with open(marker, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    assert client._upgrading(endpoint)


def test_no_marker(tmp_path):
    assert not client._upgrading(_endpoint(tmp_path)[0])


@pytest.mark.timeout(10)
def test_a_fifo_does_not_hang_the_client(tmp_path):
    """open() of a FIFO with no writer blocks: the marker must not be one."""
    endpoint, marker = _endpoint(tmp_path)
    os.mkfifo(marker)
    assert not client._upgrading(endpoint)


@pytest.mark.timeout(10)
def test_a_symlink_is_not_followed(tmp_path):
    """To a good marker (followed, it would say yes) and to /dev/zero (followed,
    it would read without end)."""
    endpoint, marker = _endpoint(tmp_path)
    good = tmp_path / "elsewhere"
    good.write_text(f"{os.getpid()}\n")
    os.symlink(good, marker)
    assert not client._upgrading(endpoint)
    os.unlink(marker)
    os.symlink("/dev/zero", marker)
    assert not client._upgrading(endpoint)


def test_a_huge_marker_is_read_no_further_than_its_first_bytes(tmp_path):
    endpoint, marker = _endpoint(tmp_path)
    with open(marker, "w") as handle:
        handle.write(f"{os.getpid()}\n" + "x" * (1 << 20))
    assert not client._upgrading(endpoint)   # pid + garbage: not a pid
    with open(marker, "w") as handle:
        handle.write("9" * (1 << 20))
    assert not client._upgrading(endpoint)   # 32 nines: no such pid, and no crash
