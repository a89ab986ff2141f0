"""Rotation by time (Circus's TimedRotatingFileStream): the schedule agrees with
Python's logging, which Circus follows, and LogFile's renames and deletions stay
inside the log folder."""

from __future__ import annotations

import logging.handlers
import os
import time

import pytest

from sockvisor.config import OutputConfig, OutputKind
from sockvisor.output import LogFile
from sockvisor.timed_rotation import Schedule, parse_when


@pytest.mark.parametrize("when", ["S", "M", "H", "D", "MIDNIGHT", "W0", "W3", "W6"])
@pytest.mark.parametrize("utc", [False, True])
def test_next_rollover_is_loggings(tmp_path, when, utc):
    handler = logging.handlers.TimedRotatingFileHandler(
        tmp_path / "x.log", when=when, interval=3, utc=utc, delay=True)
    schedule = Schedule(when, 3, utc)
    for now in (time.time(), 1_700_000_000.0, 1_700_050_123.0):
        assert schedule.next_rollover(now) == handler.computeRollover(now)


def test_parse_when_and_suffixes():
    assert parse_when(" midnight ") == "MIDNIGHT" and parse_when("w2") == "W2"
    for bad in ("W7", "fortnightly", "", "10"):
        with pytest.raises(ValueError):
            parse_when(bad)
    at = time.mktime((2026, 11, 27, 13, 5, 9, 0, 0, -1))
    assert Schedule("S").suffix(at + 1) == "20261127130509"
    assert Schedule("H", 2).suffix(at + 2 * 3600) == "2026112713"
    assert Schedule("MIDNIGHT").suffix(at + 86400) == "20261127"
    assert Schedule("S").is_rotated_name("out.log.20261127130509", "out.log")
    assert not Schedule("S").is_rotated_name("out.log.2026112713", "out.log")
    assert not Schedule("S").is_rotated_name("out.log.1", "out.log")


def _file(tmp_path, backup_count=2) -> LogFile:
    config = OutputConfig(OutputKind.FILE, str(tmp_path / "out.log"),
                          backup_count=backup_count, rotate_when="S")
    return LogFile.acquire(config, None, None)


def test_rotation_keeps_backup_count_copies_and_leaves_other_files(tmp_path):
    (tmp_path / "out.log.1").write_text("size rotation's, not ours")
    (tmp_path / "out.log.20000101000000").write_text("oldest")
    log = _file(tmp_path)
    try:
        for second in range(3):
            log._rollover_at = time.time() - 10 * (3 - second)   # due: rotate now
            log.write(f"line {second}\n".encode())
        names = sorted(os.listdir(tmp_path))
        copies = [n for n in names if Schedule("S").is_rotated_name(n, "out.log")]
        assert len(copies) == 2 and "out.log.20000101000000" not in names
        assert "out.log.1" in names and (tmp_path / "out.log").read_text() == "line 2\n"
    finally:
        log.release()


def test_rotation_never_follows_what_a_worker_planted(tmp_path):
    log = _file(tmp_path, backup_count=0)
    try:
        log.write(b"first\n")
        victim = tmp_path / "victim"
        victim.write_text("root's")
        due = log._rollover_at = time.time() - 5      # a rotation is due
        target = f"out.log.{Schedule('S').suffix(due)}"
        os.symlink(victim, tmp_path / target)        # a link at the rotated name
        log.write(b"second\n")
        assert victim.read_text() == "root's"        # replaced, not written through
        assert not os.path.islink(tmp_path / target)
        assert (tmp_path / target).read_text() == "first\n"
        assert (tmp_path / "out.log").read_text() == "second\n"
        # A folder at the rotated name: the file is emptied instead, nothing breaks.
        due = log._rollover_at = time.time() - 20
        target = f"out.log.{Schedule('S').suffix(due)}"
        os.mkdir(tmp_path / target)
        (tmp_path / target / "x").write_text("x")
        log.write(b"third\n")
        assert (tmp_path / "out.log").read_text() == "third\n"
        assert (tmp_path / target / "x").read_text() == "x"
    finally:
        log.release()
