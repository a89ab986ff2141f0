"""Where a worker's stdout and stderr go.

`inherit` and `null` cost nothing: the child gets sockvisor's fd or /dev/null.
`prefix` and `file` go through a pipe that sockvisor reads in the event loop:
`prefix` writes each line to sockvisor's own stream as `watcher[pid] line` (one
line per record, which is what journald wants), `file` appends to a file shared
by the watcher's workers and rotates it by size.

Under journald a worker's line may start with an sd-daemon priority `<N>`, as it
would to journald directly; `prefix` keeps that in front of `watcher[pid]`, where
journald reads it, so the worker's own levels survive the detour through sockvisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections import deque
from typing import BinaryIO

from sockvisor.config import OutputConfig, OutputKind
from sockvisor.log import is_journal_stream

log = logging.getLogger("sockvisor.output")

_CHUNK = 65536
_MAX_PARTIAL = 65536   # a "line" longer than this is flushed as it is
_PRIORITY = re.compile(rb"<[0-7]>")   # sd-daemon's level prefix, at a line's start
RECENT_LINES = 50     # kept per stream for `logs` and the console: bounded memory
_RECENT_WIDTH = 500   # characters kept of each of those lines


class RotatingFile:
    """An append-only file rotated at `max_bytes` into path.1 … path.N."""

    def __init__(self, path: str, max_bytes: int, backup_count: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.handle: BinaryIO = open(path, "ab", buffering=0)
        self.size = self.handle.tell()

    def write(self, data: bytes) -> None:
        """Append whole lines, rotating between lines so that no file grows past
        `max_bytes` — unless one line alone is longer, which then gets a file of
        its own.  (`data` is whatever one pipe read brought, up to 64 kB: written
        in one piece it could double a small `max_bytes`.)"""
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
        self.handle.write(data)
        self.size += len(data)

    def rotate(self) -> None:
        self.handle.close()
        if self.backup_count > 0:
            for index in range(self.backup_count - 1, 0, -1):
                source = f"{self.path}.{index}"
                if os.path.exists(source):
                    os.replace(source, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.truncate(self.path, 0)
        self.handle = open(self.path, "ab", buffering=0)
        self.size = 0

    def close(self) -> None:
        self.handle.close()


class OutputSink:
    """One stream (stdout or stderr) of one watcher: where its workers' output goes."""

    def __init__(self, config: OutputConfig, watcher_name: str, fallback: BinaryIO):
        self.config = config
        self.watcher_name = watcher_name
        self.fallback = fallback
        self.file: RotatingFile | None = None
        self.to_journal = config.kind == OutputKind.PREFIX and is_journal_stream(fallback)
        # (time, pid, line): the last lines, whatever the destination (`logs`).
        self.recent: deque[tuple[float, int, str]] = deque(maxlen=RECENT_LINES)
        if config.kind == OutputKind.FILE:
            assert config.path is not None
            self.file = RotatingFile(config.path, config.max_bytes, config.backup_count)

    def child_fd(self) -> tuple[int | None, int | None]:
        """(fd for the child, read end for sockvisor) — created per worker."""
        if self.config.kind == OutputKind.INHERIT:
            return None, None
        if self.config.kind == OutputKind.NULL:
            return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), None
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # The child's end must block: many programs do not expect EAGAIN on stdout.
        os.set_blocking(write_end, True)
        return write_end, read_end

    def attach(self, loop: asyncio.AbstractEventLoop, read_end: int, pid: int) -> None:
        prefix = f"{self.watcher_name}[{pid}] ".encode()
        emit = self.emit

        def remember_and_emit(prefix: bytes, lines: bytes) -> None:
            # Only the chunk's last lines can stay in the ring: split no more.
            now = time.time()
            for line in lines.rstrip(b"\n").rsplit(b"\n", RECENT_LINES)[-RECENT_LINES:]:
                self.recent.append((now, pid, line[:_RECENT_WIDTH].decode(errors="replace")))
            emit(prefix, lines)
        partial = bytearray()

        def on_readable() -> None:
            try:
                data = os.read(read_end, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(read_end)
                os.close(read_end)
                if partial:
                    remember_and_emit(prefix, bytes(partial) + b"\n")
                    partial.clear()
                return
            partial.extend(data)
            cut = partial.rfind(b"\n")
            if cut >= 0:
                remember_and_emit(prefix, bytes(partial[:cut + 1]))
                del partial[:cut + 1]
            elif len(partial) > _MAX_PARTIAL:
                remember_and_emit(prefix, bytes(partial) + b"\n")
                partial.clear()

        loop.add_reader(read_end, on_readable)

    def emit(self, prefix: bytes, lines: bytes) -> None:
        try:
            if self.file is not None:
                self.file.write(lines)
                return
            # Split on \n only: a bare \r (a progress bar) stays inside its line.
            out = b"".join(self._prefixed(prefix, line)
                           for line in lines.rstrip(b"\n").split(b"\n"))
            self.fallback.write(out)
            self.fallback.flush()
        except OSError as exc:
            log.warning("%s: cannot write worker output: %s", self.watcher_name, exc)

    def _prefixed(self, prefix: bytes, line: bytes) -> bytes:
        if self.to_journal and _PRIORITY.match(line):
            return line[:3] + prefix + line[3:] + b"\n"
        return prefix + line + b"\n"

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def stdout_fallback() -> BinaryIO:
    return sys.stdout.buffer


def stderr_fallback() -> BinaryIO:
    return sys.stderr.buffer
