"""Helpers for the web console tests: where it listens, its token, plain HTTP
requests (http.client: what a browser or curl sends, nothing more), the event
stream, and a Prometheus text parser (prometheus_client's) for /metrics.

Built on `conftest.py`'s `sockvisor` fixture; the console's address is asked of
sockvisor (`console` over the control channel), its token likewise
(`console-token`), as an operator would.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from control_helpers import control

from conftest import Sockvisor


def console_url(sv: Sockvisor) -> str:
    with control(sv) as ctl:
        return ctl.call("console")["url"]


def console_token(sv: Sockvisor) -> str:
    with control(sv) as ctl:
        return ctl.call("console-token")["token"]


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:300]!r}>"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connection(url: str, timeout: float = 10.0) -> http.client.HTTPConnection:
    if url.startswith("unix:"):
        return _UnixConnection(url[len("unix:"):], timeout)
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def request(url: str, method: str, path: str, *, token: str | None = None,
            body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> Response:
    conn = connection(url, timeout)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read())
    finally:
        conn.close()


def get(url: str, path: str, **kwargs: Any) -> Response:
    return request(url, "GET", path, **kwargs)


def post(url: str, path: str, **kwargs: Any) -> Response:
    return request(url, "POST", path, **kwargs)


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted label pairs: value}}, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            by_labels = samples.setdefault(sample.name, {})
            assert key not in by_labels, f"duplicate series {sample.name}{dict(key)}"
            by_labels[key] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    key = tuple(sorted(labels.items()))
    assert name in samples, f"no {name} in /metrics (have {sorted(samples)})"
    assert key in samples[name], f"no {name}{labels} (have {list(samples[name])})"
    return samples[name][key]


class EventStream:
    """A raw reader of /api/events: the server-sent events as (topic, data)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        self.conn = connection(url, timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.conn.request("GET", "/api/events", headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def read_event(self) -> tuple[str, dict[str, Any]] | None:
        """The next event (None for a comment or keep-alive)."""
        block: list[str] = []
        while True:
            line = self.response.fp.readline()
            if not line:
                raise EOFError("event stream closed")
            text = line.decode().rstrip("\n")
            if text == "":
                break
            block.append(text)
        data = "".join(line[5:].strip() for line in block if line.startswith("data:"))
        if not data:
            return None
        message = json.loads(data)
        event = (message["topic"], message["data"])
        self.seen.append(event)
        return event

    def wait(self, topic: str, **match: Any) -> dict[str, Any]:
        """Read until an event with `topic` whose data has `match` (socket timeout bounds it)."""
        for seen_topic, data in self.seen:
            if seen_topic == topic and all(data.get(k) == v for k, v in match.items()):
                return data
        while True:
            event = self.read_event()
            if event and event[0] == topic and all(event[1].get(k) == v
                                                   for k, v in match.items()):
                return event[1]

    def close(self) -> None:
        self.conn.close()
