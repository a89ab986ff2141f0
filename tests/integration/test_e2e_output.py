"""End to end: where workers' stdout and stderr go.

`stdout = prefix` passes each line through sockvisor's own stdout as
`NAME[pid] text` (stderr likewise); `stdout = file:PATH` with `stdout_max_bytes`
appends to a file rotated by size into PATH.1 … PATH.N, whole lines only.
"""

from __future__ import annotations

import re

from conftest import wait_for
from sockvisor.control.client import ControlClient


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


# --------------------------------------------------------------------------- a sink outlives its options

def _ticks(path, pid: int | None = None) -> list[tuple[int, int]]:
    """(pid, n) of every tick line in `path` (and its backups), by `pid` if given."""
    found = []
    for file in sorted(path.parent.glob(path.name + "*")):
        for match in re.finditer(r"^tick (\d+) (\d+)$", file.read_text(), re.MULTILINE):
            tick = (int(match.group(1)), int(match.group(2)))
            if pid is None or tick[0] == pid:
                found.append(tick)
    return found


def _wait_more_ticks(sv, path, pid: int, than: int, timeout: float = 10.0) -> int:
    def more() -> int:
        numbers = [n for _, n in _ticks(path, pid)]
        return max(numbers, default=-1) > than and max(numbers)
    return wait_for(more, timeout,
                    message=lambda: f"ticks of {pid} past {than} in {path}\n{sv.describe()}")


def _assert_no_sink_errors(sv) -> None:
    log = sv.log()
    assert "closed file" not in log and "Traceback" not in log, log[-3000:]


def test_set_output_options_keeps_the_running_workers_sink(sockvisor, scripts, tmp_path):
    """`set web stdout_max_bytes` swaps the sink's options, not the file under the
    running worker: its output keeps arriving, no "I/O operation on closed file"."""
    path = tmp_path / "out.log"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("ticker.py")}
        stdout = file:{path}
        graceful_timeout = 1
    """)
    [pid] = sv.wait_workers(1, "ticker.py")
    endpoint = f"ipc://{sv.directory}/ctl"
    last = _wait_more_ticks(sv, path, pid, 5)
    with ControlClient(endpoint, timeout=10) as client:
        reply = client.call("set", {"name": "web",
                                    "options": {"stdout_max_bytes": "200000"}})
    assert reply["status"] == "ok", reply
    assert sv.worker_pids("ticker.py") == [pid], "a plain option change spawns nothing"
    _wait_more_ticks(sv, path, pid, last + 20)
    numbers = [n for _, n in _ticks(path, pid)]
    assert numbers == list(range(len(numbers))), "lines of the running worker were lost"
    _assert_no_sink_errors(sv)


def test_reloadconfig_to_another_file_loses_nothing_of_the_old_generation(
        sockvisor, scripts, tmp_path):
    """The old generation writes to the old file until it is gone, the new one to
    the new file; the old sink is closed only after its last worker."""
    old_path, new_path = tmp_path / "old.log", tmp_path / "new.log"
    body = f"""
        [watcher:web]
        cmd = {scripts.cmd("ticker.py")}
        stdout = file:{{path}}
        ready = delay:1
        graceful_timeout = 1
    """
    sv = sockvisor(body.format(path=old_path))
    [old_pid] = sv.wait_workers(1, "ticker.py")
    _wait_more_ticks(sv, old_path, old_pid, 5)
    sv.conf.write_text(sv.conf.read_text().replace(str(old_path), str(new_path)))
    with ControlClient(f"ipc://{sv.directory}/ctl", timeout=20) as client:
        reply = client.call("reloadconfig")
    assert reply["status"] == "ok", reply
    [new_pid] = sv.wait_workers(1, "ticker.py", exclude=[old_pid])
    _wait_more_ticks(sv, new_path, new_pid, 5)
    # During the 1 s the new worker took to count as ready, the old one kept
    # writing: every one of its lines is in the old file, none lost.
    numbers = [n for _, n in _ticks(old_path, old_pid)]
    assert len(numbers) > 50, numbers[-5:]
    assert numbers == list(range(len(numbers))), "lines of the old generation were lost"
    assert not _ticks(new_path, old_pid) and not _ticks(old_path, new_pid)
    _assert_no_sink_errors(sv)


def test_aborted_reload_keeps_the_old_workers_output(sockvisor, scripts, tmp_path):
    """`set stdout file:NEW` with a generation that cannot start: the reload is
    aborted and the old worker's output must go on reaching the old file."""
    old_path, new_path = tmp_path / "old.log", tmp_path / "new.log"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("ticker.py")}
        stdout = file:{old_path}
        ready = delay:0.5
        ready_timeout = 5
        graceful_timeout = 1
    """)
    [pid] = sv.wait_workers(1, "ticker.py")
    last = _wait_more_ticks(sv, old_path, pid, 5)
    with ControlClient(f"ipc://{sv.directory}/ctl", timeout=20) as client:
        reply = client.call("set", {"name": "web", "options": {
            "stdout": f"file:{new_path}", "env": "CRASH=1"}})
    assert reply["status"] == "error", reply
    assert sv.worker_pids("ticker.py") == [pid]
    _wait_more_ticks(sv, old_path, pid, last + 100)
    numbers = [n for _, n in _ticks(old_path, pid)]
    assert numbers == list(range(len(numbers))), "lines were lost around the abort"
    _assert_no_sink_errors(sv)


# --------------------------------------------------------------------------- the log folder goes away

def test_log_folder_deleted_and_recreated_is_reopened(sockvisor, scripts, tmp_path):
    """`rm -rf` of the log folder, then `mkdir` again (a log cleaner, a redeploy):
    sockvisor notices that its file is gone and writes to a new one in the new
    folder; rotation does not fail with ENOENT on every chunk for ever."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "out.log"
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("ticker.py")}
        stdout = file:{path}
        stdout_max_bytes = 2000
        stdout_backup_count = 2
        graceful_timeout = 1
    """)
    [pid] = sv.wait_workers(1, "ticker.py")
    _wait_more_ticks(sv, path, pid, 5)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    sv.wait_log(r"out\.log", timeout=10)     # it noticed (and said so, once)
    folder.mkdir()
    since = sv.log_count(r"out\.log")
    # A fresh out.log in the new folder gets the worker's lines again.
    wait_for(lambda: path.exists() and _ticks(path, pid), 10,
             message=lambda: f"ticks in the re-created {path}\n{sv.describe()}")
    _wait_more_ticks(sv, path, pid, max(n for _, n in _ticks(path, pid)) + 150)
    # Rotation works again (150 ticks of ~20 bytes: past 2,000 bytes).
    assert path.with_name("out.log.1").exists(), sorted(folder.iterdir())
    assert sv.log_count(r"out\.log") - since <= 2, sv.log()[-3000:]
    _assert_no_sink_errors(sv)
