"""End to end: `file:` output and logrotate (issue 10, §2).

logrotate's default (`create`) renames out.log to out.log.1 and expects the
program to write to a new out.log afterwards: sockvisor notices the rename at
its next write (within a second) and, on SIGUSR1 -- the usual postrotate --,
reopens every file at once, even for a watcher that has nothing to write.
"""

from __future__ import annotations

import os
import re
import signal

from conftest import fd_targets, wait_for


def tick_numbers(*paths) -> list[int]:
    numbers = []
    for path in paths:
        if os.path.exists(path):
            numbers += [int(n) for n in re.findall(r"^tick \d+ (\d+)$",
                                                  path.read_text(), re.MULTILINE)]
    return numbers


def test_a_moved_file_is_followed_by_a_new_one(sockvisor, scripts, tmp_path):
    path, moved = tmp_path / "out.log", tmp_path / "out.log.1"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("ticker.py")}
        stdout = file:{path}
        graceful_timeout = 1
    """)
    sv.wait_workers(1, "ticker.py")
    wait_for(lambda: len(tick_numbers(path)) > 5)
    os.rename(path, moved)   # what `mv out.log out.log.1` does
    wait_for(lambda: len(tick_numbers(path)) > 5, 10,
             message=lambda: f"lines in a new {path}\n{sv.describe()}")
    # Nothing lost between the two files, nothing written twice.
    numbers = sorted(tick_numbers(moved, path))
    assert numbers == list(range(len(numbers)))
    assert tick_numbers(moved)[-1] < tick_numbers(path)[0]


def test_sigusr1_reopens_at_once(sockvisor, scripts, tmp_path):
    path, moved = tmp_path / "quiet.log", tmp_path / "quiet.log.1"
    sv = sockvisor(f"""
        [watcher:quiet]
        cmd = {scripts.cmd("worker.py")} --say "only line" --no-serve
        stdout = file:{path}
        graceful_timeout = 1
    """)
    sv.wait_workers(1, "worker.py")
    wait_for(lambda: path.exists() and "only line" in path.read_text())
    os.rename(path, moved)
    sv.signal(signal.SIGUSR1)
    # The worker writes nothing more: only the signal can make the new file.
    wait_for(lambda: path.exists(), 5, message=lambda: f"a new {path}\n{sv.describe()}")
    wait_for(lambda: str(moved) not in fd_targets(sv.pid).values(), 5,
             message=lambda: f"{moved} closed by sockvisor\n{sv.describe()}")
    assert sv.proc.poll() is None, sv.describe()
    assert moved.read_text() == "only line\n"
