"""What a hijack of the tcp control port must meet: `add` sent through a worker's
hijacked listening socket (forwarded to a unix socket PROXY by the worker) is
refused FORBIDDEN, nothing is added, nothing runs, and sockvisor says why.
Shared by the tests of the live and the retired (after an upgrade) socket."""

from __future__ import annotations

import json
from pathlib import Path

import zmq

from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import ErrNo

from conftest import Sockvisor, wait_for


def assert_add_refused_through(sv: Sockvisor, proxy: Path, endpoint: str, marker: Path,
                               watchers: list[str], what: str) -> None:
    """Send `add` (a watcher that would write `marker` as root) through `proxy`;
    assert it is refused and `watchers` are still all there are.  `what`: the
    socket, for the failure message."""
    wait_for(lambda: proxy.exists() or sv.proc.poll() is not None, 20,
             message=sv.describe)
    assert proxy.exists(), sv.describe()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(f"ipc://{proxy}")
        evil = f"/bin/sh -c 'id > {marker}'"
        dealer.send(json.dumps({"id": "hijack-1", "command": "add",
                                "properties": {"name": "evil", "cmd": evil,
                                               "start": True}}).encode())
        assert dealer.poll(15000), "no reply through the hijacked socket\n" + sv.describe()
        reply = json.loads(dealer.recv())
    finally:
        dealer.close()
        context.term()
    assert reply["status"] == "error" and reply["errno"] == ErrNo.FORBIDDEN, \
        f"{what} was served: {reply}\n" \
        f"(marker: {marker.read_text() if marker.exists() else 'none yet'})"
    # Root, on its own connection, still sees only its watchers: nothing was added.
    with ControlClient(endpoint, 10) as client:
        assert list(client.call("list")["watchers"]) == watchers
    assert not marker.exists()
    sv.wait_log("a socket sockvisor hands to workers")
    assert sv.proc.poll() is None
