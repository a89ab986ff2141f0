"""Opening a worker's log file as root without letting anyone else choose the file.

sockvisor (root) appends a worker's output to `stdout = file:DIR/NAME`.  DIR is
often the worker's own folder, so the worker — hostile by assumption — can
replace NAME, at any moment, with a symlink to /etc/shadow, a hard link, a FIFO
(which would block `open()`) or a device.  Root must never write, truncate or
chmod through such a name.  So:

* DIR is opened once, component by component from `/`, each with O_NOFOLLOW
  (a symlink is followed only in a folder only root can write — never in the
  worker's own), and every
  directory on the way is checked (`fstat` of the fd we hold, so nothing can
  change between the check and the use);
* NAME is opened relative to that directory fd with O_NOFOLLOW | O_NONBLOCK
  (a FIFO cannot block us), then `fstat`ed: a regular file with one link, owned
  by root or by the worker's user, or we refuse;
* everything later — rotation renames, truncation — goes through the directory
  fd or the file fd we hold (`renameat` does not follow symlinks; `ftruncate`
  acts on our own file), never by path.

Who may write a directory on the path.  Trusted users are root, the user
sockvisor runs as, and the watcher's `uid` (its workers may write their own log
folder: that is the usual layout, and what a worker writes there lands in its
own files).  A directory is *safe* if only trusted users can write it: its owner
is trusted, it is not world-writable, and group-writable only for a trusted
group (root's, or the watcher's `gid`).
- An *ancestor* (a directory on the way) that is not safe is still fine when it
  is sticky (`/tmp`, mode 1777) and the entry we go through is owned by a trusted
  user: the sticky bit stops everyone else from renaming or removing that entry.
- The log directory itself must be safe, sticky or not.  In a sticky
  world-writable folder such as /tmp any local user can create `out.log` or
  `out.log.1` before sockvisor does — as a FIFO, a directory, or a file of their
  own that root would then fill with the worker's output — and with
  `fs.protected_symlinks=0` (the default in many containers) even a symlink root
  would follow.  A log folder belongs to root or to the worker; it is refused
  otherwise, with the directory's owner and mode in the error.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
               | os.O_NOCTTY | os.O_CLOEXEC)
_MAX_SYMLINKS = 40   # as the kernel's own path walk


class LogPathError(OSError):
    """A log path that cannot be opened; `str()` is the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class UnsafePath(LogPathError):
    """A log path root must not write to; the message says why."""


class Trust:
    """Who, besides root, may control the files root writes for one watcher."""

    def __init__(self, uid: int | None, gid: int | None):
        self.own_uids = {0, os.geteuid()}
        self.own_gids = {0, os.getegid()}
        self.uids = self.own_uids | ({uid} if uid is not None else set())
        self.gids = self.own_gids | ({gid} if gid is not None else set())

    def writers(self, st: os.stat_result, worker: bool = True) -> str | None:
        """Why untrusted users could write the directory `st` describes, or None.
        With `worker=False` the watcher's user counts as untrusted too (it may
        write its own files, but not choose where root's path leads)."""
        uids = self.uids if worker else self.own_uids
        gids = self.gids if worker else self.own_gids
        mode = st.st_mode
        if st.st_uid not in uids:
            return f"owned by {_user(st.st_uid)}"
        if mode & stat.S_IWOTH:
            return "writable by everyone"
        if mode & stat.S_IWGRP and st.st_gid not in gids:
            return f"writable by group {_group(st.st_gid)}"
        return None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def describe(path: str, st: os.stat_result) -> str:
    return (f"{path} (owner {_user(st.st_uid)}:{_group(st.st_gid)}, "
            f"mode {stat.S_IMODE(st.st_mode):04o})")


