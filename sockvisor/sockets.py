"""The listening sockets: bound (or adopted from systemd) once, held for sockvisor's life.

A `ListeningSocket` is the supervisor's own copy of a listening socket.  Workers
get duplicates of its fd; a worker's exit closes only the duplicate, so the accept
queue — and every connection waiting in it — survives crashes, restarts and
reloads.  Only `close()` ends it, and the supervisor calls that at exit or when a
reloaded config no longer wants the address.

Workers are not trusted (DESIGN.md §5), and two kinds of state they can reach are
guarded here:

* **The open file description is shared.**  Every worker's fd 3 is a duplicate of
  our fd, so the file status flags are one and the same for everybody holding the
  socket: a worker that sets O_NONBLOCK on its fd (asyncio, Go's runtime, libuv all
  do) sets it for every other worker of every watcher on that socket, and a plain
  blocking `accept()` loop then gets EAGAIN and dies.  `prepare_for_spawn()` puts
  the flag back to the socket's `blocking` setting right before each fork (one
  fcntl when it is already right).  A worker that changes the flag after others
  were started still changes it for them: that is the kernel's rule, which the
  README states for watchers sharing a socket.
* **`shutdown()` acts on the socket itself, not on a descriptor.**  A worker's
  `shutdown(SHUT_RD)` on a listening TCP socket disconnects it: it leaves LISTEN
  (SO_ACCEPTCONN is 0), the connections queued at that moment are reset, and a
  port the kernel chose (port 0) is released.  `connect()` with AF_UNSPEC does the
  same.  `listen()` again restores it (after binding the same port again if it was
  released).  On a unix socket the shutdown leaves it "listening" but refusing
  every connection for good (ECONNREFUSED, and accept() fails with EINVAL), and no
  listen() clears that: the only repair is a new socket bound at the path.
* **A disconnected TCP socket can be made something else.**  Once out of LISTEN,
  a worker can `connect()` it to any loopback listener: it is then an ordinary
  client connection and listen() fails (EINVAL) for good.  Or, a port 0 socket
  having let its port go, the worker's own bind()/listen() puts it elsewhere.
  Either way the socket is no longer a listener *at the address we bound*
  (`bound_at`, the port the kernel chose included), and a new socket takes its
  place: made by `_new_socket`, as at the start (SO_REUSEADDR, SO_REUSEPORT,
  IPV6_V6ONLY, backlog, blocking), bound at `bound_at`.  The dead socket may still
  hold the port (explicitly bound, or connected from it) with SO_REUSEADDR
  cleared by the worker to keep a new socket out: it is set back through our fd
  first.  A socket the service manager gave us cannot be made again with its
  identity: SocketError says to restart its .socket unit.  The new socket's inode
  is recorded as ours for control/peer.py, as every socket we hand to workers.

  `keep_listening()` checks and repairs; the supervisor runs it on every worker
  exit, before every spawn and on `status`/`listsockets`.  A socket bound anew is
  announced as `socket.NAME.relisten` with `replaced: true`: the workers alive
  then hold the dead socket, and the supervisor has every watcher on it replace
  them (Watcher.socket_replaced: a rolling reload onto the same config) -- a
  worker that survives accept() errors would otherwise serve nothing for ever.

A unix socket's file usually lives in a folder the worker can write
(`/run/app/app.sock`), so the name can be swapped for a symlink at any moment.
Root never changes mode or owner by path: the folder is opened once without
following a symlink, the socket's file is opened relative to it with
O_PATH|O_NOFOLLOW, checked to be the very inode our socket is bound to (the
kernel says which through sock_diag), and chmod/chown go through that fd
(`/proc/self/fd/N` acts on exactly that inode, whatever the name points to later).
(fchmod on the socket's own fd would not do: it changes the sockfs inode, not the
file.)  The socket is bound by its real path, so that getsockname() — in
sockvisor and in every worker — still says where it is; a folder swapped under
that path is caught by the same inode check.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sockvisor.config import SocketConfig
from sockvisor.control import peer

log = logging.getLogger("sockvisor.sockets")


class SocketError(Exception):
    """A socket could not be bound or adopted; the message says which and why."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno   # of the bind() that failed, if that is what failed


