"""The HTTP API, the page and /metrics: tornado handlers over control/dispatch.py.

Reading (GET /api/...) runs the same commands as sockvisorctl (`status`,
`listsockets`, `logs`) and returns their replies unchanged, errors included (the
JSON body is the control reply; the HTTP status follows its errno).  State
(watchers, workers, sockets, events, /metrics) is open on a loopback or unix
address; what workers write (`logs`) needs the token everywhere: on the
control channel only the owner and endpoint_group may read it, and any local
user can reach a loopback port.  The event stream carries no output, only
state changes (spawn, exit, ready, state, reload).  Actions
(POST /api/watchers/NAME/ACTION) need the bearer token and are limited to
operating what runs: start, stop, restart, reload, incr, decr, signal.  They go
through the dispatcher as `access.console`: a fixed set -- what an operator may
do plus stop and signal, with the operator's scaling maximum, never the
endpoint_group's extra grants (secrets, quit, rm, scale) nor the owner's
rights -- so a command that decides what runs (add, set cmd/uid/env, ...) would
be refused even if a route led there, and none does.  Nothing over HTTP
changes what runs or as whom.

Routes
  GET  /                               the console page
  GET  /api/                           version, whether reading needs the token,
                                       whether the request's token is valid
  GET  /api/watchers                   `status`
  GET  /api/watchers/NAME?offset=&limit=   `status NAME`, each worker with
                                       cpu_seconds/rss_bytes/processes (its
                                       children included), paginated
  GET  /api/watchers/NAME/logs?lines=N `logs NAME`: needs the token everywhere
  GET  /api/sockets                    `listsockets` (accept-queue figures)
  GET  /api/events                     server-sent events (events.py)
  POST /api/watchers/NAME/ACTION       JSON body: {"nb": N} for incr/decr,
                                       {"signum": "HUP", "pid": P} for signal
  GET  /metrics                        Prometheus text format (metrics.py)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from sockvisor import __version__, wholenumber
from sockvisor.control import protocol
from sockvisor.control.dispatch import run_command
from sockvisor.control.protocol import ErrNo
from sockvisor.http import auth

if TYPE_CHECKING:
    from sockvisor.http.server import ConsoleServer

log = logging.getLogger("sockvisor.http")
HERE = os.path.dirname(os.path.abspath(__file__))   # templates/, static/

# What a token holder may do over HTTP, and which properties each action takes
# from the request body (anything else in the body is ignored).
ACTIONS: dict[str, tuple[str, ...]] = {
    "start": (), "stop": (), "restart": (), "reload": (),
    "incr": ("nb",), "decr": ("nb",), "signal": ("signum", "pid", "children"),
}
MAX_ACTIONS_IN_FLIGHT = 32
DEFAULT_PAGE, MAX_PAGE = 200, 1000
FLUSH_TIMEOUT = 30.0   # an event-stream client that reads nothing for this long goes

HTTP_STATUS = {ErrNo.UNKNOWN_COMMAND: 404, ErrNo.FORBIDDEN: 403, ErrNo.OS_ERROR: 500,
               ErrNo.COMMAND_ERROR: 409}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BaseHandler(tornado.web.RequestHandler):
    needs_token = False   # actions, worker output: always; state: only off loopback
    public = False        # the page and its static files: no data in them

    def initialize(self, console: "ConsoleServer") -> None:
        self.console = console

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    async def prepare(self) -> None:
        await self.console.pacer.turn()   # see pacing.py
        if not self.console.host_allowed(self.request.host):
            self.send_error_reply(403, f"Host {self.request.host!r} is not this console's "
                                       "loopback address")
            return
        if self.public:
            return
        if (self.needs_token or self.console.token_needed_to_read) and not self.authorized():
            self.set_header("WWW-Authenticate", 'Bearer realm="sockvisor"')
            self.send_error_reply(401, "a valid bearer token is required "
                                       "(Authorization: Bearer ...; sockvisorctl console-token)")

    def authorized(self) -> bool:
        return auth.bearer_matches(self.request.headers.get("Authorization"),
                                   self.console.token)

    def send_error_reply(self, status: int, reason: str) -> None:
        self.set_status(status)
        self.send_json(protocol.error(None, reason, ErrNo.FORBIDDEN if status in (401, 403)
                                      else ErrNo.MESSAGE_ERROR))
        self.finish()

    def send_json(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(protocol.encode(body))

    def reply(self, reply: dict[str, Any]) -> None:
        if protocol.is_error(reply):
            self.set_status(HTTP_STATUS.get(ErrNo(reply["errno"]), 400))
        self.send_json(reply)

    async def command(self, name: str, props: dict[str, Any]) -> dict[str, Any]:
        # An operator's rights plus the console's own actions, never the owner's,
        # whatever the route (access.console).
        return await run_command(self.console.supervisor, name, props,
                                 caller=self.console.caller)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json(protocol.error(None, self._reason, ErrNo.MESSAGE_ERROR))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Instead of tornado's: an HTTPError (a malformed request: bad UTF-8 in
        the path, a broken body) is the client's and is not logged; anything else
        is a bug, logged as one short line per kind per interval (ratelimit.py)
        naming the handler, the exception type and where it was raised -- never
        the URL, query, headers or the exception's message, which may quote them.
        Any local user can send requests: the log must not be theirs to fill."""
        if isinstance(value, tornado.web.HTTPError):
            return
        frames = traceback.extract_tb(tb)
        where = (f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
                 if frames else "?")
        kind = (type(self).__name__, getattr(typ, "__name__", "?"), where)
        self.console.errors.warning(kind, "console: %s %s failed: %s at %s (answered 500; "
                                    "the request is not logged)", self.request.method,
                                    *kind)

    def int_argument(self, name: str, default: int, maximum: int) -> int | None:
        """The query argument `name` as a whole number within 0..maximum, or None
        after answering 400.  wholenumber.parse, not isdigit()/int(): "²" passes
        isdigit() and then makes int() raise, and 5,000 digits make int() raise
        too -- a 500 and a traceback where a 400 was due."""
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            return wholenumber.parse(raw, repr(name), 0, maximum)
        except ValueError as exc:
            self.send_error_reply(400, f"{exc} (from 0 to {maximum})")
            return None


class PageHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.render("console.html", version=__version__,
                    read_needs_token=self.console.token_needed_to_read)


class StaticHandler(tornado.web.StaticFileHandler):
    async def prepare(self) -> None:
        await self.settings["console"].pacer.turn()

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            if name != "Cache-Control":
                self.set_header(name, value)


class IndexHandler(BaseHandler):
    public = True   # tells a page whether its token is good; reveals nothing else

    def get(self) -> None:
        self.send_json({"version": __version__, "read_needs_token":
                        self.console.token_needed_to_read, "authorized": self.authorized(),
                        "actions": sorted(ACTIONS), "metrics": self.console.metrics is not None})


class WatchersHandler(BaseHandler):
    async def get(self) -> None:
        self.reply(await self.command("status", {}))


class WatcherHandler(BaseHandler):
    async def get(self, name: str) -> None:
        offset = self.int_argument("offset", 0, 10**6)
        limit = self.int_argument("limit", DEFAULT_PAGE, MAX_PAGE)
        if offset is None or limit is None:
            return
        reply = await self.command("status", {"name": name})
        if protocol.is_error(reply):
            self.reply(reply)
            return
        detail = reply["watcher"]
        supervisor = self.console.supervisor
        usage = await self.console.sampler.sample(list(supervisor.workers_by_pid))
        workers = detail["workers"]
        # A summary that stays readable at 1,000 workers: counts per generation.
        generations: dict[str, dict[str, int]] = {}
        for worker in workers:
            entry = generations.setdefault(str(worker["generation"]), {"workers": 0, "ready": 0})
            entry["workers"] += 1
            entry["ready"] += 1 if worker["ready"] else 0
        page = workers[offset:offset + limit]
        for worker in page:
            figures = usage.get(worker["pid"])
            worker["cpu_seconds"] = figures.cpu_seconds if figures else None
            worker["rss_bytes"] = figures.rss_bytes if figures else None
            worker["processes"] = figures.processes if figures else None
        options = await self.command("options", {"name": name})
        if not protocol.is_error(options):
            # Only what the progress bar needs: options also hold env and cmd.
            detail["reload_batch"] = options["options"]["reload_batch"]
        detail.update(workers=page, workers_total=len(workers), offset=offset, limit=limit,
                      generations=generations)
        self.reply(reply)


