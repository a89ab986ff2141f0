"""Logging set-up: one line per event, with a level, fit for a terminal or journald.

Under journald (stderr is the stream named by $JOURNAL_STREAM) each line starts with
the sd-daemon priority prefix `<N>` so the journal records the level, and carries no
timestamp of its own (journald adds one).  No colour anywhere: logs are read by
machines as often as by people.

Circus's `logoutput` sends the log elsewhere: `-` to stdout, or a file that
root appends to, opened as worker log files are (logdir.py: a folder only root
may write, no link, FIFO or foreign file at the name) and reopened by path on
SIGUSR1 (`reopen`), after logrotate has moved it away.

Circus's `loggerconfig` replaces all of this with a Python logging
configuration file (`setup_from_file`; logconfig.py reads, checks and applies
it, with its handlers in a thread of their own); loglevel and logoutput are
then ignored, as in Circus, and SIGUSR1 leaves its handlers alone (a
WatchedFileHandler notices logrotate by itself).  `flush` (before an upgrade's
exec) and `close` (at exit) let that thread finish what is queued, bounded.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
             logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # One record, one journal entry: continuation lines keep the priority.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def is_journal_stream(stream: IO) -> bool:
    """True if `stream` is the one systemd connected to the journal: $JOURNAL_STREAM
    names its st_dev:st_ino.  (An inherited variable naming some other file — a
    parent's journal, our output redirected since — does not count.)"""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device or not inode:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == value


def stderr_is_journal() -> bool:
    return is_journal_stream(sys.stderr)


class _LogFile(logging.StreamHandler):
    """sockvisor's log appended to a file, reopened by path on `reopen()`."""

    def __init__(self, path: str):
        super().__init__(self._open(path))
        self.path = path

    @staticmethod
    def _open(path: str) -> IO[str]:
        from sockvisor import logdir
        trust = logdir.Trust(None, None)
        directory, name = os.path.split(path)
        dir_fd = logdir.open_directory(directory or "/", trust)
        try:
            fd = logdir.open_file(dir_fd, name, path, trust)
        finally:
            os.close(dir_fd)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")

    def reopen(self) -> None:
        try:
            stream = self._open(self.path)
        except OSError as exc:   # keep writing where we were: better than nowhere
            logging.getLogger("sockvisor").error("cannot reopen the log %s: %s",
                                                 self.path, exc)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        old.close()


_log_file: _LogFile | None = None
_listener = None   # logconfig's handlers' thread, with loggerconfig


def reopen() -> None:
    """SIGUSR1: reopen `logoutput`'s file by its path (after logrotate moved it)."""
    if _log_file is not None:
        _log_file.reopen()


def setup(level: str = "info", output: str | None = None) -> None:
    """Log at `level` to stderr, or to `output` (`-`: stdout; else a file path,
    opened here: OSError if it cannot be)."""
    global _log_file
    journal = False
    if output is not None and output != "-":
        handler: logging.Handler = _LogFile(output)
        _log_file = handler   # type: ignore[assignment]
    else:
        stream = sys.stdout if output == "-" else sys.stderr
        handler = logging.StreamHandler(stream)
        journal = is_journal_stream(stream)
    if journal:
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sockvisor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # asyncio reports exceptions in callbacks and never-retrieved task errors on
    # its own logger; without a handler they would reach stderr bare, one journal
    # entry per traceback line at the default priority.
    loop_log = logging.getLogger("asyncio")
    loop_log.handlers[:] = [handler]
    loop_log.setLevel(max(root.level, logging.WARNING))
    loop_log.propagate = False
    sys.excepthook = _log_uncaught


def setup_from_file(path: str, text: str, level: str | None = None) -> None:
    """Circus's `loggerconfig`: the logging configuration `text` (read from `path`
    at load) applied, its handlers moved to a thread (logconfig.py); `level` (the
    command line's --log-level) is then sockvisor's own logger's.  Raises
    logconfig.LoggingConfigError if it cannot be applied."""
    global _listener
    from sockvisor import logconfig
    close()
    _listener = logconfig.apply(path, text, level)
    sys.excepthook = _log_uncaught


def flush(timeout: float = 2.0) -> None:
    """Everything logged so far written out, waiting at most `timeout` seconds
    for loggerconfig's handlers: before an upgrade's exec, which ends their
    thread.  (Blocking, bounded: nothing else runs between it and the exec.)"""
    if _listener is not None:
        _listener.drain(timeout)
    for handler in logging.getLogger("sockvisor").handlers:
        handler.flush()


def close(timeout: float = 5.0) -> None:
    """At exit: loggerconfig's handlers finish what is queued (at most `timeout`
    seconds), their thread ends and they are flushed."""
    global _listener
    if _listener is not None:
        _listener.close(timeout)
        _listener = None


def _log_uncaught(kind, value, traceback) -> None:
    """A crash is logged like everything else (at CRITICAL), not printed bare."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("sockvisor").critical("sockvisor crashed: %s", value,
                                            exc_info=(kind, value, traceback))
