"""End to end: where workers' stdout and stderr go.

`stdout = prefix` passes each line through sockvisor's own stdout as
`NAME[pid] text` (stderr likewise); `stdout = file:PATH` with `stdout_max_bytes`
appends to a file rotated by size into PATH.1 … PATH.N, whole lines only.
"""

from __future__ import annotations

import re

from conftest import wait_for


def test_prefix_output_names_watcher_and_pid(sockvisor, scripts):
    sv = sockvisor(f"""
        [watcher:talker]
        cmd = {scripts.cmd("worker.py")} --say "hello on stdout" --say-err "hello on stderr" --no-serve
        numprocesses = 2
        stdout = prefix
        stderr = prefix
        graceful_timeout = 1
    """)
    pids = sv.wait_workers(2, "worker.py")
    for pid in pids:
        wait_for(lambda: f"talker[{pid}] hello on stdout\n" in sv.stdout(), 10,
                 message=lambda: f"talker[{pid}]'s line on stdout\n{sv.describe()}")
        wait_for(lambda: f"talker[{pid}] hello on stderr\n" in sv.log(), 10,
                 message=lambda: f"talker[{pid}]'s line on stderr\n{sv.describe()}")
    # Each line is a record of its own, starting at the beginning of a line.
    lines = sv.stdout().splitlines()
    assert sorted(lines) == sorted(f"talker[{pid}] hello on stdout" for pid in pids)


def test_file_output_rotates_by_size(sockvisor, scripts, tmp_path):
    path = tmp_path / "out.log"
    max_bytes, lines, width = 20_000, 3000, 100   # 300 kB: many reads and rotations
    sv = sockvisor(f"""
        [watcher:spew]
        cmd = {scripts.cmd("spew.py", str(lines), str(width))}
        stdout = file:{path}
        stdout_max_bytes = {max_bytes}
        stdout_backup_count = 2
        graceful_timeout = 1
    """)
    def finished() -> bool:
        # A rotation may move the file away between any two looks at it.
        try:
            return path.read_text().endswith("done\n")
        except FileNotFoundError:
            return False
    wait_for(finished, 15, message=lambda: f"'done' at the end of {path}\n{sv.describe()}")
    rotated = [path.with_name(f"out.log.{n}") for n in (1, 2)]
    assert all(p.exists() for p in rotated), sorted(tmp_path.iterdir())
    assert not path.with_name("out.log.3").exists(), "more backups than backup_count"

    pattern = re.compile(rf"line (\d{{6}}) x{{{width - 13}}}")
    numbers = []
    for file in [*reversed(rotated), path]:   # oldest first
        text = file.read_text()
        assert text.endswith("\n"), f"{file} ends in the middle of a line"
        for line in text.splitlines():
            if line == "done":
                continue
            match = pattern.fullmatch(line)
            assert match, f"{file}: a torn or foreign line: {line[:120]!r}"
            numbers.append(int(match.group(1)))
        # Rotated between lines, before a line would take it past max_bytes —
        # even though one pipe read can bring more than max_bytes at once.
        assert len(text) <= max_bytes, f"{file} has {len(text)} bytes"
    # The newest lines are all there, in order, ending with the last one.
    assert numbers == sorted(numbers)
    assert numbers[-1] == lines - 1
    assert numbers == list(range(numbers[0], lines))
