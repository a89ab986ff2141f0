"""The web console, HTTP API and Prometheus `/metrics`: a second transport over
the control commands (see server.py for why it runs on sockvisor's own loop).

  * server.py   the tornado application on the loop: binding (TCP or unix),
                connection bounds, Host checks, start/stop;
  * auth.py     the bearer token: made at start (0600, O_EXCL|O_NOFOLLOW in our
                0700 runtime directory) or read from `http_token_file`;
  * api.py      the handlers: JSON under /api/ through control/dispatch.py, the
                same commands, access checks and error replies as ZeroMQ;
  * events.py   /api/events: the PUB endpoint's events as server-sent events;
  * sampler.py  per-worker CPU and RSS, the worker's children included;
  * metrics.py  /metrics in the Prometheus text format;
  * templates/, static/   the page: a tornado template and plain JS, no build step.

Nothing here is imported unless `[sockvisor] http` is set: tornado and
prometheus_client stay out of a sockvisor that does not serve HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sockvisor.control.host import Host


async def start_console(supervisor: "Host") -> Any:
    """The running console, or None when `http` is not configured.  Raises the
    supervisor's StartupError (exit 3) when it cannot serve."""
    if supervisor.config.globals.http is None:
        return None
    from sockvisor.http.api import make_application
    from sockvisor.http.server import ConsoleServer
    console = ConsoleServer(supervisor, make_application)
    await console.start()
    return console