@dataclass(eq=False)
class ListeningSocket:
    config: SocketConfig
    sock: socket.socket
    adopted: bool = False          # handed to us by the service manager
    # (st_dev, st_ino) of the file a unix socket we bound is bound to.
    unix_inode: tuple[int, int] | None = field(default=None, repr=False)
    relistened: int = 0            # times a worker's shutdown() was repaired
    broken: str = ""               # why it is out of service and could not be repaired
    # Where an inet socket was bound: a shutdown() may release a port the kernel chose.
    bound_at: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sock.family != socket.AF_UNIX:
            if self.bound_at is None:
                self.bound_at = self.sock.getsockname()
            # Root's socket in a worker's hands: its kernel uid (0) must never
            # vouch for a control client (control/peer.py, step 5).  Every
            # ListeningSocket is made here: bound, adopted, reloaded in, or
            # taken back after an upgrade.  (A unix socket cannot be a TCP peer.)
            peer.shared_by_us(self.sock)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def address(self) -> str:
        """The real bound address (port 0 resolved), as host:port, [v6]:port or a path."""
        return format_address(self.sock.family, self.bound_at or self.sock.getsockname())

    @property
    def listening(self) -> bool:
        return not self.broken

    @property
    def port(self) -> int | None:
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            return self.sock.getsockname()[1]
        return None

    def server_starter_key(self) -> str:
        """The address as Start::Server / go-server-starter write it."""
        if self.sock.family == socket.AF_UNIX:
            return self.sock.getsockname()
        host, port = self.sock.getsockname()[:2]
        if self.sock.family == socket.AF_INET6:
            return f"[{host}]:{port}"
        return str(port) if host == "0.0.0.0" else f"{host}:{port}"

    def set_backlog(self, backlog: int) -> None:
        """listen() again: Linux applies the new backlog to the same queue."""
        self.sock.listen(backlog)

    # ---------------------------------------------------------------- the unix socket's file

    def unix_file(self) -> int:
        """An O_PATH fd of this unix socket's file, checked to be the file we bound
        (the name may have been swapped by anyone who can write its folder).

        Raises SocketError saying what is at the path instead."""
        path = self.config.path
        assert path is not None and self.sock.family == socket.AF_UNIX
        if self.adopted or self.unix_inode is None:
            raise SocketError(f"[socket:{self.name}] {path} was created by the service "
                              "manager (socket activation): its SocketMode=, SocketUser= "
                              "and SocketGroup= decide its mode and owner")
        dir_fd, name = _open_folder(self.config)
        try:
            try:
                fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                raise SocketError(f"[socket:{self.name}] {path} is no longer the socket "
                                  f"sockvisor bound: {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != self.unix_inode:
            os.close(fd)
            raise SocketError(f"[socket:{self.name}] {path} is no longer the socket "
                              f"sockvisor bound (it is now {_describe(st)}); not "
                              "changing its mode or owner")
        return fd

    def change_permissions(self, config: SocketConfig) -> "PermissionChange":
        """Give this unix socket's file `config`'s mode and owner, through its
        checked fd (`unix_file()`), never through a name that may have been
        swapped.  All or nothing: if chmod succeeded and chown failed, the mode is
        put back before SocketError is raised.  The returned change can be undone
        (a later step of the same reloadconfig failed) and must be closed."""
        fd = self.unix_file()
        before = os.fstat(fd)
        try:
            chmod_chown(fd, config.mode, config.owner, config.group)
        except OSError as exc:
            PermissionChange(self.name, fd, before).undo()
            raise SocketError(f"[socket:{self.name}] cannot set mode/owner of "
                              f"{self.config.path}: {exc.strerror}") from None
        return PermissionChange(self.name, fd, before)

    def _unlink_file(self) -> None:
        """Remove the unix socket's file if the name still is the file we bound."""
        try:
            fd = self.unix_file()
        except (SocketError, OSError):
            return
        try:
            dir_fd, name = _open_folder(self.config)
            try:
                os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except (SocketError, OSError):
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self.sock.family == socket.AF_UNIX and not self.adopted:
            # Before closing: while the socket lives, its inode cannot be reused.
            self._unlink_file()
        self.sock.close()

    # ---------------------------------------------------------------- shared state

    def prepare_for_spawn(self) -> None:
        """Right before a fork: O_NONBLOCK back to the configured `blocking`
        (another worker may have set it on the file all of them share)."""
        fd = self.sock.fileno()
        if os.get_blocking(fd) != self.config.blocking:
            os.set_blocking(fd, self.config.blocking)

    def ensure_listening(self) -> str | None:
        """Undo a worker's shutdown(): None if the socket was fine, else what was
        done.  Raises SocketError if it is out of service and cannot be repaired."""
        if self.sock.family == socket.AF_UNIX:
            return self._ensure_unix_listening()
        if self._listening_where_bound():
            return None
        if not self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            try:
                # The kernel let go of a port it had chosen (port 0); an explicitly
                # bound port stays bound and this fails with EINVAL.
                self.sock.bind(self.bound_at)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise SocketError(f"[socket:{self.name}] a worker shut it down and "
                                      f"its port was taken meanwhile: cannot bind "
                                      f"{self.address} again: {exc.strerror}",
                                      exc.errno) from None
            try:
                self.sock.listen(self.config.backlog)
            except OSError:
                pass   # connect()ed by a worker: no listen() brings it back
            if self._listening_where_bound():
                return "listen() again"
        # Not a listener at our address and cannot be made one again: connected
        # somewhere, or listening elsewhere (a worker's bind()/listen() after the
        # kernel let go of a port 0).  A new socket takes its place.
        if self.adopted:
            raise SocketError(f"[socket:{self.name}] a worker took it out of service "
                              f"(it no longer listens on {self.address}, and no "
                              "listen() brings it back) and it came from the service "
                              "manager: restart its .socket unit")
        # The dead socket still holds the port (explicitly bound, or connected from
        # it), and the worker may have cleared SO_REUSEADDR to keep a new socket
        # out: set it back through our fd -- the socket is the same for everybody.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        except OSError:
            pass
        try:
            fresh, _ = _new_socket(self.config, self.bound_at)
        except SocketError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SocketError(f"[socket:{self.name}] a worker took it out of service "
                              f"and a new socket cannot be bound at {self.address}: "
                              f"{why}", exc.errno) from None
        self._swap(fresh)
        return ("bound anew (a worker connect()ed it or moved it: no listen() "
                "brings it back)")

    def _listening_where_bound(self) -> bool:
        """Listening, at the address we bound (host and port, not just a port)?"""
        if not self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        return self.sock.getsockname()[:2] == tuple(self.bound_at[:2])

    def _swap(self, fresh: socket.socket, unix_inode: tuple[int, int] | None = None
              ) -> None:
        """`fresh` (bound, listening) takes the dead socket's place.  Workers still
        holding the old one get nothing from it: the supervisor replaces them
        (the `replaced` flag of `socket.NAME.relisten`, `keep_listening`)."""
        if fresh.family != socket.AF_UNIX:
            peer.shared_by_us(fresh)   # root's, in workers' hands: no credential
        old, self.sock, self.unix_inode = self.sock, fresh, unix_inode
        old.close()

    def _ensure_unix_listening(self) -> str | None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLRDHUP)
        if not any(events & select.POLLRDHUP for _, events in poller.poll(0)):
            return None
        if self.adopted:
            raise SocketError(f"[socket:{self.name}] a worker shut it down (every "
                              f"connection to {self.config.path} is refused) and it came "
                              "from the service manager: restart its .socket unit")
        # No listen() undoes a unix socket's shutdown: bind a new one at the path.
        self._unlink_file()
        fresh, inode = _new_socket(self.config)
        self._swap(fresh, inode)
        return "bound anew (no listen() undoes a unix socket's shutdown)"


