"""Property-based: any input to the control channel gets a reply, never a traceback.

`parse_request` (any bytes, any JSON) returns a Request or raises CommandError,
nothing else.  `server.dispatch` (the whole path a frame takes: decode, find the
command, check access, run it) answers every frame with an ok or error reply
dict that encodes to JSON, and never with "internal error" (what a bug in a
command looks like from outside) -- for the owner and for a group member.  The
commands run against a small fake supervisor with one watcher, so they go deep
(property validation, access checks) without starting processes.

Bounded: 150-400 examples each, a per-example deadline; a few seconds of CPU.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockvisor.config import GlobalConfig, watcher_from_options
from sockvisor.control import access, protocol
from sockvisor.control.commands import load_commands
from sockvisor.control.protocol import CommandError, ErrNo, Request
from sockvisor.control.server import dispatch
from sockvisor.output import OutputRing
from sockvisor.states import WatcherState

# No example database: nothing written into the work tree, same run each time.
SETTINGS = settings(max_examples=150, deadline=1000, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- inputs

# What commands expect, nearly: numbers that are not quite numbers, names, signals.
odd_values = st.sampled_from([10 ** 4000, -(10 ** 30), "²", "١٢", "9" * 5000, " 3", "1_0",
                              "", "web", "nosuch", "KILL", "HUP", "SIGTERM", "9", "-1",
                              "1", 0, 1, -1, 2.0, 1.5, True, False, None, [], {},
                              ["env"], ["cmd", "nosuch"], {"numprocesses": "²"},
                              {"cmd": "/bin/true"}, {"graceful_timeout": "x"},
                              {"env": {"A": "1"}}, {"CMD": 1}])
json_scalars = (st.none() | st.booleans() | st.floats(allow_nan=False)
                | st.integers(min_value=-(10 ** 30), max_value=10 ** 30) | st.text(max_size=20))
json_values = st.recursive(json_scalars,
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                               ["cmd", "numprocesses", "graceful_timeout", "env", "uid",
                                "args", "stop_signal", "ready"]), inner, max_size=4),
                           max_leaves=8)

PROPERTY_KEYS = ["name", "nb", "signum", "pid", "process", "keys", "options", "cmd",
                 "start", "children", "recursive", "waiting", "args"]
# Mostly: each known key present or not, with a value commands nearly expect;
# sometimes anything at all.
properties = (st.fixed_dictionaries({}, optional={key: odd_values for key in PROPERTY_KEYS})
              | st.dictionaries(st.sampled_from(PROPERTY_KEYS) | st.text(max_size=6),
                                json_values, max_size=5))
command_names = st.sampled_from(sorted(load_commands())) | st.text(max_size=12)


@st.composite
def request_frames(draw) -> bytes:
    """Mostly well-formed requests for real commands on the real watcher, with odd
    property values; sometimes odd ids, names and envelopes."""
    message: dict[str, Any] = {
        "command": draw(command_names) if draw(st.integers(0, 9)) == 0
        else draw(st.sampled_from(sorted(load_commands())))}
    props = draw(properties)
    if draw(st.integers(0, 4)):
        props["name"] = "web"   # the watcher there is: the commands go deep
    message["properties"] = props
    choice = draw(st.integers(0, 19))
    if choice < 9:
        message["id"] = draw(st.text(max_size=10) | st.integers(0, 1 << 40))
    elif choice == 18:
        message["id"] = draw(json_values)
    elif choice == 19:
        return json.dumps(draw(json_values)).encode()
    return json.dumps(message).encode()


# --------------------------------------------------------------------------- fake supervisor

class FakeWatcher:
    """What the commands use of a Watcher; changes only its own numbers."""

    def __init__(self, name: str, config):
        self.name = name
        self.config = config
        self.numprocesses = config.numprocesses
        self.state = WatcherState.ACTIVE
        self.workers: dict[int, Any] = {}
        self.generation = 1
        self.output = OutputRing()

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "ready": 0,
                "numprocesses": self.numprocesses, "generation": self.generation,
                "processes": 0}

    def status(self) -> dict[str, Any]:
        return {**self.summary(), "restarts": 0, "workers": []}

    def output_stats(self) -> dict[str, dict[str, int]]:
        return {"stdout": {"dropped_lines": 0, "dropped_bytes": 0},
                "stderr": {"dropped_lines": 0, "dropped_bytes": 0}}

    async def _done(self) -> dict[str, Any]:
        return self.summary()

    start = stop = restart = shutdown = _done

    async def reload(self, config=None) -> dict[str, Any]:
        if config is not None:
            self.config = config
        return {**self.summary(), "replaced": 0, "seconds": 0}

    async def incr(self, by: int = 1, limit: int | None = None) -> dict[str, Any]:
        self.numprocesses += by
        return self.summary()

    async def decr(self, by: int = 1) -> dict[str, Any]:
        self.numprocesses = max(0, self.numprocesses - by)
        return self.summary()

    async def set_numprocesses(self, count: int) -> dict[str, Any]:
        self.numprocesses = count
        return self.summary()

    async def replace_config(self, config) -> None:
        self.config = config

    def send_signal(self, signum: int, pid: int | None = None,
                    process_group: bool = False) -> list[int]:
        assert signum in {s.value for s in signal.Signals}
        if pid is not None:
            raise LookupError(f"pid {pid} is not a worker of {self.name}")
        return []


class FakeSupervisor:
    class config:
        path = "/nonexistent/fake.ini"
        globals = GlobalConfig()

    def __init__(self):
        self.watchers = {"web": FakeWatcher("web", WEB_CONFIG)}
        self.sockets: dict[str, Any] = {}
        self.reaper = None
        self.stop_requested = False
        self.stopping = None

    def request_stop(self) -> None:
        self.stop_requested = True

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        pass

    async def reload_config(self) -> dict[str, Any]:
        return {}

    def add_watcher(self, config) -> FakeWatcher:
        watcher = self.watchers[config.name] = FakeWatcher(config.name, config)
        return watcher

    async def remove_watcher(self, name: str) -> None:
        self.watchers.pop(name, None)

    upgrades = 0
    last_upgrade = None
    started_at = 0.0

    async def upgrade(self, after=None) -> dict[str, Any]:
        from sockvisor.upgrade import UpgradeRefused
        raise UpgradeRefused("upgrade refused: not a real sockvisor")


WEB_CONFIG = watcher_from_options("<test>", "web", {"cmd": "/bin/true",
                                                    "env": "SECRET=x"}, {})
OPERATOR = access.Caller(owner=False, max_numprocesses=4)


def reply_to(frames: list[bytes], caller: access.Caller) -> dict[str, Any]:
    return asyncio.run(dispatch(FakeSupervisor(), load_commands(), caller, frames))


def assert_well_formed(reply: dict[str, Any]) -> None:
    assert isinstance(reply, dict)
    json.loads(protocol.encode(reply))
    # Circus's shape: `status NAME` answers with the watcher's state as "status".
    assert isinstance(reply["status"], str) and reply["status"], reply
    if protocol.is_error(reply):
        assert reply["errno"] in set(ErrNo), reply
        assert isinstance(reply["reason"], str) and reply["reason"], reply
        assert not reply["reason"].startswith("internal error"), reply
        assert len(reply["reason"]) <= protocol.MAX_REASON + 20


# --------------------------------------------------------------------------- properties

@SETTINGS
@given(st.binary(max_size=2000))
def test_parse_request_any_bytes(payload):
    try:
        request = protocol.parse_request(payload)
    except CommandError as exc:
        assert exc.reason and exc.errno in set(ErrNo)
    else:
        assert isinstance(request, Request)


@SETTINGS
@given(json_values)
def test_parse_request_any_json(value):
    try:
        request = protocol.parse_request(json.dumps(value).encode())
    except CommandError as exc:
        assert exc.reason and exc.errno in set(ErrNo)
    else:
        assert isinstance(request.command, str) and isinstance(request.properties, dict)


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_dispatch_any_frames(frames):
    assert_well_formed(reply_to(frames, access.OWNER_CALLER))


@settings(SETTINGS, max_examples=400)
@given(request_frames(), st.sampled_from([access.OWNER_CALLER, OPERATOR]))
def test_dispatch_any_request(frame, caller):
    reply = reply_to([frame], caller)
    assert_well_formed(reply)
    if not caller.owner and not protocol.is_error(reply):
        assert "SECRET=x" not in json.dumps(reply) and '"x"' not in json.dumps(
            reply.get("options", {}).get("env", {}))
