"""The console's HTTP server: tornado on sockvisor's own event loop.

Why in the loop and not a separate process: the console is a second transport
over the same command layer (control/dispatch.py), the same event list and the
same listening sockets (TCP_INFO needs the socket); a separate process would
need a copy of all three, or a private protocol to reach them, and a second
thing to supervise.  What keeps a slow or hostile HTTP client from delaying
reaping, respawns, reloads or the ZeroMQ channel is that nothing here waits on
a client while holding anything, and that every cost a client can cause is
bounded:

  * connections: at most MAX_CONNECTIONS at once (more are closed on accept);
    headers must arrive within IDLE_TIMEOUT, a body within BODY_TIMEOUT, and
    be small (MAX_HEADER / MAX_BODY);
  * requests start one per loop turn (pacing.py): a reaping or control
    callback waits for one request handler at most, not for 200;
  * writes never block the loop (tornado buffers per connection), and the event
    stream drops a client that does not read (events.py);
  * reading /proc for CPU and memory runs in a thread, at most once a second
    (sampler.py); actions in flight are bounded (api.py);
  * access is logged at debug level only, and what a client can make fail
    (a malformed request, an unexpected exception, anything tornado itself
    would log) at most one short line per kind per interval, never with the
    URL, query or headers (api.py log_exception, _TornadoFilter): no local
    user can flood the log or put a secret sent in a request into it.
bench/console_load.py measures it: kill→replacement latency with 200 clients
hammering the console against an idle one.

Known limit -- lockout: the bounds are global, not per client.  Any local user
who can connect (every user, on a loopback address) can hold all
MAX_CONNECTIONS connections or all of events.py's MAX_CLIENTS event-stream
slots, and the console then refuses everyone else until they let go.  That
costs sockvisor nothing and the ZeroMQ control channel (sockvisorctl) is
unaffected, but the page and /metrics are unavailable meanwhile.  A per-peer
bound is not cheap here: on loopback every local user's address is 127.0.0.1,
and finding the uid behind a TCP connection takes a sock_diag query per
accept.  Where that matters, use `http = unix:PATH` (reachable by root and
endpoint_group only) or a firewall rule by owner (iptables -m owner).

Binding: `http = HOST:PORT` (every address HOST resolves to) or `unix:/PATH`
through sockets.py's bind (born 0600 by the umask, then 0660 with
`endpoint_group` as its group when that is set, like the control endpoint --
mode and group set through an O_PATH fd checked to be the file we bound, never
by path; an old socket file there is replaced only if nobody answers on it).  On a
loopback address the Host header must name loopback too: a web page whose name
is rebound to 127.0.0.1 (DNS rebinding) cannot read the API.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from sockvisor import paths, sockets
from sockvisor.config import SocketConfig, _http_is_local, http_host_port
from sockvisor.control import access
from sockvisor.exits import EXIT_SOCKET, StartupError
from sockvisor.http import auth
from sockvisor.http.events import EventHub
from sockvisor.http.pacing import Pacer
from sockvisor.http.sampler import ProcessSampler
from sockvisor.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from sockvisor.control.host import Host

log = logging.getLogger("sockvisor.http")

MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 30.0
BODY_TIMEOUT = 10.0
MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024


class _BoundedHTTPServer(HTTPServer):
    def handle_stream(self, stream: Any, address: Any) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            stream.close()   # the peer sees a reset, the loop spends nothing more
            return
        super().handle_stream(stream, address)


class ConsoleServer:
    def __init__(self, supervisor: "Host",
                 make_application: "Callable[[ConsoleServer], tornado.web.Application]"):
        self.supervisor = supervisor
        # api.py's: handed in rather than imported, since api.py knows this class.
        self._make_application = make_application
        globals_ = supervisor.config.globals
        assert globals_.http is not None
        self.address: str = globals_.http
        self.unix_path = self.address[len("unix:"):] if self.address.startswith("unix:") else None
        self.local = _http_is_local(self.address)
        # On a loopback or unix address only local users reach us: reading the
        # state is open, as issue 12 asks (worker output is not: api.py).
        # Anywhere else, everything needs the token (the operator's
        # http_token_file, or the one made at each start: config warns).
        self.token_needed_to_read = not self.local
        self.token_file = globals_.http_token_file
        self.token_dir = paths.runtime_dir(supervisor.config.path)
        self.token = ""
        self._wrote_token = False
        self.url = ""
        self.hub = EventHub()
        self.sampler = ProcessSampler()
        self.pacer = Pacer()
        self.metrics: Any = None
        self.server: HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self.unix_socket: sockets.ListeningSocket | None = None
        self.loopback_hosts: set[str] = set()
        self.actions_in_flight = 0   # api.py bounds it
        # Failures a client can cause, or trigger again and again: one line per
        # kind per interval (api.py's log_exception, tornado's own loggers).
        self.errors = RateLimitedLog(log)
        self.caller = access.console(globals_)   # what its requests may do

    # ------------------------------------------------------------------ start / close

    async def start(self) -> None:
        try:
            if self.token_file is not None:
                self.token = auth.read_token_file(self.token_file)
            else:
                self.token = auth.new_token()
                auth.write_token(self.token_dir, self.token)
                self._wrote_token = True
            self._bind()
        except (OSError, sockets.SocketError) as exc:
            self._close_sockets()
            self._remove_token()
            raise StartupError(f"cannot serve the web console on {self.address}: {exc}",
                               EXIT_SOCKET) from None
        try:
            from sockvisor.http.metrics import Metrics
            self.metrics = Metrics(self.supervisor, self.sampler)
            self.supervisor.subscribers.append(self.metrics.on_event)
        except ImportError as exc:
            log.warning("/metrics disabled: %s (pip install prometheus_client)", exc)
        self.supervisor.subscribers.append(self.hub.publish)
        _quiet_tornado(self.errors)
        self.server = _BoundedHTTPServer(
            self._make_application(self), xheaders=False, idle_connection_timeout=IDLE_TIMEOUT,
            body_timeout=BODY_TIMEOUT, max_header_size=MAX_HEADER, max_body_size=MAX_BODY)
        self.server.add_sockets(self.sockets)
        log.info("web console on %s (actions need the token: sockvisorctl console-token)",
                 self.url)

    def _bind(self) -> None:
        if self.unix_path is not None:
            # sockets.py's bind, the one fd-safe path for a unix socket's file: a
            # stale socket file replaced only if nobody answers on it, anything
            # else refused; born 0600 (umask), then mode and group set through an
            # O_PATH fd checked to be the very file we bound, never by name.
            group = self.supervisor.config.globals.endpoint_group
            self.unix_socket = sockets.bind(SocketConfig(
                name="console", family=socket.AF_UNIX, path=self.unix_path, backlog=128,
                mode=0o600 if group is None else 0o660, group=group, blocking=False))
            # tornado gets a duplicate: it closes its copy on stop(), and ours
            # must still be open when close() removes the file (ListeningSocket
            # checks through it that the name still is our socket).
            served = self.unix_socket.sock.dup()
            served.setblocking(False)
            self.sockets.append(served)
            self.url = f"unix:{self.unix_path}"
            return
        host, port = http_host_port(self.address)
        self.sockets = bind_sockets(port, address=host, backlog=128)
        bound = self.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        if self.local:
            ports = {str(s.getsockname()[1]) for s in self.sockets}
            for name in ("localhost", "127.0.0.1", "[::1]", shown, host):
                self.loopback_hosts.add(name)
                self.loopback_hosts.update(f"{name}:{p}" for p in ports)

    def host_allowed(self, host: str) -> bool:
        """The Host header of a request (DNS-rebinding guard, loopback only)."""
        if self.unix_path is not None or not self.local:
            return True
        return host.lower() in self.loopback_hosts

    async def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.hub.close()
            await self.server.close_all_connections()
        for subscriber in (self.hub.publish, getattr(self.metrics, "on_event", None)):
            if subscriber in self.supervisor.subscribers:
                self.supervisor.subscribers.remove(subscriber)
        self._close_sockets()
        self._remove_token()

    def _close_sockets(self) -> None:
        if self.unix_socket is not None:
            self.unix_socket.close()   # unlinks the file only if it still is ours
            self.unix_socket = None
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def _remove_token(self) -> None:
        if self._wrote_token:
            auth.remove_token(self.token_dir)
            self._wrote_token = False


TORNADO_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


class _TornadoFilter(logging.Filter):
    """tornado's own log records pass through here and go no further.  They can
    carry what a client sent (tornado.general: "Malformed HTTP message from ...",
    bad multipart bodies; tornado.application: a traceback with the request
    line), one per request.  A warning or worse becomes one short line per kind
    per interval on our logger with tornado's message template -- never its
    arguments, which hold the client's data."""

    def __init__(self, errors: RateLimitedLog):
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            template = str(record.msg).split("\n", 1)[0][:80]
            self.errors.warning((record.name, template), "console: %s reported %r (its "
                                "details come from a client and are not logged)",
                                record.name, template)
        return False


def _quiet_tornado(errors: RateLimitedLog) -> None:
    for name in TORNADO_LOGGERS:
        logger = logging.getLogger(name)
        # No record below WARNING is even made (tornado logs every malformed
        # request at INFO); the rest go through the filter.
        logger.setLevel(logging.WARNING)
        for old in [f for f in logger.filters if isinstance(f, _TornadoFilter)]:
            logger.removeFilter(old)
        logger.addFilter(_TornadoFilter(errors))