class PermissionChange:
    """A unix socket file's mode/owner as they were before `change_permissions`,
    with the checked fd that changed them (kept open until `close` or `undo`)."""

    def __init__(self, name: str, fd: int, before: os.stat_result):
        self.name, self._fd, self._before = name, fd, before

    def undo(self) -> None:
        """Put back exactly what changed (a mode, an owner), through the same fd;
        then close it.  A failure is logged: there is nothing more to undo with."""
        try:
            now = os.fstat(self._fd)
            before = self._before
            mode = stat.S_IMODE(before.st_mode)
            chmod_chown(self._fd, None if stat.S_IMODE(now.st_mode) == mode else mode,
                         None if now.st_uid == before.st_uid else before.st_uid,
                         None if now.st_gid == before.st_gid else before.st_gid)
        except OSError as exc:
            log.error("socket %s: cannot put back the mode/owner of its file: %s",
                      self.name, exc.strerror)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def format_address(family: int, sockname) -> str:
    if family == socket.AF_UNIX:
        return sockname if isinstance(sockname, str) else sockname.decode(errors="replace")
    if family == socket.AF_INET6:
        return f"[{sockname[0]}]:{sockname[1]}"
    return f"{sockname[0]}:{sockname[1]}"


def bind(config: SocketConfig) -> ListeningSocket:
    """Create, bind and listen; raise SocketError naming the socket on failure."""
    sock, inode = _new_socket(config)
    listening = ListeningSocket(config, sock, unix_inode=inode)
    log.info("socket %s listening on %s", config.name, listening.address)
    return listening


