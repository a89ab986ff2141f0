"""Attack: a client pipelines big requests on the control channel and never reads.

One DEALER sends up to 2,000 requests of MAX_REQUEST_BYTES (1 MB) each, as fast
as sockvisor lets it, without reading a reply.  sockvisor used to read them all,
one task per message with no limit, and grew from ~30 MB to gigabytes while
`status` from anyone else took seconds.  Now it holds a bounded number of
requests per peer and per endpoint and stops reading at the limit, so the
attacker's sends block (back-pressure) while everyone else is still served.

The attack is bounded in count and time, and it is stopped as soon as
sockvisor's RSS passes the bound, so a broken build fails quickly.
"""

from __future__ import annotations

import json
import threading
import time

import psutil
import pytest
import zmq

from sockvisor.control.client import ControlClient, Unreachable
from sockvisor.control.protocol import MAX_REQUEST_BYTES

from conftest import wait_for

REQUESTS = 2000
ATTACK_SECONDS = 20.0
RSS_BOUND = 200 << 20          # growth allowed over the idle RSS
STATUS_SECONDS = 5.0           # "answers within a few seconds" on a loaded machine


def _padded_status(request_id: int) -> bytes:
    """A valid `status` request of exactly MAX_REQUEST_BYTES (the largest accepted)."""
    head = json.dumps({"id": request_id, "command": "status",
                       "properties": {"pad": ""}}).encode()
    pad = MAX_REQUEST_BYTES - len(head)
    return head.replace(b'"pad": ""', b'"pad": "' + b"x" * pad + b'"')


class Attacker(threading.Thread):
    """Pipelines REQUESTS big requests, never reads; stops at `stop` or the deadline."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.sent = 0
        self.blocked_polls = 0   # times a send had to wait: back-pressure
        self.error: BaseException | None = None

    def run(self) -> None:
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)   # the attacker's own memory stays small
        deadline = time.monotonic() + ATTACK_SECONDS
        try:
            sock.connect(self.endpoint)
            frame = _padded_status(0)
            while (self.sent < REQUESTS and not self.stop.is_set()
                   and time.monotonic() < deadline):
                try:
                    sock.send(frame, flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    self.blocked_polls += 1
                    sock.poll(50, zmq.POLLOUT)
        except BaseException as exc:   # reported by the test
            self.error = exc
        finally:
            sock.close(linger=0)


@pytest.mark.timeout(90)
def test_pipelined_big_requests_do_not_blow_up_memory_or_starve_status(sockvisor,
                                                                         scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        graceful_timeout = 1
        """, loglevel="info")
    endpoint = f"ipc://{sv.directory}/ctl"
    process = psutil.Process(sv.pid)
    with ControlClient(endpoint, 10) as client:
        assert client.call("status")["statuses"] == {"web": "active"}
    baseline = process.memory_info().rss

    attacker = Attacker(endpoint)
    attacker.start()
    peak = baseline
    latencies: list[float] = []
    try:
        with ControlClient(endpoint, STATUS_SECONDS * 2) as victim:
            def attack_over() -> bool:
                nonlocal peak
                peak = max(peak, process.memory_info().rss)
                if peak - baseline > RSS_BOUND:
                    return True   # failed: stop the attack now, assert below
                started = time.monotonic()
                try:
                    reply = victim.call("status", timeout=STATUS_SECONDS * 2)
                except Unreachable:
                    latencies.append(float("inf"))
                    peak = max(peak, process.memory_info().rss)
                    return True   # failed: no answer at all; assert below
                latencies.append(time.monotonic() - started)
                assert reply["statuses"] == {"web": "active"}, reply
                return not attacker.is_alive()
            wait_for(attack_over, ATTACK_SECONDS + 30, interval=0.2,
                     message="the bounded attack to end")
    finally:
        attacker.stop.set()
        attacker.join(10)
    assert attacker.error is None, attacker.error
    growth = peak - baseline
    assert growth <= RSS_BOUND, (f"sockvisor's RSS grew by {growth >> 20} MB "
                                 f"(from {baseline >> 20} MB) after {attacker.sent} "
                                 f"requests of 1 MB")
    slowest = max(latencies)
    assert slowest < STATUS_SECONDS, (f"status took {slowest:.1f}s during the attack "
                                      f"({len(latencies)} calls)")
    # The attacker was pushed back (its sends had to wait), not served at any cost.
    assert attacker.sent > 20, f"only {attacker.sent} requests went out"
    assert sv.proc.poll() is None
    with ControlClient(endpoint, 10) as client:
        assert client.call("numwatchers")["numwatchers"] == 1
    print(f"sent {attacker.sent} x 1 MB, {attacker.blocked_polls} blocked sends, "
          f"RSS {baseline >> 20} -> peak {peak >> 20} MB, status p100 {slowest:.2f}s "
          f"over {len(latencies)} calls")
