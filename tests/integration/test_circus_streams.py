"""Circus's stream classes (issue 11, item 11) on a real sockvisor: which files a
worker's output goes to with TimedRotatingFileStream and WatchedFileStream.
"""

from __future__ import annotations

import os
import re

import pytest

from conftest import wait_for
from control_helpers import control

pytestmark = pytest.mark.timeout(60)

# --------------------------------------------------------------------------- streams

def test_timed_rotating_file_stream_rotates_every_second(sockvisor, hupper, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {hupper} --tick
        stdout_stream.class = TimedRotatingFileStream
        stdout_stream.filename = {logs}/out.log
        stdout_stream.rotate_when = S
        stdout_stream.rotate_interval = 1
        stdout_stream.backup_count = 3
    """)
    suffix = re.compile(r"^out\.log\.\d{14}$")

    def rotated() -> list[str]:
        return sorted(name for name in os.listdir(logs) if suffix.match(name))
    wait_for(lambda: len(rotated()) >= 3, 20, message=lambda: os.listdir(logs))
    assert (logs / "out.log").exists()
    # backup_count: never more than 3 rotated files are kept.
    wait_for(lambda: len(rotated()) == 3 and "tick" in (logs / rotated()[-1]).read_text(),
             10, message=lambda: os.listdir(logs))
    ticks = [int(line.split()[1]) for name in rotated() + ["out.log"]
             for line in (logs / name).read_text().splitlines()]
    assert ticks == sorted(ticks)                # in order across the files
    sv.stop()


def test_watched_file_stream_reopens_at_once_after_a_move(sockvisor, hupper, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    sv = sockvisor(f"""
        [watcher:app]
        cmd = {hupper}
        stdout_stream.class = WatchedFileStream
        stdout_stream.filename = {logs}/out.log
    """)
    with control(sv) as c:
        pid = c.wait_ready("app", 1)["workers"][0]["pid"]
    log = logs / "out.log"
    os.kill(pid, 10)
    wait_for(lambda: log.exists() and "line 1" in log.read_text(), 10)
    os.rename(log, logs / "out.log.1")           # as logrotate does
    os.kill(pid, 10)                             # the very next line...
    wait_for(lambda: log.exists() and "line 2" in log.read_text(), 10,
             message="line 2 in a new out.log")
    assert "line 2" not in (logs / "out.log.1").read_text()   # ...not to the moved one


def test_unknown_stream_class_is_a_clear_error(tmp_path):
    from sockvisor.config import ConfigError, load
    path = tmp_path / "circus.ini"
    path.write_text("[watcher:app]\ncmd = /bin/sleep 100\n"
                    "stdout_stream.class = mypkg.streams.KafkaStream\n")
    with pytest.raises(ConfigError) as error:
        load(str(path))
    text = str(error.value)
    assert "stdout_stream.class" in text and "mypkg.streams.KafkaStream" in text
    assert "TimedRotatingFileStream" in text
