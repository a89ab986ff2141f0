"""The one HTTP client load for the tests and the benchmarks: loopback only, bounded.

* `request(port, ...)` is one GET on a new connection to 127.0.0.1:PORT and returns
  the JSON answer of `http_worker.py` (pid, wid, port, version, ...).  Raises
  OSError (refused, reset, timeout) or ValueError (no answer, or not a 200 with JSON).
* `classify(exc, connected)` names what went wrong with one request: "refused",
  "connect timeout", "connect error", "client" (our own EADDRNOTAVAIL: the client
  ran out of ephemeral ports), "reset", "timeout", "closed, no answer",
  "bad answer", "error".  `connected` says whether the TCP connection was made.
* `Load(port, threads=3, max_requests=20000, max_seconds=60, pause=0)` runs
  `threads` client threads, each sending one request after the other, until
  `stop()`, until `max_requests` in all, or until `max_seconds` have passed:
  never an unbounded loop.  Every request is a `Sample` (start, latency, the
  answer or the failure's kind and detail), so a test can ask what happened in
  any window (`between`), who answered (`pids`, `answered_by`), and how many
  requests failed of each kind (`counts`).

tests/conftest.py puts this directory on sys.path (it is pytest's rootdir
conftest); bench/common.py adds it itself.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

HOST = "127.0.0.1"   # load only ever goes to loopback


def request(port: int, timeout: float = 5.0,
            on_connect: Callable[[socket.socket], None] | None = None) -> dict[str, Any]:
    """One GET on a new connection to 127.0.0.1:`port`; the worker's JSON answer.

    `on_connect(conn)`, if given, runs once the connection is made and before the
    request goes out (bench/soak.py notes its client port there)."""
    with socket.create_connection((HOST, port), timeout=timeout) as conn:
        if on_connect is not None:
            on_connect(conn)
        conn.sendall(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ValueError(f"unexpected answer {data[:200]!r}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise ValueError(f"unexpected body {body[:200]!r}") from None
    if not isinstance(answer, dict):
        raise ValueError(f"unexpected body {body[:200]!r}")
    return answer


def classify(exc: BaseException, connected: bool) -> tuple[str, str]:
    """(kind, detail) of a failed request; kind "client" is the load generator's own."""
    detail = f"{type(exc).__name__}: {exc}"[:200]
    if not connected:
        if isinstance(exc, ConnectionRefusedError):
            return "refused", detail
        if isinstance(exc, TimeoutError):
            return "connect timeout", detail
        if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
            return "client", detail
        return "connect error", detail
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset", detail
    if isinstance(exc, TimeoutError):
        return "timeout", detail
    if isinstance(exc, ValueError):
        return ("closed, no answer" if "answer b''" in str(exc) else "bad answer"), detail
    return "error", detail


@dataclass
class Sample:
    started: float                  # time.monotonic() when the request began
    latency: float                  # s, until the answer or the failure
    pid: int | None                 # who answered; None: it failed
    error: str = ""                 # the failure, "ExceptionName: text"
    kind: str = "ok"                # "ok", or `classify`'s kind
    answer: dict[str, Any] | None = None


@dataclass
class Load:
    """`threads` client threads doing GETs, each on a new connection, until `stop()`,
    `max_requests` in all or `max_seconds`; every request is recorded."""
    port: int
    threads: int = 3
    max_requests: int = 20000
    pause: float = 0.0              # between two requests of one thread
    timeout: float = 5.0            # per request
    max_seconds: float = 60.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._deadline = 0.0
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.threads)]

    def start(self) -> "Load":
        self._deadline = time.monotonic() + self.max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            self._record(self._one())
            if self.pause:
                self._stop.wait(self.pause)

    def _one(self) -> Sample:
        connected = []
        began = time.monotonic()
        try:
            answer = request(self.port, self.timeout, on_connect=connected.append)
            return Sample(began, time.monotonic() - began, answer.get("pid"), answer=answer)
        except Exception as exc:   # noqa: BLE001 - every failure is a result
            kind, detail = classify(exc, bool(connected))
            return Sample(began, time.monotonic() - began, None, detail, kind)

    def _record(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "load threads stuck"

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- results

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def answers(self) -> list[dict[str, Any]]:
        return [s.answer for s in self.snapshot() if s.answer is not None]

    def count(self) -> int:
        """Requests answered so far."""
        return len(self.answers())

    def failures(self) -> list[Sample]:
        return [s for s in self.snapshot() if s.pid is None]

    def counts(self) -> Counter:
        """How many requests ended each way: "ok", "refused", "reset", ..."""
        return Counter(s.kind for s in self.snapshot())

    def pids(self) -> Counter:
        return Counter(s.pid for s in self.snapshot() if s.pid is not None)

    def versions(self) -> list[str | None]:
        """$VERSION of the worker that gave each answer, in order."""
        return [answer.get("version") for answer in self.answers()]

    def answered_by(self, pids: set[int]) -> bool:
        return any(s.pid in pids for s in self.snapshot())

    def between(self, start: float, end: float) -> list[Sample]:
        """Requests that were in flight at some time in [start, end]."""
        return [s for s in self.snapshot()
                if s.started <= end and s.started + s.latency >= start]
