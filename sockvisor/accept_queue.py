"""How many connections wait in a listening socket's accept queue, and its limit.

Only the holder of a listening socket can ask the kernel this, which makes it
sockvisor's to report (`listsockets`, `/metrics`): a queue that grows is the
first sign that the workers do not keep up, long before connections are refused.

  * TCP: `getsockopt(TCP_INFO)`; on a socket in LISTEN state the kernel puts the
    current accept-queue length in `tcpi_unacked` and the limit (the effective
    backlog, after net.core.somaxconn) in `tcpi_sacked`.
  * unix: sock_diag over netlink (`UNIX_DIAG_RQLEN`: queued connections, and the
    backlog as the "write queue"), the same source as `ss -xl`.  Needs the kernel's
    unix_diag support; without it the figures are unknown (None), not zero.

Both are single non-blocking syscalls on sockets we hold: cheap enough to call
from the event loop on every scrape.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

_TCP_LISTEN = 10
_TCP_INFO_PREFIX = struct.Struct("=B7x6I")   # state, …, rto ato snd_mss rcv_mss unacked sacked

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NO_COOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")
_RTATTR = struct.Struct("=HH")


class AcceptQueue(NamedTuple):
    length: int   # connections the kernel completed that no worker accepted yet
    limit: int    # the most it holds before new connections are refused/dropped


def accept_queue(sock: socket.socket) -> AcceptQueue | None:
    """The queue of a listening socket; None when the kernel does not say."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return _tcp(sock)
        if sock.family == socket.AF_UNIX:
            return _unix(sock)
    except OSError:
        return None
    return None


def _tcp(sock: socket.socket) -> AcceptQueue | None:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    if len(raw) < _TCP_INFO_PREFIX.size:
        return None
    state, _rto, _ato, _snd_mss, _rcv_mss, unacked, sacked = _TCP_INFO_PREFIX.unpack_from(raw)
    if state != _TCP_LISTEN:
        return None
    return AcceptQueue(unacked, sacked)


def _unix(sock: socket.socket) -> AcceptQueue | None:
    inode = os.fstat(sock.fileno()).st_ino & 0xFFFFFFFF
    request = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode,
                                  _UDIAG_SHOW_RQLEN, _NO_COOKIE, _NO_COOKIE)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY,
                            _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK,
                       _NETLINK_SOCK_DIAG) as netlink:
        netlink.sendto(header + request, (0, 0))
        # The kernel answers within sendto for an exact lookup; never wait for it.
        reply = netlink.recv(8192)
    return _parse_unix_reply(reply, inode)


def _parse_unix_reply(reply: bytes, inode: int) -> AcceptQueue | None:
    if len(reply) < _NLMSGHDR.size + _UNIX_DIAG_MSG.size:
        return None
    length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        return None
    msg = _UNIX_DIAG_MSG.unpack_from(reply, _NLMSGHDR.size)
    if msg[4] != inode:
        return None
    offset = _NLMSGHDR.size + _UNIX_DIAG_MSG.size
    end = min(length, len(reply))
    while offset + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(reply, offset)
        if attr_len < _RTATTR.size:
            break
        if attr_type == _UNIX_DIAG_RQLEN and attr_len >= _RTATTR.size + 8:
            queued, backlog = struct.unpack_from("=II", reply, offset + _RTATTR.size)
            return AcceptQueue(queued, backlog)
        offset += (attr_len + 3) & ~3
    return None
