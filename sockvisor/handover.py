"""The state one sockvisor hands to the next across an upgrade (`sockvisorctl upgrade`).

sockvisor upgrades itself by exec'ing the installed code in its own process
(upgrade.py): same pid, so every worker stays its child and systemd's MAINPID
stays right.  Everything the running process knows that the new one cannot
find out again travels in one JSON document on a memfd whose fd the new
process is given (`sockvisor start CONF --resume FD`).  The fds the document
names (listening sockets, worker pipes, the workers' notify socket, exec-status
pipes) are inherited: close-on-exec is cleared on exactly those, just before
execve, and set again as the new process takes them (`take_fds`).

Format 1 (a JSON object; every time is either a remaining duration in seconds
or a CLOCK_MONOTONIC reading, which the kernel keeps across exec):

  format          1 (a reader refuses a format it does not know: the pre-flight
                  run of the new code says so and the upgrade does not happen)
  version         the sockvisor version that wrote it
  written_at      time.time() just before execve (the gap is measured from it)
  pid             the pid that wrote it (a resume checks it is still its own)
  started_at      when this sockvisor was first started (time.time())
  upgrades        how many upgrades it has been through
  config          the config as running: `path`; `globals`, `sockets` (by name)
                  as encoded dataclasses; `watchers` by name, each the option
                  values of its WatcherConfig (config.current_values, so changes
                  made by `set`, `incr` and `add` are kept; `uid` as {"$uid": N},
                  its passwd entry looked up again on reading) -- never INI text
  shared_inodes   the sorted inodes of every listening socket this sockvisor
                  (or one before it) ever handed to workers, closed ones too:
                  control/peer.py refuses a control client connecting through
                  one; optional (a state without it: none carried over)
  sockets         the socket table: name, fd, address, adopted (from the service
                  manager, else bound by us), unix_inode, relistened; optional:
                  `bound_at` (an inet socket's address as first bound, the port
                  the kernel chose included: what a repair binds again, whatever
                  a worker has done to the socket meanwhile; without it, the
                  socket's address when taken back)
  readiness       the workers' NOTIFY_SOCKET: fd and address
  control         the control and events endpoints (re-bound at the same places),
                  or null; optional in it: `relays` (by tcp endpoint, the fds of
                  the relay's listening sockets, taken over instead of bound again)
                  and `marked` (the ipc paths left with a PATH.upgrading marker)
  cgroup          the run's cgroup directory, or null
  adopts_orphans  whether we are PID 1 or a child subreaper
  nofile_started_with  the soft RLIMIT_NOFILE workers get back (fdlimit.py),
                  or null; optional (a state without it: none carried over)
  ready_reported  whether READY=1 was sent to the service manager
  stream_pending  bytes sockvisor had not yet written to its own stdout/stderr
                  (base64, by fd number)
  watchers        a list of Watcher.snapshot(): name, state, generation,
                  numprocesses, fatal_reason, restart counters, the restart
                  tracker's history (monotonic times), backoff_remaining, wids,
                  `output` (the `logs` ring: seq and the last lines per stream,
                  optional), and `workers`: Worker.snapshot() each (pid, wid, generation,
                  state, started_at, ready_at, exec_ok, stop_requested,
                  ready_failed, status_fd, status_text, cgroup leaf, `config`:
                  null if the watcher's own, else its option values) with
                  `stdout`/`stderr`: the read end of its pipe and the partial
                  line read but not yet emitted (base64)

Values are JSON with a few tagged forms for what JSON lacks: {"$tuple": [...]},
{"$frozenset": [...]}, {"$bytes": base64}, {"$enum": "module:Name", "value": v},
{"$dc": "module:Name", "fields": {...}} (a dataclass: its init fields; one a
newer version added takes its default), {"$dict": [[key, value], ...]} for a
mapping whose keys are not all strings.  Only classes of sockvisor, `signal`
and `socket` are ever named, and decoding resolves no other module.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import importlib
import json
import os
from typing import Any, Iterable, Mapping

FORMAT = 1
READABLE_FORMATS = (1,)   # what this version resumes from
MAX_STATE = 64 << 20      # a state larger than this is refused as corrupt
_MODULES = ("sockvisor", "signal", "socket")


class StateError(Exception):
    """The state cannot be written or read; the message says why."""


# --------------------------------------------------------------------------- values

def encode(value: Any) -> Any:
    """`value` as JSON-able data, with the tagged forms of the module docstring."""
    if value is None or isinstance(value, (str, float)) or type(value) in (bool, int):
        return value
    if isinstance(value, enum.Enum):
        return {"$enum": _name_of(type(value)), "value": encode(value.value)}
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, (frozenset, set)):
        return {"$frozenset": [encode(v) for v in sorted(value, key=repr)]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$dc": _name_of(type(value)),
                "fields": {f.name: encode(getattr(value, f.name))
                           for f in dataclasses.fields(value) if f.init}}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"$dict": [[encode(k), encode(v)] for k, v in value.items()]}
    raise StateError(f"cannot hand over a value of type {type(value).__name__}")


def decode(data: Any) -> Any:
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "$tuple" in data:
        return tuple(decode(v) for v in data["$tuple"])
    if "$frozenset" in data:
        return frozenset(decode(v) for v in data["$frozenset"])
    if "$bytes" in data:
        return base64.b64decode(data["$bytes"])
    if "$enum" in data:
        return _resolve(data["$enum"])(decode(data["value"]))
    if "$dc" in data:
        cls = _resolve(data["$dc"])
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        fields = {k: decode(v) for k, v in data["fields"].items()}
        unknown = set(fields) - known
        if unknown:
            raise StateError(f"{data['$dc']}: fields this version does not know: "
                             f"{', '.join(sorted(unknown))}")
        return cls(**fields)
    if "$dict" in data:
        return {decode(k): decode(v) for k, v in data["$dict"]}
    return {k: decode(v) for k, v in data.items()}


def _name_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: str) -> Any:
    module_name, _, qualname = str(name).partition(":")
    if module_name.split(".")[0] not in _MODULES:
        raise StateError(f"the state names {name!r}, outside sockvisor")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise StateError(f"the state names {name!r}, which this version lacks: "
                         f"{exc}") from None
    return target


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


# --------------------------------------------------------------------------- the memfd

def write(state: dict[str, Any]) -> int:
    """`state` on a new memfd (close-on-exec, offset 0); its fd."""
    return memfd("sockvisor-state", json.dumps(state, separators=(",", ":")).encode())


def memfd(name: str, data: bytes) -> int:
    """A new anonymous file (close-on-exec) holding `data`, at offset 0: what a
    process this one execs (or forks) reads from its start; its fd."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(fd: int) -> dict[str, Any]:
    """The state on `fd` (read from offset 0 with pread: the fd is not moved),
    checked to be a format this version reads; StateError otherwise."""
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise StateError(f"state fd {fd}: {exc.strerror}") from None
    if size > MAX_STATE:
        raise StateError(f"state fd {fd}: {size} bytes, more than a state can be")
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    try:
        state = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise StateError(f"state fd {fd}: not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise StateError(f"state fd {fd}: not a JSON object")
    if state.get("format") not in READABLE_FORMATS:
        raise StateError(f"state format {state.get('format')!r} (written by sockvisor "
                         f"{state.get('version', '?')}) is not one this version reads "
                         f"({', '.join(map(str, READABLE_FORMATS))})")
    return state


# --------------------------------------------------------------------------- fds

def named_fds(state: Mapping[str, Any]) -> list[int]:
    """Every fd the state names: what must survive the exec, and nothing else."""
    fds = [entry["fd"] for entry in state.get("sockets", [])]
    readiness = state.get("readiness")
    if readiness:
        fds.append(readiness["fd"])
    for relay_fds in (state.get("control") or {}).get("relays", {}).values():
        fds.extend(relay_fds)
    for watcher in state.get("watchers", []):
        for worker in watcher["workers"]:
            for stream in ("stdout", "stderr"):
                if worker.get(stream):
                    fds.append(worker[stream]["fd"])
            if worker.get("status_fd") is not None:
                fds.append(worker["status_fd"])
    return fds


def set_inheritable(fds: Iterable[int], inheritable: bool) -> None:
    """Clear (or set again) close-on-exec on exactly `fds`."""
    for fd in fds:
        os.set_inheritable(fd, inheritable)


def take_fds(state: Mapping[str, Any], state_fd: int) -> None:
    """The resumed process owns the named fds: close-on-exec again on every one
    of them (a worker forked from here must not inherit another's pipe), and the
    state's own memfd is closed once read."""
    set_inheritable(named_fds(state), False)
    os.close(state_fd)