class LogsHandler(BaseHandler):
    # What workers write is as private as the control channel's `logs`, which
    # only the owner and endpoint_group reach: any local user can reach a
    # loopback console, so output needs the token even where state does not.
    needs_token = True

    async def get(self, name: str) -> None:
        lines = self.int_argument("lines", 20, 100)
        if lines is not None:
            self.reply(await self.command("logs", {"name": name, "lines": lines}))


class SocketsHandler(BaseHandler):
    async def get(self) -> None:
        self.reply(await self.command("listsockets", {}))


class ActionHandler(BaseHandler):
    needs_token = True

    async def post(self, name: str, action: str) -> None:
        if action not in ACTIONS:
            self.send_error_reply(404, f"no action {action!r} over HTTP (actions: "
                                       f"{', '.join(sorted(ACTIONS))})")
            return
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            self.send_error_reply(400, "the body must be a JSON object")
            return
        if not isinstance(body, dict):
            self.send_error_reply(400, "the body must be a JSON object")
            return
        props = {key: body[key] for key in ACTIONS[action] if key in body}
        props["name"] = name
        if action == "reload":
            props["waiting"] = True
        console = self.console
        if console.actions_in_flight >= MAX_ACTIONS_IN_FLIGHT:
            self.send_error_reply(503, "too many actions in flight; try again")
            return
        console.actions_in_flight += 1
        try:
            reply = await self.command(action, props)
        finally:
            console.actions_in_flight -= 1
        log.info("console: %s %s by HTTP: %s", action, name, reply["status"])
        self.reply(reply)


class EventsHandler(BaseHandler):
    async def get(self) -> None:
        client = self.console.hub.join()
        if client is None:
            self.send_error_reply(503, "too many event-stream clients")
            return
        self._client = client
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        try:
            self.write(b": sockvisor events\n\n")
            await self.flush()
            while not client.closed:
                batch = await client.next_batch()
                if client.overflowed:
                    self.write(b"event: overflow\ndata: {}\n\n")
                    await asyncio.wait_for(self.flush(), FLUSH_TIMEOUT)
                    break
                self.write(b"".join(batch) if batch else b": keep-alive\n\n")
                # Only this handler waits for a slow reader; events pile up in its
                # bounded queue meanwhile, and past FLUSH_TIMEOUT it is dropped.
                await asyncio.wait_for(self.flush(), FLUSH_TIMEOUT)
        except (StreamClosedError, asyncio.TimeoutError):
            pass
        finally:
            self.console.hub.leave(client)
        if not self.request.connection.stream.closed():
            self.finish()

    def on_connection_close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        metrics = self.console.metrics
        if metrics is None:
            self.send_error_reply(501, "/metrics needs prometheus_client, which is not "
                                       "installed")
            return
        from sockvisor.http.metrics import CONTENT_TYPE
        body = await metrics.render()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.write(body)


class NotFoundHandler(BaseHandler):
    public = True

    async def prepare(self) -> None:
        await super().prepare()
        if not self._finished:
            self.send_error_reply(404, f"no such page: {self.request.path}")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Debug only, the path only (cut short): a client must not be able to flood
    # the log, and nothing of the request that could hold a secret is written.
    path = handler.request.path
    log.debug("http %d %s %s %.1fms", handler.get_status(), handler.request.method,
              path if len(path) <= 100 else path[:97] + "...",
              1000.0 * handler.request.request_time())


def make_application(console: "ConsoleServer") -> tornado.web.Application:
    args = {"console": console}
    watcher = r"/api/watchers/([^/]+)"
    return tornado.web.Application(
        [
            (r"/", PageHandler, args),
            (r"/api/?", IndexHandler, args),
            (r"/api/watchers/?", WatchersHandler, args),
            (watcher + r"/?", WatcherHandler, args),
            (watcher + r"/logs", LogsHandler, args),
            (watcher + r"/([a-z]+)", ActionHandler, args),
            (r"/api/sockets/?", SocketsHandler, args),
            (r"/api/events", EventsHandler, args),
            (r"/metrics", MetricsHandler, args),
        ],
        template_path=os.path.join(HERE, "templates"),
        static_path=os.path.join(HERE, "static"), static_handler_class=StaticHandler,
        default_handler_class=NotFoundHandler, default_handler_args=args,
        log_function=_log_request, compress_response=False, xsrf_cookies=False,
        console=console,
        autoescape="xhtml_escape")
