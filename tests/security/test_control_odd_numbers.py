"""Attack: numbers that are not quite numbers, over the control channel.

`str.isdigit()` is true for "²" and `int()` then refuses it; `int()` takes "١٢"
(Arabic-Indic digits) for 12; 5,000 digits exceed CPython's int/str limit.  Each
of these used to come back as "internal error" with a traceback in the log.  Now
one strict parser (sockvisor/wholenumber.py) turns each into a clear error
reply, and nothing changes.
"""

from __future__ import annotations

import json

import pytest

from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import MAX_REASON, ErrNo

from conftest import wait_for

ODD = ["²", "١٢", "1_0", " 3", "9" * 5000, "0x10", 2.0, 1.5, True, False,
       10 ** 4000, [1], {"n": 1}, ""]


def _requests(pid: int) -> list[tuple[str, dict]]:
    requests = []
    for value in ODD:
        requests += [
            ("incr", {"name": "web", "nb": value}),
            ("decr", {"name": "web", "nb": value}),
            ("signal", {"name": "web", "signum": value}),
            ("signal", {"name": "web", "signum": "CONT", "pid": value}),
            ("stats", {"name": "web", "process": value}),
        ]
        # `set` values follow the INI file's grammar ("0x10", " 3" are numbers
        # there); what is not a number there either must still be refused cleanly.
        if value in ("²", "١٢", "9" * 5000, ""):
            requests += [
                ("set", {"name": "web", "options": {"numprocesses": value}}),
                ("set", {"name": "web", "options": {"stop_signal": value}}),
            ]
    return requests


@pytest.mark.timeout(60)
def test_odd_digits_get_clear_error_replies_and_change_nothing(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        graceful_timeout = 1
        """)
    endpoint = f"ipc://{sv.directory}/ctl"
    with ControlClient(endpoint, 15) as client:
        [pid] = client.call("list", {"name": "web"})["pids"]
        before = client.call("options", {"name": "web"})["options"]
        failures = []
        for command, props in _requests(pid):
            reply = client.call(command, props)
            shown = json.dumps(props)[:120]
            if reply.get("status") != "error":
                failures.append(f"{command} {shown}: accepted: {reply}")
            elif reply["errno"] not in (ErrNo.MESSAGE_ERROR, ErrNo.INVALID_JSON) \
                    or "internal error" in reply["reason"]:
                failures.append(f"{command} {shown}: {reply['errno']} {reply['reason']}")
            elif len(reply["reason"]) > MAX_REASON + 20:
                failures.append(f"{command} {shown}: reason of {len(reply['reason'])} "
                                "characters")
        assert not failures, "\n".join(failures)
        assert client.call("options", {"name": "web"})["options"] == before
        assert client.call("list", {"name": "web"})["pids"] == [pid]
        # Plain numbers still work, as JSON numbers and as ASCII strings.
        assert client.call("incr", {"name": "web", "nb": "1"})["numprocesses"] == 2
        assert client.call("decr", {"name": "web", "nb": 1})["numprocesses"] == 1
        assert client.call("signal", {"name": "web", "signum": "18", "pid": pid}
                           )["pids"] == [pid]
    assert "Traceback" not in sv.log(), sv.log()
    wait_for(lambda: sv.proc.poll() is None, 1)
