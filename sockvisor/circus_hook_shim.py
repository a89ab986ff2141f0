"""The child side of a Circus *Python* hook: imports `module.function` and calls it
as circusd would, with stand-ins for circusd's watcher and arbiter objects.

This file is not imported by sockvisor.  hooks.py runs it as the program of a
hook process -- forked and exec'd as the watcher's workers are (their user,
groups, umask, working_dir and environment), never with more rights -- by an
interpreter that reads this file's text from fd 3 (so the worker's user needs
no access to sockvisor's own installation).  It imports nothing from sockvisor.

Its inputs and outputs:
  argv           [hook point, dotted name]  (or ["--resolve", dotted name]:
                 import and check only, for `sockvisor check`)
  fd 4           the context, JSON: watcher name, numprocesses, env, options,
                 processes {pid: {wid, started}}, and the hook's keyword
                 arguments (pid, signum, process_pid, process_status, stats...)
  fd 5           a stream socket to sockvisor, one JSON object per line:
                   -> {"signal": [pid, signum]}   watcher.send_signal: sockvisor
                   <- {"ok": true} | {"error": "..."}   signals its own worker
                   -> {"result": bool, "env": {...}, "stats": {...}}  the answer
                   -> {"raised": "Type: message", "env": {...}}        it raised
  stdout/stderr  the watcher's output (a traceback goes there too)

What the stand-ins offer is what Circus's own hooks and the hooks people write
use: watcher.name, .env (a dict: changes apply to the watcher's next workers,
as in Circus), .numprocesses, .processes ({pid: process with .pid, .wid,
.started}), ._options, .send_signal(pid, signum), .uid/.gid/.working_dir/.cmd
read-only; the arbiter stand-in offers nothing.  Anything else raises
AttributeError naming what is missing -- a hook that needs circusd's internals
fails loudly (Circus's "the hook raised": False, or ignored for the hook points
Circus ignores) instead of silently doing nothing.
"""

import importlib
import json
import os
import socket
import sys
import traceback

CONTEXT_FD = 4
CHANNEL_FD = 5


class _Missing:
    """Attribute access that says what sockvisor's stand-in does not offer."""

    _what = "object"
    _offers: tuple = ()

    def __getattr__(self, name):
        raise AttributeError(
            f"sockvisor runs Circus hooks outside circusd: circusd's {self._what}.{name} "
            f"does not exist there (offered: {', '.join(self._offers)}); "
            f"rewrite the hook without it, or as a command")


class Process(_Missing):
    _what = "Process"
    _offers = ("pid", "wid", "started", "send_signal")

    def __init__(self, watcher, pid, wid, started):
        self.pid, self.wid, self.started = pid, wid, started
        self._watcher = watcher

    def send_signal(self, signum):
        self._watcher.send_signal(self.pid, signum)


class Watcher(_Missing):
    _what = "Watcher"
    _offers = ("name", "env", "numprocesses", "processes", "_options", "send_signal",
               "uid", "gid", "working_dir", "cmd", "args", "stop_signal",
               "graceful_timeout", "arbiter")

    def __init__(self, context, channel):
        self.name = context["watcher"]
        self.env = dict(context["env"])
        self.numprocesses = context["numprocesses"]
        self._options = dict(context["options"])
        for key in ("uid", "gid", "working_dir", "cmd", "args", "stop_signal",
                    "graceful_timeout"):
            setattr(self, key, context["fields"].get(key))
        self.processes = {int(pid): Process(self, int(pid), info["wid"], info["started"])
                          for pid, info in context["processes"].items()}
        self._channel = channel
        self.arbiter = None

    def send_signal(self, pid, signum):
        """Ask sockvisor to signal one of this watcher's workers (it knows whether
        `pid` is still that worker; a bare kill() could hit a reused pid)."""
        reply = self._channel.ask({"signal": [int(pid), int(signum)]})
        if "error" in reply:
            raise OSError(reply["error"])


class Arbiter(_Missing):
    """circusd's arbiter: its watchers and sockets are sockvisor's, and a hook
    that reaches into them gets an AttributeError saying so."""
    _what = "Arbiter"
    _offers = ("nothing: use sockvisorctl from the hook",)


class Channel:
    """Line-delimited JSON over fd 5."""

    def __init__(self, fd):
        self._sock = socket.socket(fileno=fd)
        self._reader = self._sock.makefile("rb")

    def send(self, message):
        self._sock.sendall(json.dumps(message, default=str).encode() + b"\n")

    def ask(self, message):
        self.send(message)
        line = self._reader.readline()
        if not line:
            raise OSError("sockvisor closed the hook's channel")
        return json.loads(line)


def resolve(name):
    """Circus's resolve_name: `module:object` or `module.object`."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
    else:
        module_name, _, attribute = name.rpartition(".")
    module = importlib.import_module(module_name)
    target = module
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{name} is not callable")
    return target


def _read_context():
    with os.fdopen(CONTEXT_FD, "rb") as stream:
        return json.loads(stream.read())


def main(argv):
    # The hook runs in its working_dir; Circus imports from circusd's sys.path,
    # which the watcher's PYTHONPATH extends -- both are in effect here, and so
    # is the working directory, as `python -c` puts it first.
    sys.path.insert(0, os.getcwd())
    if argv[0] == "--resolve":
        try:
            resolve(argv[1])
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        return 0
    point, name = argv
    context = _read_context()
    channel = Channel(CHANNEL_FD)
    watcher = None
    try:
        hook = resolve(name)
        watcher = Watcher(context, channel)
        watcher.arbiter = arbiter = Arbiter()
        kwargs = dict(context["kwargs"])
        result = hook(watcher=watcher, arbiter=arbiter, hook_name=point, **kwargs)
    except Exception as exc:
        traceback.print_exc()
        raised = {"raised": f"{type(exc).__name__}: {exc}"}
        if watcher is not None:   # Circus keeps what it changed before raising
            raised["env"] = watcher.env
        channel.send(raised)
        return 0
    answer = {"result": bool(result), "env": watcher.env}
    if "stats" in kwargs:
        answer["stats"] = kwargs["stats"]
    channel.send(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
