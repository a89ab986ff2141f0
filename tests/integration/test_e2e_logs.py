"""End to end: `sockvisorctl logs NAME [-f] [-n N] [--pid PID]` (issue 10, §2).

The ring of recent lines belongs to the watcher: changing its output options
(`set`, reload, reloadconfig) makes new sinks, and must neither empty the ring
nor hide what the running workers keep writing through their old sink.  `-f`
follows by long-polling the control channel: every line arrives, in order, and
the follower ends when sockvisor stops.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from conftest import _clean_env, wait_for
from control_client_helpers import describe, endpoint_of, ok, run_ctl

TICKER = """
[watcher:web]
cmd = {cmd}
numprocesses = {n}
stdout = {stdout}
graceful_timeout = 1
"""


def ticks(lines: list[dict], pid: int | None = None) -> list[int]:
    found = []
    for line in lines:
        match = re.fullmatch(r"tick (\d+) (\d+)", line["line"])
        if match and (pid is None or int(match[1]) == pid):
            found.append(int(match[2]))
    return found


@pytest.mark.timeout(60)
def test_the_ring_survives_a_new_sink(sockvisor, scripts, tmp_path):
    sv = sockvisor(TICKER.format(cmd=scripts.cmd("ticker.py"), n=1,
                                 stdout=f"file:{tmp_path}/out.log"))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "ticker.py")
    before = wait_for(lambda: (t := ticks(ok(endpoint, "logs", {"name": "web"})["lines"]))
                      and t[-1] >= 5 and t)
    # New output options: a new sink for workers to come; the running one keeps its own.
    ok(endpoint, "set", {"name": "web", "options": {"stdout_max_bytes": "200000"}})
    after = ok(endpoint, "logs", {"name": "web", "lines": 100})
    assert ticks(after["lines"]) and ticks(after["lines"])[0] <= before[-1], after
    # ... and what the running worker writes (to its old sink) still shows.
    wait_for(lambda: ticks(ok(endpoint, "logs", {"name": "web"})["lines"])[-1]
             > before[-1] + 20)
    assert sv.worker_pids("ticker.py") == [pid]


@pytest.mark.timeout(60)
def test_logs_of_one_worker_and_lines(sockvisor, scripts):
    sv = sockvisor(TICKER.format(cmd=scripts.cmd("ticker.py"), n=2, stdout="prefix"))
    endpoint = endpoint_of(sv)
    pids = sv.wait_workers(2, "ticker.py")
    wait_for(lambda: all(ticks(ok(endpoint, "logs", {"name": "web", "lines": 100})["lines"],
                               pid) for pid in pids))
    result = run_ctl("--endpoint", endpoint, "logs", "web", "--pid", str(pids[0]), "-n", "7")
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 7, lines
    assert all(line.startswith(f"stdout [{pids[0]}] tick {pids[0]} ") for line in lines)


class Follower:
    """`sockvisorctl logs -f` in the background, its lines collected."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "sockvisor.cli.ctl", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_clean_env())
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))


@pytest.mark.timeout(60)
def test_follow_prints_every_new_line_and_ends_with_sockvisor(sockvisor, scripts):
    sv = sockvisor(TICKER.format(cmd=scripts.cmd("ticker.py"), n=1, stdout="prefix"))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "ticker.py")
    follower = Follower("--endpoint", endpoint, "logs", "web", "-f", "-n", "1")
    try:
        # Well past one ring (50 lines) and many polls.
        wait_for(lambda: len(follower.lines) > 300, 20,
                 message=lambda: f"followed lines: {follower.lines[-5:]}")
        numbers = [int(m[1]) for line in list(follower.lines)
                   if (m := re.fullmatch(rf"stdout \[{pid}\] tick {pid} (\d+)", line))]
        missed = [line for line in follower.lines if "missed" in line]
        if not missed:   # a loaded machine may fall 50 lines behind: then it says so
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        ok(endpoint, "quit")
        status, errors = follower.proc.wait(timeout=20), follower.proc.stderr.read()
        assert status == 0 and "sockvisor is stopping" in errors, (status, errors)
    finally:
        if follower.proc.poll() is None:
            follower.proc.kill()
        follower.proc.wait()


