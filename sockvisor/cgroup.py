"""A cgroup v2 per worker: everything a worker started ends with it.

A process group is not a container: a worker's descendant can `setsid()` (every
daemon does) and leave it, and then neither `killpg` nor PR_SET_PDEATHSIG (which
covers the worker only) reaches it.  A cgroup is: a process cannot leave the
cgroup it was born in unless root moves it, and `cgroup.kill` (Linux 5.14)
SIGKILLs everything in it, forks in flight included.  That is systemd's
`KillMode=control-group`, which is what this module gives each worker.

Layout.  sockvisor stays in the cgroup it was started in, S, and makes one
directory per run, `S/sockvisor.PID`, with one leaf per worker,
`S/sockvisor.PID/WATCHER.N`.  Under systemd S is the service's cgroup, so
systemd's own stop (or crash clean-up) still covers every worker's leaf.
sockvisor does not move itself into a leaf (`S/supervisor`): the cgroup v2
"no internal processes" rule only forbids processes next to child cgroups when
the parent *enables controllers* for its children, and sockvisor enables none
(it contains, it does not limit resources).  A process sitting in S proves S
enables none.  Moving sockvisor would also change the cgroup systemd knows as
the main process's and leave a directory that only sockvisor could clean up.

When.  `auto` (the default) uses cgroups where they can work and may: a cgroup2
mount, S writable by us (root), and — on a host booted with systemd — S
delegated to us (`Delegate=yes`, which systemd >= 251 marks with the
`trusted.delegate` attribute); without that systemd owns S's subtree.  Whether
a process can really be moved in is tried once at start with a short-lived
child.  `on` insists (no systemd check; start fails if it cannot work), `off`
never.  The mechanism in use is logged once at start.

Placing a worker.  The parent makes the leaf and opens its `cgroup.procs`
before fork; the child writes "0" (itself) into it first thing after fork,
before it drops privileges or execs anything, so nothing the worker runs ever
starts outside it (CLONE_INTO_CGROUP would avoid even that write, but Python's
fork cannot pass it).  A failure there fails the spawn like a failed exec.  The
write costs the child one RCU grace period (the kernel's threadgroup rwsem), a few
ms before its exec, unless the cgroup2 mount has `favordynmods`; the parent does
not wait for it.

Killing and removing.  When the worker has exited — on any exit — its leaf is
killed (`cgroup.kill`; before 5.14: freeze if possible, then SIGKILL each pid
in `cgroup.procs` until none is new).  The leaf can only be removed once it is
empty; its `cgroup.events` says `populated 0` then, and the kernel reports each
change of that file to inotify, so removal waits for an event, never polls.
At sockvisor's exit every leaf left is killed, awaited (bounded), and the run's
directory removed.  A SIGKILLed sockvisor cannot clean up: its workers die of
PDEATHSIG, but what they started stays in its directory.  Under systemd the
service's own clean-up covers it; elsewhere the next sockvisor started in S does:
each run's directory is tagged (xattr `trusted.sockvisor`: pid namespace, pid,
start time of its owner), and a directory whose owner is provably gone — same pid
namespace as ours, and that pid no longer exists or is another process — is
killed and removed at start.  A directory without the tag, or from another pid
namespace, is never touched.

Paths.  Everything here lives under the cgroup mount, which only root can
change (we never delegate the leaves to the worker's user): the leaves are
made and removed relative to a directory fd of the run's directory.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import select
import signal
import struct
import time
from dataclasses import dataclass

import _signal

log = logging.getLogger("sockvisor.cgroup")

_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")
_OWNER_XATTR = "trusted.sockvisor"
SWEEP_TIMEOUT = 2.0        # start-up: how long to wait for a dead run's leftovers to die
_KILL_ROUNDS = 16          # fallback kill: rounds of "read cgroup.procs, SIGKILL the new"
_libc = ctypes.CDLL(None, use_errno=True)


class CgroupUnavailable(Exception):
    """Why cgroups cannot be used here (said once in the log)."""


@dataclass(frozen=True)
class _Mount:
    path: str           # where the cgroup2 hierarchy is mounted
    own: str            # our cgroup's directory in it


def _find_own_cgroup() -> _Mount:
    """Our cgroup v2 directory: the `0::PATH` line of /proc/self/cgroup, under the
    cgroup2 mount whose root contains it (pure v2, or hybrid's `unified`)."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc/self/cgroup: {exc.strerror}") from None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        raise CgroupUnavailable("no cgroup v2 hierarchy (cgroup v1 only)")
    if own.endswith(" (deleted)") or not own.startswith("/"):
        raise CgroupUnavailable(f"our cgroup is not usable: {own!r}")
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] != "cgroup2":
                continue
            root, mount_point = _unescape(fields[3]), _unescape(fields[4])
            if own == root or own.startswith(root.rstrip("/") + "/"):
                relative = own[len(root.rstrip("/")):].lstrip("/")
                return _Mount(mount_point, os.path.join(mount_point, relative)
                              if relative else mount_point)
    raise CgroupUnavailable("no cgroup2 file system mounted where our cgroup is")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _systemd_booted() -> bool:
    return os.path.isdir("/run/systemd/system")


