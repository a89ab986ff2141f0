"""Circus's `pidfile`: sockvisor's pid in a file, for init scripts and monitors.

Written once the listening sockets are bound (a pid in the file means sockvisor
got that far), atomically: to a temporary name in the same folder, then renamed
over the final name, so a reader sees the old content or the whole new one,
never an empty or half-written file.  Removed at exit, if it is still the file
we wrote: the same inode, holding our pid (an inode number alone can be reused
by another instance's file).

Root writes it, so the folder must be one only root can write (the config check,
logdir.check_log_path): otherwise another user could plant the name.  The folder
is opened once without following links anyone else could have made
(logdir.open_directory) and everything after goes through that descriptor:
creating the temporary file (O_EXCL | O_NOFOLLOW), the rename, the removal.
"""

from __future__ import annotations

import logging
import os

from sockvisor import logdir

log = logging.getLogger("sockvisor")


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self._dir_fd: int | None = None
        self._name = os.path.basename(path)
        self._written: tuple[int, int] | None = None   # (st_dev, st_ino)
        self._content = b""

    def write(self, pid: int) -> None:
        """Write `pid`; OSError (LogPathError's message says why) if we cannot."""
        dir_fd = logdir.open_directory(os.path.dirname(self.path) or "/",
                                       logdir.Trust(None, None))
        temporary = f".{self._name}.{pid}.tmp"
        try:
            try:
                os.unlink(temporary, dir_fd=dir_fd)   # left by a killed predecessor
            except FileNotFoundError:
                pass
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            try:
                self._content = f"{pid}\n".encode()
                os.write(fd, self._content)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.rename(temporary, self._name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            os.close(dir_fd)
            raise
        self._dir_fd = dir_fd
        self._written = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Remove the file if it is still the one we wrote (never another's)."""
        if self._dir_fd is None:
            return
        try:
            fd = os.open(self._name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, dir_fd=self._dir_fd)
            try:
                st = os.fstat(fd)
                ours = ((st.st_dev, st.st_ino) == self._written
                        and os.read(fd, 64) == self._content)
            finally:
                os.close(fd)
            if ours:
                os.unlink(self._name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the pidfile %s: %s", self.path, exc.strerror)
        finally:
            os.close(self._dir_fd)
            self._dir_fd = None