def open_directory(path: str, trust: Trust) -> int:
    """An fd of the directory `path`, reached without following anything an
    untrusted user could have planted; raises UnsafePath or OSError."""
    if not path.startswith("/"):
        raise UnsafePath(errno.EINVAL, f"{path} is not an absolute path")
    fd = os.open("/", _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        where = "/"
        pending = [part for part in path.split("/") if part not in ("", ".")]
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                # Upwards from a directory we hold: the kernel resolves it and nobody
                # can swap it, so there is no entry to check.  `where` is for messages.
                child = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, st = child, os.fstat(child)
                where = os.path.dirname(where.rstrip("/")) or "/"
                continue
            else:
                child_where = os.path.join(where, part)
                try:
                    entry = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    raise LogPathError(errno.ENOENT, f"directory {child_where} "
                                       "does not exist") from None
                if stat.S_ISLNK(entry.st_mode):
                    # Followed only where nobody but root (or sockvisor's own user)
                    # could have made it: not in the worker's own folders either.
                    if trust.writers(st, worker=False) is not None:
                        raise UnsafePath(errno.ELOOP, f"{child_where} is a symbolic link "
                                         f"in {describe(where, st)}, which users other "
                                         "than root can write")
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise LogPathError(errno.ELOOP, f"too many symbolic links in {path}")
                    target = os.readlink(part, dir_fd=fd)
                    pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open("/", _DIR_FLAGS)
                        st, where = os.fstat(fd), "/"
                    continue
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(exc.errno, f"{child_where} is not a directory "
                                         "(or was just swapped for a link)") from None
                    raise LogPathError(exc.errno, f"cannot open directory {child_where}: "
                                       f"{exc.strerror}") from None
                where = child_where
            child_st = os.fstat(child)
            # Through a directory untrusted users can write, only into an entry the
            # sticky bit protects (owned by a trusted user).
            reason = trust.writers(st)
            if reason is not None and not (st.st_mode & stat.S_ISVTX
                                           and child_st.st_uid in trust.uids):
                os.close(child)
                raise UnsafePath(errno.EPERM, f"{describe(where, child_st)} is reached "
                                 f"through a directory {reason}: "
                                 f"{describe(os.path.dirname(where) or '/', st)}")
            os.close(fd)
            fd, st = child, child_st
        reason = trust.writers(st)
        if reason is not None:
            raise UnsafePath(errno.EPERM, f"log directory {describe(where, st)} is {reason}"
                             ": another user could plant names sockvisor (root) would "
                             "write to; make it root's or the worker's own, not "
                             "group- or world-writable")
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_entry(dirfd: int, name: str, path: str, trust: Trust) -> None:
    """Refuse an existing `name` that is not a file root may append to."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    _check_file(st, path, trust)


def _check_file(st: os.stat_result, path: str, trust: Trust) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(errno.ELOOP, f"{path} is a symbolic link: sockvisor does not "
                         "write through links in a log folder")
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePath(errno.EISDIR, f"{path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(errno.EPERM, f"{path} is not a regular file")
    if st.st_nlink > 1:
        raise UnsafePath(errno.EPERM, f"{path} has {st.st_nlink} hard links: it may be "
                         "another file's name")
    if st.st_uid not in trust.uids:
        raise UnsafePath(errno.EPERM, f"{path} belongs to {_user(st.st_uid)}, not to "
                         "root or the worker's user")


def open_file(dirfd: int, name: str, path: str, trust: Trust) -> int:
    """Open (or create) `name` in `dirfd` for appending; refuse what is not ours."""
    try:
        fd = os.open(name, _FILE_FLAGS, 0o666, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(errno.ELOOP, f"{path} is a symbolic link: sockvisor does "
                             "not write through links in a log folder") from None
        if exc.errno == errno.ENXIO:   # a FIFO nobody reads, opened O_NONBLOCK
            raise UnsafePath(errno.ENXIO, f"{path} is not a regular file") from None
        raise LogPathError(exc.errno, f"cannot open {path}: {exc.strerror}") from None
    try:
        _check_file(os.fstat(fd), path, trust)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_log_path(path: str, uid: int | None, gid: int | None) -> None:
    """For the config: would `open_file` accept `path` now?  Raises OSError."""
    trust = Trust(uid, gid)
    directory, name = os.path.split(path)
    if not name:
        raise UnsafePath(errno.EISDIR, f"{path} names a directory, not a file")
    dirfd = open_directory(directory or "/", trust)
    try:
        check_entry(dirfd, name, path, trust)
    finally:
        os.close(dirfd)