def _delegated(path: str) -> bool:
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) in (b"1", b"1\n"):
                return True
        except OSError:
            pass
    return False


def setup(mode: str) -> tuple["CgroupTree | None", str]:
    """The run's cgroup tree per `mode`, or None and why not (for the log).

    Raises CgroupUnavailable only when `mode` is `on` and cgroups cannot work.
    """
    if mode == "off":
        return None, "cgroup = off"
    try:
        mount = _find_own_cgroup()
        if mode == "auto" and _systemd_booted() and mount.own.rstrip("/") != \
                mount.path.rstrip("/") and not _delegated(mount.own):
            raise CgroupUnavailable(
                f"systemd has not delegated {mount.own} to sockvisor (Delegate=yes)")
        return CgroupTree.create(mount.own), ""
    except OSError as exc:   # /proc or the cgroup file system said no
        if mode == "on":
            raise CgroupUnavailable(str(exc)) from None
        return None, str(exc)
    except CgroupUnavailable as exc:
        if mode == "on":
            raise
        return None, str(exc)


class CgroupTree:
    """This run's directory `S/sockvisor.PID` and the workers' leaves in it."""

    def __init__(self, path: str, dir_fd: int, has_kill: bool):
        self.path = path
        self.dir_fd = dir_fd
        self.has_kill = has_kill
        self.leaves: dict[str, WorkerCgroup] = {}
        self._serial = 0
        self._inotify: int | None = None
        self._watches: dict[int, WorkerCgroup] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls, parent: str) -> "CgroupTree":
        _sweep_dead_runs(parent)
        base = f"sockvisor.{os.getpid()}"
        for attempt in range(100):
            name = base if attempt == 0 else f"{base}.{attempt}"
            path = os.path.join(parent, name)
            try:
                os.mkdir(path, 0o755)
                break
            except FileExistsError:
                continue   # a SIGKILLed predecessor that had our pid: not ours to touch
            except OSError as exc:
                raise CgroupUnavailable(f"cannot create a cgroup in {parent}: "
                                        f"{exc.strerror}") from None
        else:
            raise CgroupUnavailable(f"cannot create a cgroup in {parent}: all names taken")
        try:
            os.setxattr(path, _OWNER_XATTR, _owner_tag(os.getpid()))
        except OSError:
            pass   # no xattrs here: a crash's leftovers are then not swept by the next run
        try:
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            _rmdir_quietly(path)
            raise CgroupUnavailable(f"cannot open {path}: {exc.strerror}") from None
        tree = cls(path, dir_fd, os.path.exists(os.path.join(path, "cgroup.kill")))
        try:
            tree._probe()
        except CgroupUnavailable:
            tree._close_fds()
            _rmdir_quietly(path)
            raise
        return tree

    @classmethod
    def adopt(cls, path: str, leaves: list[str]) -> "CgroupTree":
        """This run's directory again, after an upgrade exec'd sockvisor in place
        (handover.py): nothing is swept or created -- the owner tag (our pid and
        its start time, which exec does not change) is still right -- and the
        running workers' `leaves` are ours again.  OSError if it is gone."""
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        tree = cls(path, dir_fd, os.path.exists(os.path.join(path, "cgroup.kill")))
        for name in leaves:
            tree.leaves[name] = WorkerCgroup(tree, name, None)
            serial = name.rpartition(".")[2]
            if serial.isdecimal():
                tree._serial = max(tree._serial, int(serial))
        return tree

    @property
    def description(self) -> str:
        how = "cgroup.kill" if self.has_kill else "SIGKILL to each pid in cgroup.procs"
        return f"cgroup v2 at {self.path} (a cgroup per worker, {how})"

    def _probe(self) -> None:
        """Move a short-lived child into a leaf, as every spawn will: the one way to
        know the kernel lets us (delegation rules, user namespaces, read-only mounts)."""
        try:
            leaf = self.new_leaf("probe")
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create a cgroup in {self.path}: "
                                    f"{exc.strerror}") from None
        try:
            old_mask = _signal.pthread_sigmask(signal.SIG_BLOCK, _all_signals())
            try:
                pid = os.fork()
                if pid == 0:   # child: signals stay blocked, no Python handler runs here
                    code = 255
                    try:
                        place_self(leaf.procs_fd)
                        code = 0
                    except OSError as exc:
                        code = min(exc.errno or 255, 255)
                    finally:
                        os._exit(code)
            finally:
                _signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            leaf.close_procs_fd()
            # The reaper is not running yet: this is the only child there is to wait for.
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise CgroupUnavailable(
                    f"cannot move a process into {leaf.path}: "
                    f"{os.strerror(code) if 0 < code < 255 else f'status {code}'}")
        finally:
            leaf.close_procs_fd()
            self.leaves.pop(leaf.name, None)
            try:
                os.rmdir(leaf.name, dir_fd=self.dir_fd)
            except OSError:
                pass

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch leaves being emptied (inotify on cgroup.events) from the event loop."""
        self._loop = loop
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.warning("inotify unavailable (%s): emptied worker cgroups are removed "
                        "at exit only", os.strerror(ctypes.get_errno()))
            return
        self._inotify = fd
        loop.add_reader(fd, self._on_inotify)

    def new_leaf(self, watcher: str) -> "WorkerCgroup":
        """A leaf for a worker about to be forked, its cgroup.procs open for the child."""
        self._serial += 1
        name = f"{watcher}.{self._serial}"
        os.mkdir(name, 0o755, dir_fd=self.dir_fd)
        try:
            procs_fd = os.open(f"{name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC,
                               dir_fd=self.dir_fd)
        except OSError:
            _rmdir_quietly(name, self.dir_fd)
            raise
        leaf = WorkerCgroup(self, name, procs_fd)
        self.leaves[name] = leaf
        return leaf

    # ---- removal once empty

    def _watch(self, leaf: "WorkerCgroup") -> bool:
        if self._inotify is None:
            return False
        wd = _libc.inotify_add_watch(self._inotify,
                                     os.fsencode(f"{leaf.path}/cgroup.events"), _IN_MODIFY)
        if wd < 0:
            return False
        self._watches[wd] = leaf
        leaf.watch = wd
        return True

    def _unwatch(self, leaf: "WorkerCgroup") -> None:
        if leaf.watch is not None:
            self._watches.pop(leaf.watch, None)
            if self._inotify is not None:
                _libc.inotify_rm_watch(self._inotify, leaf.watch)
            leaf.watch = None

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        changed: set[WorkerCgroup] = set()
        while True:
            try:
                data = os.read(self._inotify, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                leaf = self._watches.get(wd)
                if leaf is None:
                    continue
                if mask & _IN_IGNORED:   # the leaf went away
                    self._watches.pop(wd, None)
                    leaf.watch = None
                changed.add(leaf)
        for leaf in changed:
            leaf.try_remove()

    # ---- the end of the run

    async def close(self, timeout: float = 5.0) -> None:
        """Kill every leaf still there, wait (bounded) until they are gone, remove
        the run's directory."""
        leaves = list(self.leaves.values())
        for leaf in leaves:
            leaf.release()
        pending = [leaf.removed for leaf in leaves if not leaf.removed.done()]
        if pending:
            done, not_done = await asyncio.wait(pending, timeout=timeout)
            if not_done:
                log.warning("%d worker cgroup(s) still not empty %gs after SIGKILL: "
                            "left in %s", len(not_done), timeout, self.path)
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify)
        self._close_fds()
        if not self.leaves:
            try:
                os.rmdir(self.path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.path, exc.strerror)

    def close_unused(self) -> None:
        """Start-up failed before any worker: remove the run's directory."""
        self._close_fds()
        _rmdir_quietly(self.path)

    def _close_fds(self) -> None:
        for leaf in list(self.leaves.values()):
            leaf.close_procs_fd()
        if self._inotify is not None:
            os.close(self._inotify)
            self._inotify = None
            self._watches.clear()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class WorkerCgroup:
    """One worker's leaf, from before its fork until it is removed."""

    def __init__(self, tree: CgroupTree, name: str, procs_fd: int):
        self.tree = tree
        self.name = name
        self.procs_fd: int | None = procs_fd
        self.watch: int | None = None
        self.released = False
        self.killed = False
        self.removed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<WorkerCgroup {self.path}>"

    @property
    def path(self) -> str:
        return os.path.join(self.tree.path, self.name)

    def close_procs_fd(self) -> None:
        """The child has its copy (or there is no child): the parent's goes."""
        if self.procs_fd is not None:
            os.close(self.procs_fd)
            self.procs_fd = None

    def kill(self) -> None:
        """SIGKILL everything in the leaf."""
        if self.tree.dir_fd < 0 or self.removed.done():
            return
        self.killed = True
        if self.tree.has_kill:
            try:
                self._write("cgroup.kill", b"1")
                return
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("cannot write %s/cgroup.kill: %s", self.path, exc.strerror)
                    return
        self._kill_each()

    def _kill_each(self) -> None:
        """Before cgroup.kill: freeze (Linux 5.2) so nothing forks meanwhile, SIGKILL
        every pid listed, until a read lists no pid not already killed.  A frozen
        task still dies of SIGKILL.  Without a freezer a fork racing the reads may
        need another round, hence several.  (A pid read here could in principle
        exit and be reused before the kill; cgroup.kill has no such window.)"""
        frozen = False
        try:
            self._write("cgroup.freeze", b"1")
            frozen = True
        except OSError:
            pass
        killed: set[int] = set()
        try:
            for _ in range(_KILL_ROUNDS):
                try:
                    fd = os.open(f"{self.name}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC,
                                 dir_fd=self.tree.dir_fd)
                except FileNotFoundError:
                    return
                try:
                    text = _read_all(fd)
                finally:
                    os.close(fd)
                pids = {int(word) for word in text.split()} - killed
                if not pids:
                    return
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed |= pids
        finally:
            if frozen:
                try:
                    self._write("cgroup.freeze", b"0")
                except OSError:
                    pass

    def release(self) -> None:
        """The worker has been reaped: kill what is left, remove the leaf once empty."""
        self.close_procs_fd()
        if self.removed.done():
            return
        self.released = True
        if not self.killed:
            self.kill()   # (cgroup.kill also got any fork that was in flight)
        if not self.try_remove() and self.watch is None:
            if self.tree._watch(self):
                self.try_remove()   # it may have emptied before the watch was in place

    def try_remove(self) -> bool:
        if self.removed.done():
            return True
        if not self.released or self.tree.dir_fd < 0:
            return False
        try:
            os.rmdir(self.name, dir_fd=self.tree.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove %s: %s", self.path, exc.strerror)
            elif not self.tree.has_kill:
                self._kill_each()   # a fork may have raced the last round
            return False
        self.tree._unwatch(self)
        self.tree.leaves.pop(self.name, None)
        self.removed.set_result(None)
        return True

    async def wait_removed(self, timeout: float) -> None:
        """After `release`: until the leaf is empty and removed, at most `timeout`.
        Without inotify nothing would tell us: then not at all."""
        if self.removed.done() or self.tree._inotify is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.removed), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: processes still there %gs after SIGKILL (stuck in the "
                        "kernel?); removed when they are gone", self.path, timeout)

    def discard(self) -> None:
        """Fork failed: nothing was ever in the leaf."""
        self.release()

    def _write(self, name: str, data: bytes) -> None:
        fd = os.open(f"{self.name}/{name}", os.O_WRONLY | os.O_CLOEXEC,
                     dir_fd=self.tree.dir_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _owner_tag(pid: int) -> bytes:
    """Who owns a run's directory, in a form that survives pid reuse."""
    namespace = os.stat("/proc/self/ns/pid").st_ino
    return f"{namespace}:{pid}:{_start_time(pid)}".encode()


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[19].decode()   # field 22: starttime


def _sweep_dead_runs(parent: str) -> None:
    """Kill and remove the directories of runs whose sockvisor is gone (SIGKILLed)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
        entries = [e for e in os.scandir(parent)
                   if e.name.startswith("sockvisor.") and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        try:
            tag = os.getxattr(entry.path, _OWNER_XATTR).decode()
        except OSError:
            continue
        owner_ns, _, rest = tag.partition(":")
        pid, _, start = rest.partition(":")
        if owner_ns != namespace or not pid.isdecimal() or \
                _start_time(int(pid)) == (start if start != "None" else None):
            continue   # alive, or not ours to judge
        try:
            with open(os.path.join(entry.path, "cgroup.kill"), "wb") as handle:
                handle.write(b"1")
        except OSError:
            pass
        # Wait (bounded) for the killed to be gone: the ports they hold are about
        # to be bound.  Start-up has nothing else to do yet.
        _wait_unpopulated(entry.path, SWEEP_TIMEOUT)
        removed = True
        for directory, subdirectories, _files in os.walk(entry.path, topdown=False):
            try:
                os.rmdir(directory)
            except OSError:
                removed = False   # still dying: the next start removes it
        log.warning("sockvisor %s is gone without cleaning up: %s %s", pid, entry.path,
                    "killed and removed" if removed else "killed; removed later")


def _wait_unpopulated(path: str, timeout: float) -> bool:
    """Block until `path`'s cgroup.events says `populated 0`, at most `timeout`.
    The kernel flags a change of that file as POLLPRI."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while True:
            if b"populated 0" in os.pread(fd, 4096, 0):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(remaining * 1000)
    finally:
        os.close(fd)


def place_self(procs_fd: int) -> None:
    """In a freshly forked child: move this process into the cgroup whose
    cgroup.procs `procs_fd` is ("0" is the writer itself)."""
    os.write(procs_fd, b"0")


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks).decode()
        chunks.append(chunk)


def _rmdir_quietly(path: str, dir_fd: int | None = None) -> None:
    try:
        os.rmdir(path, dir_fd=dir_fd)
    except OSError:
        pass


def _all_signals() -> set[int]:
    return {int(s) for s in signal.valid_signals()} - {signal.SIGKILL, signal.SIGSTOP}