def _new_socket(config: SocketConfig, address: Any = None
                ) -> tuple[socket.socket, tuple[int, int] | None]:
    """A socket as `config` says, bound and listening: at `address` if given (an
    inet socket's earlier address, the port the kernel chose included), else the
    config's.  With the unix file's (st_dev, st_ino), or None.  The one place
    sockets are made: the first bind and every repair set the same options."""
    sock = socket.socket(config.family, socket.SOCK_STREAM)
    try:
        if config.is_unix:
            inode = _bind_unix(sock, config)
        else:
            inode = None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if config.family == socket.AF_INET6 and config.host == "::":
                # Explicit, not the sysctl's whim: "::" means both families.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind(address if address is not None else (config.host, config.port))
            except OSError as exc:
                raise SocketError(_bind_error(config, exc), exc.errno) from None
        sock.listen(config.backlog)
        sock.setblocking(config.blocking)
    except BaseException:
        sock.close()
        raise
    return sock, inode


def _bind_error(config: SocketConfig, exc: OSError) -> str:
    hint = ""
    if exc.errno == errno.EACCES and (config.port or 0) < 1024:
        hint = " (ports below 1024 need root, or systemd socket activation)"
    elif exc.errno == errno.EADDRINUSE:
        hint = " (another process listens there)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = " (no interface has that address)"
    return f"[socket:{config.name}] cannot bind {config.describe()}: {exc.strerror}{hint}"


_O_PATH = getattr(os, "O_PATH", 0o10000000)   # Linux


def _open_folder(config: SocketConfig) -> tuple[int, str]:
    """An fd of the socket path's folder, opened without following a symlink at
    its last component, and the socket's name in it."""
    assert config.path is not None
    folder, name = os.path.split(config.path)
    try:
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
    except OSError as exc:
        hint = " (a symlink: name the real folder)" if exc.errno == errno.ELOOP else ""
        raise SocketError(f"[socket:{config.name}] cannot open the folder of "
                          f"{config.path}: {exc.strerror}{hint}") from None
    return fd, name


def _describe(st: os.stat_result) -> str:
    kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else
            "a socket" if stat.S_ISSOCK(st.st_mode) else
            "a folder" if stat.S_ISDIR(st.st_mode) else
            "a regular file" if stat.S_ISREG(st.st_mode) else "a special file")
    return f"{kind} owned by uid {st.st_uid}"


def chmod_chown(fd: int, mode: int | None, owner: int | None, group: int | None) -> None:
    """chmod/chown the inode an O_PATH fd refers to.  /proc/self/fd/N is a magic
    link to that very inode: a later swap of the name cannot redirect it."""
    target = f"/proc/self/fd/{fd}"
    if mode is not None:
        os.chmod(target, mode)
    if owner is not None or group is not None:
        os.chown(target, -1 if owner is None else owner, -1 if group is None else group)


