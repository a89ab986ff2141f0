"""Who is on the other end of a loopback TCP connection: the kernel's answer.

A loopback tcp:// control endpoint (Circus's default, `tcp://127.0.0.1:5555`) can
be reached by every local user, so the port is no credential.  What is: the uid
the kernel records on the *peer's* socket (the user whose process created it),
which `ss -e` shows.  We ask for it the way `ss` does -- sock_diag over netlink
(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY with an inet_diag_req_v2) -- but as an
exact lookup of one 4-tuple, not a dump.

How it is used (relay.py): sockvisor itself accepts connections on a loopback
tcp:// endpoint and judges each one, once, on the accepted socket it holds --
a connection whose peer cannot change while we hold it -- before carrying it to
the ipc endpoint of the client's rights.  `peer_uid`
1. reads the 4-tuple from the socket (getsockname/getpeername) and checks
   that both ends are loopback addresses (127/8, ::1, or IPv4-mapped 127/8);
2. looks up *our* end by that 4-tuple and checks it is the very socket we hold
   (same inode) and still ESTABLISHED;
3. looks up the *peer's* end (the reversed 4-tuple) and takes its uid, only if
   that socket is ESTABLISHED and its 4-tuple is exactly the one asked for;
4. looks up our end again: still ESTABLISHED means the peer did not close (and
   its port could not be handed to someone else) while we looked.

5. refuses a peer socket that sockvisor itself created for others to use:
   the listening sockets it binds or adopts and hands to workers (fd 3…).
   Their kernel uid is root's, but a worker holding one can take it out of
   LISTEN (connect() with AF_UNSPEC) and connect() it to this port: its peer
   uid would read 0 and a `nobody` worker would get owner rights.  sockets.py
   records the inode of every such socket (`shared_by_us`), for sockvisor's
   life -- retired ones too, a worker may still hold one (or have passed it to
   another process of its user) -- and across upgrades (the new process cannot
   find a closed socket's inode again: the state carries them), and a peer
   whose socket has one of those inodes is judged a stranger.  (A connection a
   worker accepts is not one: the kernel gives it the acceptor's uid.)

Any step that finds nothing, something else, or fails answers None: fail closed.
Why each check:
  * the exact lookup falls back to *listening* sockets when no connection
    matches (the kernel's inet_lookup does): a peer that has gone, whose port
    root now listens on, would otherwise read as root -- hence "ESTABLISHED and
    exactly this 4-tuple";
  * a peer that closes leaves a TIME_WAIT entry, whose uid reads as 0 -- again
    "ESTABLISHED";
  * a client may connect through an AF_INET6 socket to 127.0.0.1
    (::ffff:127.0.0.1); the kernel's IPv4 lookup finds such sockets too, and
    addresses are compared after unmapping;
  * loopback is per network namespace: a peer in another namespace cannot reach
    our 127.0.0.1, and if a lookup ever finds nothing it is refused.
Nothing is cached: every connection is looked up on its own.

Limits (the README's "Control" section says them to users): the uid is the one
of whoever *created* the peer socket.  A process that forwards a port (ssh -L,
socat) passes its own uid to whoever uses the forward -- root running such a
forward to this port gives root to the forward's users.  A connection that
changes hands (fd passing) keeps its creator's uid.

The lookup is a few system calls against the kernel's socket tables, answered
at once; it does not wait on the network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from typing import Iterable, NamedTuple

from sockvisor import ratelimit

log = logging.getLogger("sockvisor.control")
_quiet = ratelimit.RateLimitedLog(log)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
TCP_ESTABLISHED = 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then the sockid.
_REQ_HEAD = struct.Struct("=BBBxI")
# struct inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2].
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# struct inet_diag_msg: family, state, timer, retrans, sockid, expires, rqueue,
# wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_SOCKID_SIZE = _SOCKID.size + _SOCKID_TAIL.size   # 48


# Inodes of the sockets sockvisor created (or adopted) for workers to hold:
# created by root, used by others, so their kernel uid says nothing about who
# uses them.  Bounded by the sockets configs ever named (reloads add some).
_SHARED_INODES: set[int] = set()


def shared_by_us(sock: socket.socket) -> None:
    """Remember that `sock` (one sockvisor hands to workers) is no credential:
    a peer connecting through it is a stranger, whatever its uid says."""
    # sock_diag reports the inode as 32 bits; sockfs inode numbers fit in them.
    _SHARED_INODES.add(os.fstat(sock.fileno()).st_ino & 0xFFFFFFFF)


def shared_inodes() -> list[int]:
    """Every inode `shared_by_us` recorded, sorted: what an upgrade carries to
    the process it execs (upgrade.py), which cannot find them again -- a socket
    reloadconfig retired and sockvisor closed may live on in a worker's hands."""
    return sorted(_SHARED_INODES)


