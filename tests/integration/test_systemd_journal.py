"""sockvisor's log lines fit journald, and a terminal when not under journald.

systemd sets $JOURNAL_STREAM to "DEV:INODE" of the stream it connected to
stderr.  When that is what sockvisor's stderr really is, every line starts with
an sd-daemon priority prefix `<N>` (journald strips it and records the level,
and adds its own timestamp).  Otherwise -- no variable, or one inherited from a
parent whose stderr was the journal but ours is not -- lines read
`LEVEL name: message` (after a timestamp), and never carry ANSI colour codes.
The test points stderr at a file and sets JOURNAL_STREAM from that file's
st_dev:st_ino, which is exactly the check sockvisor makes.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # systemd_helpers

from conftest import wait_for  # noqa: E402
from systemd_helpers import (services, SOCKVISOR, Services, clean_env, write_config,  # noqa: E402
                             write_worker)

pytestmark = pytest.mark.timeout(60)

PRIORITY = re.compile(r"^<([0-7])>\S")
PLAIN = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )?"
                   r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) (sockvisor[\w.]*): \S")


def run_once(tmp_path: Path, services: Services, journal_stream: str | None,
             stderr_path: Path) -> list[str]:
    """Start sockvisor with stderr to `stderr_path`, let it get ready, stop it;
    return its log lines."""
    worker = write_worker(tmp_path)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    # `check_delay` is a Circus key sockvisor ignores with a warning: a WARNING line.
    conf = write_config(tmp_path, f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {sys.executable} {worker} --state {state}
        sockets = web
        graceful_timeout = 2
    """, globals_="check_delay = 5")
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(JOURNAL_STREAM=journal_stream), stderr_path=stderr_path)
    sv.wait_log(r"sockvisor ready: web: 1/1 ready")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    return sv.log().splitlines()


def test_priority_prefixes_when_stderr_is_the_journal_stream(tmp_path, services):
    stderr_path = tmp_path / "journal"
    stderr_path.touch()
    st = os.stat(stderr_path)
    lines = run_once(tmp_path, services, f"{st.st_dev}:{st.st_ino}", stderr_path)
    assert lines
    assert all(PRIORITY.match(line) for line in lines), lines
    assert not any("\x1b" in line for line in lines)
    levels = {line[1] for line in lines}
    assert {"7", "6", "4"} <= levels, levels      # debug, info, the warning
    assert "<6>sockvisor: sockvisor ready: web: 1/1 ready" in lines
    assert any(line.startswith("<4>sockvisor: ") and "check_delay" in line
               for line in lines), lines
    # journald adds the time itself: no timestamp of our own.
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d", line) for line in lines)


@pytest.mark.parametrize("journal_stream", [None, "other"],
                         ids=["unset", "inherited-from-elsewhere"])
def test_plain_lines_otherwise(tmp_path, services, journal_stream):
    stderr_path = tmp_path / "stderr"
    if journal_stream == "other":
        # A JOURNAL_STREAM naming some other file: our stderr is not the journal.
        other = tmp_path / "other"
        other.touch()
        st = os.stat(other)
        journal_stream = f"{st.st_dev}:{st.st_ino}"
    lines = run_once(tmp_path, services, journal_stream, stderr_path)
    assert lines
    assert all(PLAIN.match(line) for line in lines), lines
    assert not any("\x1b" in line for line in lines)
    assert not any(PRIORITY.match(line) for line in lines)
    assert any(re.search(r"INFO sockvisor: sockvisor ready: web: 1/1 ready$", line)
               for line in lines), lines
    assert any(re.search(r"WARNING sockvisor: .*check_delay", line) for line in lines)


WORKER_LEVELS = """
    [watcher:talker]
    cmd = /bin/sh -c 'printf "<4>careful\\\\nplain\\\\n<9>not a level\\\\n" >&2; printf "<5>notice\\\\n"; exec sleep 600'
    stdout = prefix
    stderr = prefix
    graceful_timeout = 2
"""


def test_a_workers_own_priority_stays_first_under_the_journal(tmp_path, services):
    """A worker that writes `<4>careful` to journald directly gets a warning; through
    `stderr = prefix` it must too: `<4>talker[PID] careful`, not an info line that
    reads `talker[PID] <4>careful`.  A line without a level gets none (journald's
    default applies, as it would to the worker); stdout, not the journal here, is
    left as it is."""
    stderr_path = tmp_path / "journal"
    stderr_path.touch()
    st = os.stat(stderr_path)
    conf = write_config(tmp_path, WORKER_LEVELS)
    sv = services.start(SOCKVISOR + [str(conf)],
                        clean_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"),
                        stderr_path=stderr_path)
    pid = int(sv.wait_log(r"^talker\[(\d+)\] <9>not a level$").group(1))
    lines = sv.log().splitlines()
    assert f"<4>talker[{pid}] careful" in lines, lines
    assert f"talker[{pid}] plain" in lines, lines
    wait_for(lambda: f"talker[{pid}] <5>notice" in sv.stdout_path.read_text(), 10,
             message=lambda: f"the stdout line in {sv.stdout_path.read_text()!r}")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