def _bind_unix(sock: socket.socket, config: SocketConfig) -> tuple[int, int]:
    path = config.path
    assert path is not None
    dir_fd, name = _open_folder(config)
    try:
        _remove_stale(config, dir_fd, name)
        # Bind with a restrictive umask so the file never exists with looser
        # permissions than configured, then set the configured mode and owner.
        # bind() itself never follows a symlink: anything at the name is EADDRINUSE.
        old_umask = os.umask(0o177) if config.mode is not None else None
        try:
            sock.bind(path)
        except OSError as exc:
            raise SocketError(f"[socket:{config.name}] cannot bind {path}: "
                              f"{exc.strerror}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        fd = _bound_file(sock, config, dir_fd, name)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        try:
            chmod_chown(fd, config.mode, config.owner, config.group)
        except OSError as exc:
            listening = ListeningSocket(config, sock, unix_inode=(st.st_dev, st.st_ino))
            listening._unlink_file()
            raise SocketError(f"[socket:{config.name}] cannot set mode/owner of {path}: "
                              f"{exc.strerror}") from None
        return (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def _remove_stale(config: SocketConfig, dir_fd: int, name: str) -> None:
    """A socket file nobody listens on (left by a killed sockvisor) is removed;
    anything else at the name is refused, never followed."""
    try:
        fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketError(f"[socket:{config.name}] {config.path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"[socket:{config.name}] {config.path} exists and is not "
                              f"a socket ({_describe(st)}); not replacing it")
        # Connect through the fd: the probe reaches exactly the file we looked at.
        if _unix_socket_in_use(f"/proc/self/fd/{fd}"):
            raise SocketError(f"[socket:{config.name}] {config.path}: something is "
                              "listening on it already")
    finally:
        os.close(fd)
    log.info("socket %s: removing stale socket file %s", config.name, config.path)
    try:
        os.unlink(name, dir_fd=dir_fd)   # a name in dir_fd: nothing is followed
    except FileNotFoundError:
        pass


def _bound_file(sock: socket.socket, config: SocketConfig, dir_fd: int, name: str) -> int:
    """An O_PATH fd of the file `sock` was just bound to, found by name in its
    folder and checked: a socket we own, and (where the kernel can say) the very
    inode the socket is bound to.  Anything else means the name or the folder
    was swapped between bind() and now: refuse, touch nothing."""
    def refuse(what: str) -> SocketError:
        return SocketError(f"[socket:{config.name}] {config.path} was replaced right "
                           f"after sockvisor bound it ({what}); not setting its mode "
                           "or owner")
    try:
        fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise refuse(exc.strerror) from None
    st = os.fstat(fd)
    bound = _bound_inode(sock)
    problem = ""
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        problem = f"it is now {_describe(st)}"
    elif bound is not None and bound != st.st_ino & 0xFFFFFFFF:
        problem = "it is now another socket"
    if problem:
        os.close(fd)
        raise refuse(problem)
    return fd


# sock_diag (NETLINK_SOCK_DIAG, linux/unix_diag.h): the inode of the file a unix
# socket is bound to.  Not every kernel has unix_diag; then the checks above
# (a socket, owned by us, at the name in the folder we opened) stand alone.
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_sock_diag_unavailable = False


def _bound_inode(sock: socket.socket) -> int | None:
    """The (32-bit) inode number of the file `sock` is bound to, or None."""
    global _sock_diag_unavailable
    if _sock_diag_unavailable:
        return None
    socket_inode = os.fstat(sock.fileno()).st_ino
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF,
                          socket_inode & 0xFFFFFFFF, _UDIAG_SHOW_VFS,
                          0xFFFFFFFF, 0xFFFFFFFF)   # no cookie
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as netlink:
            netlink.settimeout(1.0)
            netlink.send(header + request)
            reply = netlink.recv(65536)
    except OSError as exc:
        log.debug("sock_diag unavailable (%s): unix socket files are checked "
                  "without it", exc)
        _sock_diag_unavailable = True
        return None
    length, kind = struct.unpack_from("=IH", reply)
    if kind == _NLMSG_ERROR:
        log.debug("sock_diag: error %d for unix sockets: checked without it",
                  struct.unpack_from("=i", reply, 16)[0])
        _sock_diag_unavailable = True
        return None
    offset = 16 + 16   # nlmsghdr, unix_diag_msg
    while offset + 4 <= min(length, len(reply)):
        size, attribute = struct.unpack_from("=HH", reply, offset)
        if size < 4:
            break
        if attribute == _UNIX_DIAG_VFS and size >= 12:
            return struct.unpack_from("=I", reply, offset + 4)[0]
        offset += (size + 3) & ~3
    return None


def _unix_socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True   # e.g. EAGAIN: a full backlog still means a listener
    else:
        return True
    finally:
        probe.close()


def keep_listening(sockets: Iterable[ListeningSocket],
                   publish: Callable[[str, dict[str, Any]], None]) -> None:
    """Check and repair the listen state of `sockets` (see the module docstring);
    log and publish `socket.NAME.relisten` for each repair, and
    `socket.NAME.broken` once when one cannot be repaired."""
    for listening in sockets:
        if listening.sock.fileno() < 0:
            continue
        fd_before = listening.fd
        try:
            repaired = listening.ensure_listening()
        except SocketError as exc:
            if listening.broken != str(exc):
                listening.broken = str(exc)
                log.error("%s", exc)
                publish(f"socket.{listening.name}.broken",
                        {"name": listening.name, "address": listening.address,
                         "reason": str(exc), "errno": exc.errno})
            continue
        except OSError as exc:   # not a worker's doing; say so, keep going
            log.error("socket %s: checking its listen state failed: %s", listening.name,
                      exc)
            continue
        if repaired is None:
            continue
        listening.broken = ""
        listening.relistened += 1
        log.warning("socket %s (%s) was shut down by a worker and stopped listening: "
                    "%s (repair #%d)", listening.name, listening.address, repaired,
                    listening.relistened)
        publish(f"socket.{listening.name}.relisten",
                {"name": listening.name, "address": listening.address, "how": repaired,
                 "relistened": listening.relistened,
                 # A new socket (unix): whoever keeps a copy of the fd must take it.
                 "replaced": listening.fd != fd_before})


def take_back(config: SocketConfig, entry: dict[str, Any]) -> ListeningSocket:
    """A socket of the table an upgrade handed over (handover.py, `sockets`): the
    fd as it is, with what it was (adopted, the unix file, where it was bound --
    a worker may have the socket elsewhere right now -- and its repairs)."""
    bound_at = entry.get("bound_at")
    return ListeningSocket(
        config, socket.socket(fileno=entry["fd"]), adopted=entry["adopted"],
        unix_inode=tuple(entry["unix_inode"]) if entry["unix_inode"] else None,
        relistened=entry["relistened"],
        bound_at=tuple(bound_at) if bound_at else None)


def adopt(config: SocketConfig, fd: int) -> ListeningSocket:
    """Take over a listening socket the service manager passed us (LISTEN_FDS).

    The socket must be what the config describes — same family, a listening
    stream socket, the same address (port 0 in the config accepts any port) —
    otherwise starting would silently serve somewhere else than configured.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketError(f"[socket:{config.name}] fd {fd} from the service manager is "
                          f"not a socket: {exc.strerror}") from None
    problem = _adoption_mismatch(config, sock)
    if problem:
        try:
            actual = format_address(sock.family, sock.getsockname())
        except OSError:
            actual = "?"
        if (sock.family == socket.AF_INET6 and actual.startswith("[::]:")
                and config.family == socket.AF_INET):
            # systemd's ListenStream=PORT (and systemd-socket-activate -l PORT).
            problem += ("; ListenStream=PORT is [::]:PORT (every address, IPv4 too), "
                        "which the section names with host = ::")
        sock.detach()
        raise SocketError(f"[socket:{config.name}] the socket passed by the service "
                          f"manager (fd {fd}, {actual}) does not match the config "
                          f"({config.describe()}): {problem}")
    sock.set_inheritable(False)
    sock.setblocking(config.blocking)
    listening = ListeningSocket(config, sock, adopted=True)
    log.info("socket %s adopted from the service manager: %s", config.name,
             listening.address)
    return listening


def _adoption_mismatch(config: SocketConfig, sock: socket.socket) -> str:
    if sock.type != socket.SOCK_STREAM:
        return "not a stream socket"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "not listening"
    if sock.family != config.family:
        return f"family {sock.family.name}, config wants {config.family.name}"
    actual = sock.getsockname()
    if config.is_unix:
        if actual != config.path:
            return f"path {actual}, config wants {config.path}"
        return ""
    host, port = actual[:2]
    if config.port and port != config.port:
        return f"port {port}, config wants {config.port}"
    if not _same_host(host, config.host or ""):
        return f"address {host}, config wants {config.host}"
    return ""


def _same_host(actual: str, wanted: str) -> bool:
    if actual == wanted:
        return True
    try:
        family = socket.AF_INET6 if ":" in actual else socket.AF_INET
        return socket.inet_pton(family, actual) == socket.inet_pton(family, wanted)
    except OSError:
        return False


def listeners_at(family: int, port: int) -> set[int]:
    """The inodes of the TCP sockets listening on `port` (any address) in our
    network namespace, read from /proc/net/tcp{,6}: who holds a port our
    socket cannot be bound at again (the supervisor's `_evict_squatter`)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)   # the header
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != "0A":   # 0A: LISTEN
                        continue
                    if int(fields[1].rpartition(":")[2], 16) == port:
                        found.add(int(fields[9]))
        except OSError:
            continue
    return found