def remember_shared(inodes: Iterable[int]) -> None:
    """Take over the inodes the process before an upgrade recorded
    (`shared_inodes`); before the control channel serves anyone."""
    _SHARED_INODES.update(inodes)


class Tuple(NamedTuple):
    """One end of a TCP connection, seen from that end."""
    family: int
    local: tuple[str, int]
    remote: tuple[str, int]


class DiagEntry(NamedTuple):
    family: int
    state: int
    local: tuple[str, int]
    remote: tuple[str, int]
    uid: int
    inode: int


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _normal(address: str) -> str:
    """The address in one spelling: IPv4-mapped IPv6 as plain IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def connection_of(sock: socket.socket) -> Tuple | None:
    """The 4-tuple of a connected TCP socket; None if it is not one (or closed)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    return Tuple(sock.family, (local[0], local[1]), (remote[0], remote[1]))


def _pack_address(family: int, address: str) -> bytes:
    packed = socket.inet_pton(family, address.split("%", 1)[0])
    return packed.ljust(16, b"\0")


def lookup(family: int, local: tuple[str, int], remote: tuple[str, int],
           timeout: float = 1.0) -> DiagEntry | None:
    """The kernel's record of the TCP socket whose own end is `local` and whose
    peer is `remote` (addresses in `family`'s spelling); None if there is none."""
    request = (_REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
               + _SOCKID.pack(local[1], remote[1], _pack_address(family, local[0]),
                              _pack_address(family, remote[0]))
               + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    sequence = 1
    message = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                             NLM_F_REQUEST, sequence, 0) + request
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(timeout)
        nl.sendto(message, (0, 0))
        reply = nl.recv(65536)
    if len(reply) < _NLMSGHDR.size:
        return None
    length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(reply)
    if kind != SOCK_DIAG_BY_FAMILY or seq != sequence or length > len(reply):
        return None   # NLMSG_ERROR (ENOENT: no such socket), or something unexpected
    body = reply[_NLMSGHDR.size:length]
    if len(body) < _MSG_HEAD.size + _SOCKID_SIZE + _MSG_TAIL.size:
        return None
    msg_family, state, _timer, _retrans = _MSG_HEAD.unpack_from(body)
    sport, dport, src, dst = _SOCKID.unpack_from(body, _MSG_HEAD.size)
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(
        body, _MSG_HEAD.size + _SOCKID_SIZE)
    if msg_family not in (socket.AF_INET, socket.AF_INET6):
        return None
    size = 4 if msg_family == socket.AF_INET else 16
    return DiagEntry(msg_family, state,
                     (socket.inet_ntop(msg_family, src[:size]), sport),
                     (socket.inet_ntop(msg_family, dst[:size]), dport),
                     uid, inode)


def _same_end(entry: DiagEntry, local: tuple[str, int], remote: tuple[str, int]) -> bool:
    return (entry.local[1] == local[1] and entry.remote[1] == remote[1]
            and _normal(entry.local[0]) == _normal(local[0])
            and _normal(entry.remote[0]) == _normal(remote[0]))


def _our_end_holds(conn: Tuple, inode: int) -> bool:
    entry = lookup(conn.family, conn.local, conn.remote)
    return (entry is not None and entry.state == TCP_ESTABLISHED
            and entry.inode == inode and _same_end(entry, conn.local, conn.remote))


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the socket at the other end of `sock`, a TCP connection
    over loopback we hold open; None if it cannot be established beyond doubt
    (see the module docstring for each check)."""
    conn = connection_of(sock)
    if conn is None or not (is_loopback(conn.local[0]) and is_loopback(conn.remote[0])):
        return None
    try:
        inode = os.fstat(sock.fileno()).st_ino
        if not _our_end_holds(conn, inode):
            return None
        peer = lookup(conn.family, conn.remote, conn.local)
        if (peer is None or peer.state != TCP_ESTABLISHED
                or not _same_end(peer, conn.remote, conn.local)):
            return None
        if not _our_end_holds(conn, inode):
            return None
    except (OSError, ValueError):
        return None
    if peer.inode in _SHARED_INODES:
        _quiet.warning(("shared-socket-peer",),
                       "a connection to %s:%s came from a socket sockvisor hands to "
                       "workers (inode %d, its kernel uid %d): a worker connected its "
                       "listening socket; served as a stranger", conn.local[0],
                       conn.local[1], peer.inode, peer.uid)
        return None
    return peer.uid