# ---------------------------------------------------------------- every stdout mode
# `inherit` (the default) and `null` pass through sockvisor too (a pipe per
# stream, like `prefix`), so `logs` has their lines: `inherit` writes them on
# to sockvisor's own stdout/stderr as they are, `null` keeps them only in the ring.

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["inherit", "null"])
def test_logs_shows_the_last_lines_whatever_the_mode(sockvisor, scripts, mode):
    sv = sockvisor(TICKER.format(cmd=scripts.cmd("ticker.py"), n=1, stdout=mode))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "ticker.py")
    wait_for(lambda: len(ticks(ok(endpoint, "logs", {"name": "web"})["lines"], pid)) >= 5,
             message=lambda: sv.describe())
    result = run_ctl("--endpoint", endpoint, "logs", "web", "-n", "5")
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    numbers = [int(m[1]) for line in lines
               if (m := re.fullmatch(rf"stdout \[{pid}\] tick {pid} (\d+)", line))]
    assert len(numbers) == 5 and numbers == list(range(numbers[0], numbers[0] + 5)), lines
    if mode == "null":
        assert "tick" not in sv.stdout()
        return
    # inherit: sockvisor's stdout has every line as the worker wrote it, in
    # order, unprefixed (the last line may still be on its way).
    written = sv.stdout().splitlines()[:-1]
    assert written and all(re.fullmatch(rf"tick {pid} \d+", line) for line in written), \
        written[:5]
    assert [int(line.split()[2]) for line in written] == list(range(len(written)))


@pytest.mark.timeout(60)
def test_inherit_stderr_goes_to_sockvisors_stderr_and_the_ring(sockvisor, scripts):
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.cmd("worker.py")} --say "hello out" --say-err "hello err" --no-serve
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "worker.py")
    reply = wait_for(lambda: (r := ok(endpoint, "logs", {"name": "web"}))
                     and len(r["lines"]) == 2 and r, message=lambda: sv.describe())
    assert {(line["stream"], line["pid"], line["line"]) for line in reply["lines"]} == {
        ("stdout", pid, "hello out"), ("stderr", pid, "hello err")}
    assert "hello out" in sv.stdout().splitlines()
    wait_for(lambda: "hello err" in sv.log().splitlines(), message=lambda: sv.describe())


@pytest.mark.timeout(60)
def test_follow_an_inherit_watcher(sockvisor, scripts):
    sv = sockvisor(TICKER.format(cmd=scripts.cmd("ticker.py"), n=1, stdout="inherit"))
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "ticker.py")
    follower = Follower("--endpoint", endpoint, "logs", "web", "-f", "-n", "1")
    try:
        wait_for(lambda: len(follower.lines) > 100, 20,
                 message=lambda: f"followed lines: {follower.lines[-5:]}\n{sv.describe()}")
        numbers = [int(m[1]) for line in list(follower.lines)
                   if (m := re.fullmatch(rf"stdout \[{pid}\] tick {pid} (\d+)", line))]
        assert len(numbers) > 50, follower.lines[:5]
        if not any("missed" in line for line in follower.lines):
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    finally:
        follower.proc.kill()
        follower.proc.wait()


LONG_AND_PARTIAL = r'''
import os, time
os.write(1, b"y" * 100000 + b"\n")
os.write(1, b"tail without newline")
os.close(1)   # EOF for sockvisor: the partial line is a line of its own then
time.sleep(3600)
'''


@pytest.mark.timeout(60)
def test_inherit_passes_long_and_partial_lines_through(sockvisor, scripts, tmp_path):
    script = tmp_path / "long.py"
    script.write_text(LONG_AND_PARTIAL)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.python} {script}
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "long.py")
    wait_for(lambda: sv.stdout().endswith("tail without newline\n"),
             message=lambda: sv.describe()[-2000:])
    # Unprefixed and whole: the bytes as written, the partial line ended.
    assert sv.stdout().replace("\n", "") == "y" * 100000 + "tail without newline"
    lines = ok(endpoint, "logs", {"name": "web"})["lines"]
    assert lines[-1]["line"] == "tail without newline" and lines[-1]["pid"] == pid
    assert lines[0]["line"] == "y" * 500   # the ring keeps 500 characters a line
