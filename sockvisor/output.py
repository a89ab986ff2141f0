"""Where a worker's stdout and stderr go.

Every mode goes through a pipe that sockvisor reads in the event loop, so that
`logs` (the watcher's OutputRing) has the last lines whatever the mode:
`inherit` (the default) writes each line, as it is, to sockvisor's own stdout
or stderr; `null` keeps the lines only in the ring; `prefix` writes each line
to sockvisor's own stream as `watcher[pid] line` (one line per record, which is
what journald wants); `file` appends to a file shared by the watcher's workers
and rotates it by size, or by time (timed_rotation.py).  (So a worker's stdout is never sockvisor's terminal:
each worker costs sockvisor two pipe fds, and supervisor start-up raises its
fd limit for them: fdlimit.py.)

Under journald (sockvisor's stdout/stderr is the stream $JOURNAL_STREAM names)
`inherit` and `prefix` send each line to journald by its native protocol
instead (journal.py): the watcher is the entry's SYSLOG_IDENTIFIER and the
worker's pid its SYSLOG_PID, and a line's sd-daemon priority `<N>` becomes its
PRIORITY, as if the worker had written to journald directly.  A line without
one gets PRIORITY=6 on stdout and on stderr alike, which is what journald's
stream gives both (SyslogLevel=info): most servers (Python's logging, gunicorn)
write their ordinary lines to stderr.  Without a journal socket the line goes
to the stream (`<N>watcher[pid] text` for prefix), where journald still reads
the priority.

Nothing here may block the event loop or be steered by a worker:
* Log files are opened and rotated through `logdir` (O_NOFOLLOW relative to a
  checked directory fd, renames relative to it, `ftruncate` of our own fd): a
  link or FIFO a worker plants at the name is refused, never written through.
  A file that disappears (its folder deleted and re-created, a rename by
  logrotate) is noticed within a second of the next write and reopened by its
  path -- before the very next write for Circus's WatchedFileStream -- and
  SIGUSR1 (`reopen_files`) reopens every file at once, written to or not.
* sockvisor's own stdout/stderr (`inherit`, `prefix`) are written without
  blocking.  A slow reader (a terminal, `| less`, a log shipper) gets
  back-pressure, as it would writing to the worker directly: while more than
  `HOLD_AT` bytes wait for it, the workers' pipes are not read, so the workers
  wait in write().  A reader that takes nothing for `STALLED_AFTER` seconds is
  stalled: then the pipes are read again, at most `STREAM_BUFFER` bytes are
  held, and whole chunks beyond are dropped and counted (in the log,
  rate-limited, and in `stats`), so a stuck reader never stops the workers.
* A sink lives as long as someone writes to it: the watcher holds one reference
  while the sink is its current one, every worker's pipe another.  Changing the
  output options (set, reload, reloadconfig, and an aborted reload going back)
  makes a new sink for new workers; the old one closes after its last worker.
  The file behind sinks naming the same path is shared, so two sinks never
  rotate one file behind each other's back.
* Warnings about a failure that repeats with every chunk (a full disk) are
  rate-limited: one per kind of failure per 30 s, with the count kept quiet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from sockvisor import journal, logdir
from sockvisor.config import OutputConfig, OutputKind
from sockvisor.log import is_journal_stream
from sockvisor.ratelimit import RateLimitedLog
from sockvisor.timed_rotation import Schedule

log = logging.getLogger("sockvisor.output")
_warnings = RateLimitedLog(log)

_CHUNK = 65536
_MAX_PARTIAL = 65536   # a "line" longer than this is flushed as it is
_PRIORITY = re.compile(rb"<[0-7]>")   # sd-daemon's level prefix, at a line's start
_DEFAULT_PRIORITY = 6   # LOG_INFO: what journald gives a stream's unprefixed lines
STREAM_BUFFER = 1 << 20   # bytes held for a slow reader of sockvisor's stdout/stderr
HOLD_AT = 1 << 18   # held bytes from which workers' pipes wait (back-pressure)
STALLED_AFTER = 1.0   # seconds a reader may take nothing before output is dropped
_RECHECK = 1.0   # seconds between looks at whether a log file is still at its path
RECENT_LINES = 50     # kept per stream for `logs` and the console: bounded memory
_RECENT_WIDTH = 500   # characters kept of each of those lines


@dataclass
class Dropped:
    """Worker output that could not be written (stalled reader, full disk, ...)."""
    lines: int = 0
    bytes: int = 0

    def add(self, data: bytes) -> None:
        self.lines += data.count(b"\n")
        self.bytes += len(data)

    def as_dict(self) -> dict[str, int]:
        return {"dropped_lines": self.lines, "dropped_bytes": self.bytes}


class LogFile:
    """An append-only file rotated at `max_bytes` into NAME.1 … NAME.N.

    One instance per (path, uid, gid), shared by every sink that names it and
    reference-counted: `acquire` opens or reuses it (the newest options win),
    `release` closes it after the last user.
    """

    _open: dict[tuple[str, int | None, int | None], "LogFile"] = {}

    @classmethod
    def acquire(cls, config: OutputConfig, uid: int | None, gid: int | None) -> "LogFile":
        assert config.path is not None
        key = (config.path, uid, gid)
        file = cls._open.get(key)
        if file is None:
            file = cls(config.path, logdir.Trust(uid, gid))
            cls._open[key] = file
            file._key = key
        file.refs += 1
        file.configure(config)
        return file

    def configure(self, config: OutputConfig) -> None:
        """Take `config`'s rotation options (the newest sink's win)."""
        self.max_bytes = config.max_bytes
        self.backup_count = config.backup_count
        self.watched = config.watched
        schedule = (Schedule(config.rotate_when, config.rotate_interval, config.rotate_utc)
                    if config.rotate_when else None)
        if schedule != self.schedule:
            self.schedule = schedule
            if schedule is not None:
                # As Circus: an existing file's first period counts from its mtime.
                start = os.fstat(self.fd).st_mtime if self.size else time.time()
                self._rollover_at = schedule.next_rollover(start)

    def __init__(self, path: str, trust: logdir.Trust):
        self.path = path
        self.directory, self.name = os.path.split(path)
        self.trust = trust
        self.max_bytes = 0
        self.backup_count = 0
        self.watched = False
        self.schedule: Schedule | None = None
        self._rollover_at = 0.0
        self.refs = 0
        self._key: tuple[str, int | None, int | None] | None = None
        self.dirfd, self.fd = self._open_path()
        self.size = os.fstat(self.fd).st_size
        self._checked = time.monotonic()

    def _open_path(self) -> tuple[int, int]:
        dirfd = logdir.open_directory(self.directory or "/", self.trust)
        try:
            return dirfd, logdir.open_file(dirfd, self.name, self.path, self.trust)
        except BaseException:
            os.close(dirfd)
            raise

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            if self._key is not None and LogFile._open.get(self._key) is self:
                del LogFile._open[self._key]
            self.close()

    def write(self, data: bytes) -> None:
        """Append whole lines, rotating between lines so that no file grows past
        `max_bytes` — unless one line alone is longer, which then gets a file of
        its own.  (`data` is whatever one pipe read brought, up to 64 kB: written
        in one piece it could double a small `max_bytes`.)  Raises OSError."""
        self._follow_path()
        if self.schedule is not None and time.time() >= self._rollover_at:
            self.rotate_by_time()
        if not self.max_bytes:
            self._append(data)
            return
        while data:
            room = max(self.max_bytes - self.size, 0)
            if len(data) <= room:
                self._append(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1      # the whole lines that fit
            if cut == 0:
                if self.size:
                    self.rotate()
                    continue
                cut = data.find(b"\n") + 1 or len(data)   # one over-long line
            self._append(data[:cut])
            data = data[cut:]
            if data:
                self.rotate()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def recheck(self) -> None:
        """Look at the path again before the next write (a new worker starts)."""
        self._checked = float("-inf")

    def _follow_path(self) -> None:
        """At most once a second, and before the first write of a new worker or
        after a rotation: is our file still the one at our path?  If it was
        deleted (with its folder, say) or renamed away, reopen the path."""
        now = time.monotonic()
        if now - self._checked < _RECHECK and not self.watched:
            return
        self._checked = now
        try:
            ours = os.fstat(self.fd)
            there = os.stat(self.name, dir_fd=self.dirfd, follow_symlinks=False)
            if ours.st_nlink and (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                return
        except FileNotFoundError:
            pass
        self.reopen()

    def reopen(self) -> bool:
        """Open the path again from `/` (its folder may be a new one); on failure
        keep writing where we did and say so, rate-limited."""
        try:
            dirfd, fd = self._open_path()
        except OSError as exc:
            _warnings.warning((self.path, "reopen", exc.errno),
                              "cannot reopen %s, output goes on to the file it "
                              "replaced: %s", self.path, exc)
            self.size = 0   # no rotation attempt per chunk meanwhile
            return False
        os.close(self.fd)
        os.close(self.dirfd)
        self.dirfd, self.fd = dirfd, fd
        self.size = os.fstat(fd).st_size
        log.info("reopened %s", self.path)
        return True

    def rotate(self) -> None:
        """NAME → NAME.1 → … by renames inside our directory fd (a rename moves a
        name, it never follows a link), then a new NAME; with no backups, empty
        our own file through its fd."""
        self.size = 0
        if self.backup_count <= 0:
            self._truncate()
            return
        try:
            for index in range(self.backup_count - 1, 0, -1):
                try:
                    os.rename(f"{self.name}.{index}", f"{self.name}.{index + 1}",
                              src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
                except FileNotFoundError:
                    pass
            os.rename(self.name, f"{self.name}.1", src_dir_fd=self.dirfd,
                      dst_dir_fd=self.dirfd)
        except FileNotFoundError:
            self.reopen()   # our file (or its folder) is gone
            return
        except OSError as exc:
            # The worker's folder can block a rename for ever (a directory at
            # NAME.N, say).  Keep the size bound rather than grow without end:
            # empty our own file, as with no backups, and say why.
            _warnings.warning((self.path, "rotate-rename", exc.errno),
                              "cannot rotate %s (%s): emptying it instead, so it "
                              "stays under stdout_max_bytes", self.path, exc)
            self._truncate()
            return
        self._start_new_file()

    def _start_new_file(self) -> None:
        """After NAME was renamed away: a new NAME in our directory fd, written
        to from now on."""
        try:
            fd = logdir.open_file(self.dirfd, self.name, self.path, self.trust)
        except OSError as exc:
            # Something took the name between the rename and the open: keep
            # writing to the file we have (now renamed) rather than follow it.
            _warnings.warning((self.path, "rotate", exc.errno),
                              "cannot start a new %s after rotating it: %s", self.path, exc)
            return
        os.close(self.fd)
        self.fd = fd

    def rotate_by_time(self) -> None:
        """NAME → NAME.SUFFIX (the start of the period it covers) by a rename
        inside our directory fd, the oldest copies beyond backup_count deleted
        (unlinks of names in that folder: never a path followed), then a new NAME."""
        assert self.schedule is not None
        target = f"{self.name}.{self.schedule.suffix(self._rollover_at)}"
        self._rollover_at = self.schedule.after(time.time())
        self.size = 0
        try:
            os.rename(self.name, target, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        except FileNotFoundError:
            self.reopen()   # our file (or its folder) is gone
            return
        except OSError as exc:   # a directory planted at NAME.SUFFIX, say
            _warnings.warning((self.path, "rotate-rename", exc.errno),
                              "cannot rotate %s to %s (%s): emptying it instead",
                              self.path, target, exc)
            self._truncate()
            return
        if self.backup_count > 0:
            try:
                copies = sorted(name for name in os.listdir(self.dirfd)
                                if self.schedule.is_rotated_name(name, self.name))
            except OSError:
                copies = []
            for name in copies[:max(len(copies) - self.backup_count, 0)]:
                try:
                    os.unlink(name, dir_fd=self.dirfd)
                except OSError:
                    pass   # not ours to force (a folder a worker made there)
        self._start_new_file()

    def _truncate(self) -> None:
        """Empty our own file through its fd (never by path), then check that it
        is still the one at our path."""
        os.ftruncate(self.fd, 0)
        self.recheck()
        self._follow_path()

    def close(self) -> None:
        for fd in (self.fd, self.dirfd):
            try:
                os.close(fd)
            except OSError:
                pass


def reopen_files() -> None:
    """SIGUSR1: reopen every log file by its path now (logrotate's postrotate),
    rather than at the next write a second later -- so that a file moved away
    is closed, and a new one exists, even for a watcher that writes nothing."""
    files = list(LogFile._open.values())
    log.info("SIGUSR1: reopening %d log file%s", len(files), "" if len(files) == 1 else "s")
    for file in files:
        file.reopen()


class StreamWriter:
    """sockvisor's own stdout or stderr, written without ever blocking the loop.

    The fd is shared with whoever started sockvisor (a shell, a terminal), so
    O_NONBLOCK, which lives on the open file description, must not be set on
    it.  Instead: a pipe, FIFO or terminal is opened again through /proc (a new
    description of the same pipe, ours to make non-blocking); a socket (journald's
    stream) is sent to with MSG_DONTWAIT; a regular file cannot stall and is
    written as it is.  What the reader does not take waits in a buffer of at
    most `limit` bytes; beyond that whole chunks are dropped and counted.
    From `HOLD_AT` bytes on, `full()` asks the sinks to stop reading their
    workers (`hold`) until the buffer drains, unless the reader is stalled.
    """

    def __init__(self, fd: int, name: str, limit: int = STREAM_BUFFER):
        self._original = fd
        self.name = name
        self.limit = limit
        self.dropped = Dropped()
        self._pending = bytearray()
        self._waiting = False
        self._fd = -1
        self._send = self._open(fd)
        self._held: dict[int, Callable[[], None]] = {}   # worker pipe -> resume reading
        self._progress = 0   # bytes the reader has taken from the buffer
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stalled = False

    def fileno(self) -> int:
        return self._original

    def _open(self, fd: int) -> Callable[[bytes | memoryview], int]:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            error = exc

            def broken(data: bytes | memoryview) -> int:
                raise error
            return broken
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            self._fd = sock.fileno()
            return lambda data: sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                self._fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK
                                   | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as exc:   # no /proc, or a pipe whose reader is gone
                log.debug("%s: cannot reopen it non-blocking: %s", self.name, exc)
        if self._fd < 0:
            self._fd = os.dup(fd)
        own = self._fd
        return lambda data: os.write(own, data)

    def write(self, data: bytes) -> bool:
        """Queue `data` (whole lines); False if it was dropped."""
        if self._pending:
            if len(self._pending) + len(data) > self.limit:
                self._drop(data)
                return False
            self._pending += data
            return True
        try:
            written = self._send(data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.dropped.add(data)
            _warnings.warning((self.name, "write", exc.errno),
                              "cannot write worker output to sockvisor's %s: %s",
                              self.name, exc)
            return False
        if written < len(data):
            if len(data) - written > self.limit:
                self._drop(data[written:])
                return False
            self._pending += data[written:]
            self._wait_writable()
        return True

    def full(self) -> bool:
        """Should the sinks stop reading their workers for now (back-pressure)?"""
        return len(self._pending) >= min(HOLD_AT, self.limit) and not self._stalled

    def hold(self, read_end: int, resume: Callable[[], None]) -> None:
        """A sink stopped reading `read_end`; `resume()` once the buffer drains,
        or once the reader is found stalled."""
        self._held[read_end] = resume
        if self._stall_timer is None:
            self._stall_timer = asyncio.get_running_loop().call_later(
                STALLED_AFTER, self._check_stalled, self._progress)

    def _check_stalled(self, progress: int) -> None:
        self._stall_timer = None
        if not self._held:
            return
        if self._progress != progress:   # slow, not stuck: keep the workers waiting
            self._stall_timer = asyncio.get_running_loop().call_later(
                STALLED_AFTER, self._check_stalled, self._progress)
            return
        self._stalled = True   # until the buffer is empty again
        log.debug("%s: the reader took nothing for %gs: reading workers again, "
                  "dropping what does not fit", self.name, STALLED_AFTER)
        self._resume_all()

    def _resume_all(self) -> None:
        held, self._held = self._held, {}
        for resume in held.values():
            resume()

    def _drop(self, data: bytes) -> None:
        self.dropped.add(data)
        _warnings.warning((self.name, "stalled"),
                          "the reader of sockvisor's %s is not keeping up: dropped "
                          "worker output (%d lines, %d bytes so far); at most %d bytes "
                          "are held for it", self.name, self.dropped.lines,
                          self.dropped.bytes, self.limit)

    def _wait_writable(self) -> None:
        if not self._waiting:
            asyncio.get_running_loop().add_writer(self._fd, self._flush)
            self._waiting = True

    def _flush(self) -> None:
        while self._pending:
            try:
                written = self._send(memoryview(self._pending))
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop(bytes(self._pending))
                self._pending.clear()
                _warnings.warning((self.name, "write", exc.errno),
                                  "cannot write worker output to sockvisor's %s: %s",
                                  self.name, exc)
                break
            del self._pending[:written]
            self._progress += written
            if self._held and len(self._pending) < min(HOLD_AT, self.limit) // 2:
                self._resume_all()
        asyncio.get_running_loop().remove_writer(self._fd)
        self._waiting = False
        self._stalled = False
        self._resume_all()


_streams: dict[int, StreamWriter] = {}
# Every worker pipe being read: read end -> (pid, stream, partial line not yet
# emitted).  An upgrade hands over (handover.py) each worker's own pipes, found
# by the read end and buffer the worker keeps (Worker.pipes), never by pid: an
# exited worker's pipe still held by a grandchild has the pid of a new worker.
attached: dict[int, tuple[int, str, bytearray]] = {}


def pending_output() -> dict[int, bytes]:
    """What sockvisor's own stdout/stderr readers have not taken yet, by fd."""
    return {fd: bytes(writer._pending) for fd, writer in _streams.items()
            if writer._pending}


def write_carried(pending: dict[int, bytes]) -> None:
    """After an upgrade: write first what the previous run had not written yet."""
    for fd, data in pending.items():
        _stream(fd, "stdout" if fd == 1 else "stderr").write(data)


def _stream(fd: int, name: str) -> StreamWriter:
    """The one writer of sockvisor's fd `fd` (made on first use)."""
    writer = _streams.get(fd)
    if writer is None:
        writer = _streams[fd] = StreamWriter(fd, name)
    return writer


def stdout_fallback() -> StreamWriter:
    return _stream(1, "stdout")


def stderr_fallback() -> StreamWriter:
    return _stream(2, "stderr")


class OutputRing:
    """The last lines a watcher's workers wrote (`logs`, the console): a bounded
    ring per stream, whatever the destination.

    It belongs to the watcher, not to a sink: `set`, `reload` and `reloadconfig`
    replace the sinks, and the lines written before must not vanish with them.
    Every line gets the next sequence number, so a follower (`logs -f`) asks for
    what came after the last number it saw and can tell when the ring moved on
    past lines it never fetched.
    """

    STREAMS = ("stdout", "stderr")

    def __init__(self, size: int = RECENT_LINES):
        self.seq = 0
        self._lines = {stream: deque(maxlen=size) for stream in self.STREAMS}
        self._changed: asyncio.Event | None = None

    def append(self, stream: str, lines: list[tuple[float, int, str]]) -> None:
        ring = self._lines[stream]
        for when, pid, text in lines:
            self.seq += 1
            ring.append((self.seq, when, pid, text))
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def lines(self, after: int = 0, pid: int | None = None
              ) -> list[tuple[int, float, str, int, str]]:
        """(seq, time, stream, pid, text) of the kept lines numbered above
        `after`, oldest first; only `pid`'s if given."""
        found = [(seq, when, stream, who, text)
                 for stream, ring in self._lines.items()
                 for seq, when, who, text in ring
                 if seq > after and (pid is None or who == pid)]
        return sorted(found)

    def snapshot(self) -> dict:
        """The kept lines and the sequence number, for an upgrade (handover.py):
        `logs` and `logs -f` go on across it as if nothing happened."""
        return {"seq": self.seq, **{stream: [list(entry) for entry in ring]
                                    for stream, ring in self._lines.items()}}

    def restore(self, data: dict) -> None:
        self.seq = data["seq"]
        for stream, ring in self._lines.items():
            ring.extend(tuple(entry) for entry in data.get(stream, []))

    async def wait(self, after: int, timeout: float) -> None:
        """Return when a line numbered above `after` exists, or after `timeout`."""
        if self.seq > after or timeout <= 0:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class OutputSink:
    """One stream (stdout or stderr) of one watcher's configuration: where its
    workers' output goes.  Reference-counted (see the module docstring): it
    starts with the watcher's reference; `release` it when it stops being the
    watcher's current sink."""

    def __init__(self, config: OutputConfig, watcher_name: str, fallback: StreamWriter,
                 uid: int | None = None, gid: int | None = None,
                 dropped: Dropped | None = None, ring: OutputRing | None = None,
                 stream: str = "stdout"):
        self.config = config
        self.watcher_name = watcher_name
        self.fallback = fallback
        self.dropped = dropped if dropped is not None else Dropped()
        self.refs = 1
        self.file: LogFile | None = None
        self.to_journal = (config.kind in (OutputKind.INHERIT, OutputKind.PREFIX)
                           and is_journal_stream(fallback))
        # The last lines, whatever the destination (`logs`): the watcher's ring.
        self.ring = ring if ring is not None else OutputRing()
        self.stream = stream
        if config.kind == OutputKind.FILE:
            self.file = LogFile.acquire(config, uid, gid)

    def acquire(self) -> None:
        self.refs += 1

    def apply_limits(self) -> None:
        """This sink is the current one again (an aborted reload went back to it):
        its rotation options are the shared file's again."""
        if self.file is not None:
            self.file.configure(self.config)

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.file is not None:
            self.file.release()
            self.file = None

    def child_fd(self) -> tuple[int, int]:
        """(fd for the child, read end for sockvisor) — a pipe per worker and
        stream, whatever the mode: `logs` keeps the last lines of every one."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # The child's end must block: many programs do not expect EAGAIN on stdout.
        os.set_blocking(write_end, True)
        return write_end, read_end

    def attach(self, loop: asyncio.AbstractEventLoop, read_end: int, pid: int,
               carried: bytes = b"") -> bytearray:
        """Read a worker's pipe until it closes; the sink stays open until then.
        `carried`: a partial line read before an upgrade (handover.py).  Returns
        the pipe's partial-line buffer: its `attached` entry, for as long as that
        entry is the very same object, is this pipe's (not a reused fd's)."""
        prefix = (f"{self.watcher_name}[{pid}] ".encode()
                  if self.config.kind == OutputKind.PREFIX else b"")
        emit = self.emit

        def remember_and_emit(prefix: bytes, lines: bytes) -> None:
            # Only the chunk's last lines can stay in the ring: split no more.
            now = time.time()
            self.ring.append(self.stream, [
                (now, pid, line[:_RECENT_WIDTH].decode(errors="replace"))
                for line in lines.rstrip(b"\n").rsplit(b"\n", RECENT_LINES)[-RECENT_LINES:]])
            emit(prefix, lines, pid)
        partial = bytearray(carried)
        attached[read_end] = (pid, self.stream, partial)
        self.acquire()
        if self.file is not None:
            self.file.recheck()

        def on_readable() -> None:
            try:
                data = os.read(read_end, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(read_end)
                attached.pop(read_end, None)
                os.close(read_end)
                if partial:
                    remember_and_emit(prefix, bytes(partial) + b"\n")
                    partial.clear()
                self.release()
                return
            partial.extend(data)
            cut = partial.rfind(b"\n")
            if cut >= 0:
                remember_and_emit(prefix, bytes(partial[:cut + 1]))
                del partial[:cut + 1]
            elif len(partial) > _MAX_PARTIAL:
                remember_and_emit(prefix, bytes(partial) + b"\n")
                partial.clear()
            if self.file is None and self.fallback.full():
                # Back-pressure: the worker waits in write() while our reader is slow.
                loop.remove_reader(read_end)
                self.fallback.hold(read_end, lambda: loop.add_reader(read_end, on_readable))

        loop.add_reader(read_end, on_readable)
        return partial

    def emit(self, prefix: bytes, lines: bytes, pid: int) -> None:
        if self.config.kind == OutputKind.NULL:
            return   # kept in the ring only
        if self.file is not None:
            try:
                self.file.write(lines)
            except OSError as exc:
                self.dropped.add(lines)
                _warnings.warning((self.file.path, exc.errno),
                                  "%s: cannot write worker output to %s: %s",
                                  self.watcher_name, self.file.path, exc)
            return
        if not prefix and not self.to_journal:
            self._write(lines)   # inherit: the lines as the worker wrote them
            return
        # Split on \n only: a bare \r (a progress bar) stays inside its line.
        split = lines.rstrip(b"\n").split(b"\n")
        if self.to_journal:
            split = self._send_to_journal(split, pid)
        if split:
            self._write_stream(prefix, split)

    def _write_stream(self, prefix: bytes, lines: list[bytes]) -> None:
        self._write(b"".join(self._prefixed(prefix, line) for line in lines))

    def _write(self, out: bytes) -> None:
        if not self.fallback.write(out):
            self.dropped.add(out)

    def _send_to_journal(self, lines: list[bytes], pid: int) -> list[bytes]:
        """Each line as a journal entry of its own; the lines left for the
        stream if there is no journal socket (after all) to send them to."""
        sender = journal.journal()
        for index, line in enumerate(lines):
            priority = _DEFAULT_PRIORITY
            if _PRIORITY.match(line):
                priority, line = line[1] - ord("0"), line[3:]
            data = journal.entry(line, priority, self.watcher_name, pid, self.stream)
            try:
                sent = sender.send(data)
            except OSError as exc:   # e.g. EMSGSIZE: a line longer than journald takes
                sent = False
                _warnings.warning((self.watcher_name, "journal", exc.errno),
                                  "%s: cannot send worker output to the journal: %s",
                                  self.watcher_name, exc)
            if sent is None:
                return lines[index:]
            if not sent:
                self.dropped.add(line + b"\n")
                _warnings.warning(("journal", "behind"),
                                  "journald is not keeping up: dropped worker output "
                                  "(%s: %d lines so far)", self.watcher_name,
                                  self.dropped.lines)
        return []

    def _prefixed(self, prefix: bytes, line: bytes) -> bytes:
        if self.to_journal and _PRIORITY.match(line):
            return line[:3] + prefix + line[3:] + b"\n"
        return prefix + line + b"\n"

