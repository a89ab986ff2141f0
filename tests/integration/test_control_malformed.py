"""End to end: whatever a client sends, it gets an error reply, and sockvisor goes on.

Each malformed request goes over a raw ZeroMQ socket (a DEALER as sockvisorctl
and circusctl use, and a REQ, whose empty delimiter frame the server must keep
out of the request and put back on the reply).  Each must be answered with the
right errno (protocol.ErrNo) and a reason; afterwards sockvisor still runs,
still answers `status`, and still holds the same listening socket (the same
inode behind the same fd in /proc/<sockvisor>/fd).
"""

from __future__ import annotations

import json

import pytest
import zmq

from sockvisor.control.protocol import MAX_SOCKET_MESSAGE, ErrNo

from conftest import http_get
from control_client_helpers import (endpoint_of, fd_link, ok, raw_exchange, raw_reply,
                                    sockets_of)


def request(command, properties=None, request_id="r1") -> bytes:
    message = {"id": request_id, "command": command}
    if properties is not None:
        message["properties"] = properties
    return json.dumps(message).encode()


# (label, frames, errno, a word the reason must contain)
MALFORMED = [
    ("not json", [b"this is not json"], ErrNo.INVALID_JSON, "json"),
    ("not utf-8", [b"\xff\xfe\x00garbage"], ErrNo.INVALID_JSON, "json"),
    ("json array", [b"[1, 2, 3]"], ErrNo.INVALID_JSON, "object"),
    ("json string", [b'"status"'], ErrNo.INVALID_JSON, "object"),
    ("json null", [b"null"], ErrNo.INVALID_JSON, "object"),
    ("deeply nested", [b"[" * 100_000], ErrNo.INVALID_JSON, "json"),
    ("command a number", [b'{"id": "r1", "command": 5}'], ErrNo.MESSAGE_ERROR, "command"),
    ("command missing", [b'{"id": "r1"}'], ErrNo.MESSAGE_ERROR, "command"),
    ("properties a list", [b'{"id": "r1", "command": "status", "properties": [1]}'],
     ErrNo.MESSAGE_ERROR, "properties"),
    ("id a list", [b'{"id": [1], "command": "status"}'], ErrNo.MESSAGE_ERROR, "id"),
    ("nb a string", [request("incr", {"name": "web", "nb": "x"})], ErrNo.MESSAGE_ERROR,
     "nb"),
    ("nb a float", [request("decr", {"name": "web", "nb": 1.5})], ErrNo.MESSAGE_ERROR,
     "nb"),
    ("nb negative", [request("incr", {"name": "web", "nb": -3})], ErrNo.MESSAGE_ERROR,
     "nb"),
    # Would fork until the machine gives out, with the event loop stuck.
    ("nb enormous", [request("incr", {"name": "web", "nb": 10 ** 30})],
     ErrNo.MESSAGE_ERROR, "nb"),
    ("signum bogus", [request("signal", {"name": "web", "signum": "SIGBOGUS"})],
     ErrNo.MESSAGE_ERROR, "signal"),
    ("signum out of range", [request("signal", {"name": "web", "signum": 999})],
     ErrNo.MESSAGE_ERROR, "signal"),
    ("signum null", [request("signal", {"name": "web", "signum": None})],
     ErrNo.MESSAGE_ERROR, "signal"),
    ("pid a string", [request("signal", {"name": "web", "signum": "HUP", "pid": "x"})],
     ErrNo.MESSAGE_ERROR, "pid"),
    ("options a list", [request("set", {"name": "web", "options": [1]})],
     ErrNo.MESSAGE_ERROR, "options"),
    ("option value bad", [request("set", {"name": "web",
                                          "options": {"numprocesses": "many"}})],
     ErrNo.MESSAGE_ERROR, "numprocesses"),
    ("option unknown", [request("set", {"name": "web", "options": {"colour": "red"}})],
     ErrNo.MESSAGE_ERROR, "colour"),
    ("keys a string", [request("get", {"name": "web", "keys": "cmd"})],
     ErrNo.MESSAGE_ERROR, "keys"),
    ("name a number", [request("status", {"name": 5})], ErrNo.MESSAGE_ERROR, "name"),
    ("unknown command", [request("frobnicate")], ErrNo.UNKNOWN_COMMAND, "frobnicate"),
    ("unknown watcher", [request("list", {"name": "nope"})], ErrNo.MESSAGE_ERROR, "nope"),
    ("unknown watcher incr", [request("incr", {"name": "nope"})], ErrNo.MESSAGE_ERROR,
     "nope"),
    ("huge frame", [b"x" * (2 << 20)], ErrNo.BAD_MSG_DATA_ERROR, "bytes"),
    ("huge json", [b'{"command": "status", "pad": "' + b"y" * (2 << 20) + b'"}'],
     ErrNo.BAD_MSG_DATA_ERROR, "bytes"),
    ("three frames", [request("status"), b"second", b"third"], ErrNo.BAD_MSG_DATA_ERROR,
     "frame"),
    ("two frames", [request("status"), request("status")], ErrNo.BAD_MSG_DATA_ERROR,
     "frame"),
    ("empty frame", [b""], ErrNo.INVALID_JSON, "json"),
]


