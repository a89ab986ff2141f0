"""The listening sockets: bound (or adopted from systemd) once, held for sockvisor's life.

A `ListeningSocket` is the supervisor's own copy of a listening socket.  Workers
get duplicates of its fd; a worker's exit closes only the duplicate, so the accept
queue — and every connection waiting in it — survives crashes, restarts and
reloads.  Only `close()` ends it, and the supervisor calls that at exit or when a
reloaded config no longer wants the address.

The socket's file is shared with every worker, so its O_NONBLOCK flag is shared
too: by default it is cleared, so a worker's plain blocking `accept()` loop works.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass, field

from sockvisor.config import SocketConfig

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
    unix_inode: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def address(self) -> str:
        """The real bound address (port 0 resolved), as host:port, [v6]:port or a path."""
        return format_address(self.sock.family, self.sock.getsockname())

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

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        path = self.config.path if self.sock.family == socket.AF_UNIX else None
        self.sock.close()
        if path and not self.adopted and self.unix_inode is not None:
            # Remove the file only if it is still the one we created.
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == self.unix_inode:
                    os.unlink(path)
            except OSError:
                pass


def format_address(family: int, sockname) -> str:
    if family == socket.AF_UNIX:
        return sockname if isinstance(sockname, str) else sockname.decode(errors="replace")
    if family == socket.AF_INET6:
        return f"[{sockname[0]}]:{sockname[1]}"
    return f"{sockname[0]}:{sockname[1]}"


def bind(config: SocketConfig) -> ListeningSocket:
    """Create, bind and listen; raise SocketError naming the socket on failure."""
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
                sock.bind((config.host, config.port))
            except OSError as exc:
                raise SocketError(_bind_error(config, exc), exc.errno) from None
        sock.listen(config.backlog)
        sock.setblocking(config.blocking)
    except BaseException:
        sock.close()
        raise
    listening = ListeningSocket(config, sock, unix_inode=inode)
    log.info("socket %s listening on %s", config.name, listening.address)
    return listening


def _bind_error(config: SocketConfig, exc: OSError) -> str:
    hint = ""
    if exc.errno == errno.EACCES and (config.port or 0) < 1024:
        hint = " (ports below 1024 need root, or systemd socket activation)"
    elif exc.errno == errno.EADDRINUSE:
        hint = " (another process listens there)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = " (no interface has that address)"
    return f"[socket:{config.name}] cannot bind {config.describe()}: {exc.strerror}{hint}"


def _bind_unix(sock: socket.socket, config: SocketConfig) -> tuple[int, int]:
    path = config.path
    assert path is not None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"[socket:{config.name}] {path} exists and is not a socket; "
                              "not replacing it")
        if _unix_socket_in_use(path):
            raise SocketError(f"[socket:{config.name}] {path}: something is listening on "
                              "it already")
        log.info("socket %s: removing stale socket file %s", config.name, path)
        os.unlink(path)
    # Bind with a restrictive umask so the file never exists with looser permissions
    # than configured, then set the configured mode and owner.
    old_umask = os.umask(0o177) if config.mode is not None else None
    try:
        sock.bind(path)
    except OSError as exc:
        raise SocketError(f"[socket:{config.name}] cannot bind {path}: {exc.strerror}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    try:
        if config.mode is not None:
            os.chmod(path, config.mode)
        if config.owner is not None or config.group is not None:
            os.chown(path, -1 if config.owner is None else config.owner,
                     -1 if config.group is None else config.group)
    except OSError as exc:
        os.unlink(path)
        raise SocketError(f"[socket:{config.name}] cannot set mode/owner of {path}: "
                          f"{exc.strerror}") from None
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


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
