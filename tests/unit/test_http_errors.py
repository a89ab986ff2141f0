"""What the console logs when a request fails (review finding 3): a bug in a
handler is one short line per kind per interval without the URL, query or the
exception's message; tornado's own loggers say nothing a client sent.

A real tornado server on 127.0.0.1:0 and real requests; the one stand-in is the
console object (a handler only needs its rate-limited log here), and the
failing handler is a subclass of api.BaseHandler whose get() raises with the
query in its message, as an unforeseen bug quoting its input would.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

tornado = pytest.importorskip("tornado")

from tornado.httpclient import AsyncHTTPClient, HTTPClientError  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.netutil import bind_sockets  # noqa: E402
from tornado.web import Application  # noqa: E402

from sockvisor.http import api, server  # noqa: E402
from sockvisor.ratelimit import RateLimitedLog  # noqa: E402

SECRET = "hunter2-in-the-query"


class FakeConsole:
    def __init__(self) -> None:
        self.errors = RateLimitedLog(logging.getLogger("sockvisor.http"))


class Broken(api.BaseHandler):
    async def prepare(self) -> None:   # no pacer, Host check or token in this test
        pass

    async def get(self) -> None:
        raise RuntimeError(f"bug while handling {self.request.uri}")


async def _hammer(requests: int) -> list[int]:
    console = FakeConsole()
    app = Application([(r"/broken", Broken, {"console": console})],
                      log_function=lambda handler: None)
    sockets = bind_sockets(0, "127.0.0.1")
    http_server = HTTPServer(app)
    http_server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    client = AsyncHTTPClient()
    statuses = []
    try:
        for n in range(requests):
            try:
                await client.fetch(f"http://127.0.0.1:{port}/broken?token={SECRET}&n={n}")
            except HTTPClientError as exc:
                statuses.append(exc.code)
    finally:
        http_server.stop()
        await http_server.close_all_connections()
    return statuses


@pytest.mark.timeout(30)
def test_a_failing_handler_logs_one_short_line_without_the_request(caplog):
    with caplog.at_level(logging.DEBUG):
        statuses = asyncio.run(_hammer(100))
    assert statuses == [500] * 100
    ours = [r for r in caplog.records if r.name.startswith(("sockvisor", "tornado"))]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    [record] = ours
    text = record.getMessage()
    assert "Broken" in text and "RuntimeError" in text and "test_http_errors.py" in text
    assert SECRET not in text and "/broken" not in text and "bug while" not in text
    assert record.exc_info is None and len(text) < 200


def test_tornado_loggers_are_quiet_and_bounded(caplog):
    errors = RateLimitedLog(logging.getLogger("sockvisor.http"))
    server._quiet_tornado(errors)
    with caplog.at_level(logging.DEBUG, logger="sockvisor.http"):
        for n in range(100):
            logging.getLogger("tornado.general").info("Malformed HTTP message from %s: %s",
                                                      "127.0.0.1", SECRET)
            logging.getLogger("tornado.access").info("200 GET /?token=%s", SECRET)
            try:
                raise ValueError(SECRET)
            except ValueError:
                logging.getLogger("tornado.application").exception(
                    "Uncaught exception %s\n%r", f"GET /?token={SECRET}&n={n}", SECRET)
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 1, texts
    assert SECRET not in texts[0] and "tornado.application" in texts[0]
    assert "Uncaught exception" in texts[0] and caplog.records[0].exc_info is None