@pytest.mark.timeout(60)
def test_malformed_requests_get_error_replies_and_change_nothing(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        numprocesses = 2
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    web = sockets_of(endpoint)["web"]
    socket_before = fd_link(sv.pid, web["fd"])
    assert socket_before.startswith("socket:[")
    pids_before = sorted(ok(endpoint, "list", {"name": "web"})["pids"])

    problems = []
    for kind_name, kind in (("DEALER", zmq.DEALER), ("REQ", zmq.REQ)):
        for label, frames, errno, word in MALFORMED:
            reply = raw_reply(endpoint, frames, kind)
            where = f"{kind_name} {label}: {reply}"
            if reply.get("status") != "error" or reply.get("errno") != errno:
                problems.append(f"{where}: expected errno {int(errno)} ({errno.name})")
            elif word.lower() not in str(reply.get("reason", "")).lower():
                problems.append(f"{where}: the reason does not mention {word!r}")
            elif (len(frames) == 1 and frames[0].startswith(b'{"id": "r1"')
                  and reply.get("id") != "r1"):
                problems.append(f"{where}: the reply does not carry the request id")
    assert not problems, "\n".join(problems)

    # Still there, still answering, still holding the same socket and workers.
    assert sv.proc.poll() is None, sv.describe()
    status = ok(endpoint, "status")
    assert status["statuses"] == {"web": "active"}
    assert sorted(ok(endpoint, "list", {"name": "web"})["pids"]) == pids_before
    assert ok(endpoint, "numprocesses", {"name": "web"})["numprocesses"] == 2
    assert fd_link(sv.pid, web["fd"]) == socket_before
    assert sockets_of(endpoint)["web"]["port"] == web["port"]
    assert http_get(web["port"])["pid"] in pids_before
    assert "Traceback" not in sv.log(), sv.describe()


def test_a_frame_beyond_the_socket_limit_drops_only_that_client(sockvisor, scripts):
    """Beyond MAX_SOCKET_MESSAGE libzmq drops the peer (bounded memory): no reply,
    and the next client is served as usual."""
    sv = sockvisor(f"""
        [watcher:idle]
        cmd = {scripts.cmd("worker.py")} --no-serve
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    assert raw_exchange(endpoint, [b"z" * (MAX_SOCKET_MESSAGE + 1)], timeout=1.0) is None
    assert ok(endpoint, "numwatchers")["numwatchers"] == 1
    assert sv.proc.poll() is None


def test_a_request_with_a_req_socket_keeps_the_envelope(sockvisor, scripts):
    """A REQ client's delimiter frame is not part of the request: a good request
    over REQ succeeds, and the reply comes back to the same REQ socket."""
    sv = sockvisor(f"""
        [watcher:idle]
        cmd = {scripts.cmd("worker.py")} --no-serve
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    reply = raw_reply(endpoint, [request("numwatchers", request_id="via-req")], zmq.REQ)
    assert reply["status"] == "ok" and reply["numwatchers"] == 1
    assert reply["id"] == "via-req"
    # A DEALER that sends its own empty delimiter is treated the same way.
    delimiter, payload = raw_exchange(endpoint, [b"", request("numwatchers", request_id="d")])
    assert delimiter == b""
    reply = json.loads(payload)
    assert reply["status"] == "ok" and reply["id"] == "d"
