"""Who may do what on the control channel: the one place it is decided.

Two kinds of caller (server.py tells them apart by the endpoint a request came
in on: ZeroMQ's ipc transport does not say who the peer is):

* the **owner** -- sockvisor's own user, on the 0600 endpoint: everything;
* an **operator** -- a member of `endpoint_group`, on the 0660 endpoint.

Operators operate: they look (status, list, stats, options with env values
redacted, ...), reload, restart, start, scale within a maximum the config sets.
They never decide what runs, as whom, with which secrets, and never stop the
service for everyone -- unless `endpoint_group_grants` grants that one thing.
The README's "Control" section has the whole table.

Each command declares what it needs (`Command.access`, or `Command.requires(props)`
where it depends on the request: which options `set` changes, which signal
`signal` sends); the server calls `authorize` before running it, and `redact` on
what it answers.  Scaling is the one right whose bound depends on the watcher's
current count: `incr`, `decr` and `set numprocesses` apply it through `scaling`,
under a lock per watcher, so concurrent requests cannot add up past the maximum.
A command that declares nothing is the owner's: a new command is safe by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from sockvisor.control.protocol import CommandError, ErrNo

if TYPE_CHECKING:
    from sockvisor.config import GlobalConfig
    from sockvisor.control.commands.base import Command
    from sockvisor.watcher import Watcher

# What a command needs (besides a grant word from config.ENDPOINT_GROUP_GRANTS):
OPERATE = "operate"   # any operator may
OWNER = "owner"       # the owner only; no grant gives it (what runs, as whom, where)

# Signals that ask a program to do something and leave it running (reopen logs,
# reload, gunicorn's TTIN/TTOU): operating.  Any other one (TERM, KILL, STOP, ...)
# can take the service down and needs the `signal` grant.
OPERATING_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                               signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU,
                               signal.SIGCONT})

# `set` options an operator may change: how the watcher is operated, not what it
# runs or how it restarts (a tiny ready_timeout or a huge backoff can keep it down).
OPERATOR_OPTIONS = frozenset({"numprocesses", "graceful_timeout", "reload_batch"})

WORKERS_PER_CPU = 4   # the default maximum an operator may scale a watcher to

REDACTED = "<redacted>"


@dataclass(frozen=True)
class Caller:
    owner: bool
    grants: frozenset[str] = frozenset()
    max_numprocesses: int = 0   # for an operator without the `scale` grant

    def may(self, grant: str) -> bool:
        return self.owner or grant in self.grants


OWNER_CALLER = Caller(owner=True)

# The caller of the request being run (each request is its own task, hence its
# own context).  Code that runs a command directly, not for a client, is the owner.
_current: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "sockvisor_control_caller", default=OWNER_CALLER)


def operator(globals_: "GlobalConfig") -> Caller:
    """The rights of `endpoint_group` members under this config."""
    maximum = globals_.endpoint_group_max_numprocesses
    if maximum is None:
        maximum = WORKERS_PER_CPU * (os.cpu_count() or 1)
    return Caller(owner=False, grants=frozenset(globals_.endpoint_group_grants),
                  max_numprocesses=maximum)


# What a holder of the web console's token may do beyond `operate` (which every
# non-owner caller has): the console's own actions (issue 12: stop and signal
# from the page).  The whole set, fixed: never `quit`, `rm`, `secrets` or
# `scale`, whatever `endpoint_group_grants` gives the group -- those grants are
# for the group's members on the ZeroMQ endpoint, not for an HTTP client -- and
# never the owner's rights: nothing reachable over HTTP decides what runs or as
# whom.
CONSOLE_GRANTS = frozenset({"stop", "signal"})


def console(globals_: "GlobalConfig") -> Caller:
    """The rights of a web-console request (actions need its token: http/api.py):
    CONSOLE_GRANTS, and an operator's scaling maximum."""
    return Caller(owner=False, grants=CONSOLE_GRANTS,
                  max_numprocesses=operator(globals_).max_numprocesses)


def current() -> Caller:
    return _current.get()


def set_current(caller: Caller) -> None:
    """Run the rest of this task (one request) as `caller`."""
    _current.set(caller)


def forbidden(what: str, needs: str) -> CommandError:
    if needs == OWNER:
        return CommandError(f"{what} is only allowed on sockvisor's owner endpoint",
                            ErrNo.FORBIDDEN)
    return CommandError(f"{what} is not allowed on the group endpoint unless the "
                        f"config grants it (endpoint_group_grants = {needs})",
                        ErrNo.FORBIDDEN)


def authorize(command: "Command", props: dict[str, Any], caller: Caller) -> None:
    """Raise FORBIDDEN unless `caller` may run `command` with `props`."""
    if caller.owner:
        return
    needs = command.requires(props)
    if needs == OPERATE or (needs != OWNER and needs in caller.grants):
        return
    raise forbidden(command.describe(props), needs)


def redact(result: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """What `caller` may see of a command's result: env values are secrets."""
    if caller.may("secrets"):
        return result
    options = result.get("options")
    if isinstance(options, dict) and isinstance(options.get("env"), dict):
        options = {**options, "env": {key: REDACTED for key in options["env"]}}
        result = {**result, "options": options}
    return result


def signal_needs(signum: int) -> str:
    return OPERATE if signum in OPERATING_SIGNALS else "signal"


# --------------------------------------------------------------------------- scaling

_scaling_locks: "weakref.WeakKeyDictionary[Watcher, asyncio.Lock]" = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def scaling(watcher: "Watcher", target: Callable[[int], int]) -> AsyncIterator[None]:
    """Check, for the current caller, that changing `watcher`'s worker count to
    `target(current count)` is allowed, and keep other operators' scaling of it
    waiting until the change (the body) is made."""
    caller = current()
    if caller.owner:
        yield
        return
    lock = _scaling_locks.setdefault(watcher, asyncio.Lock())
    async with lock:
        check_count(caller, watcher.name, watcher.numprocesses,
                    target(watcher.numprocesses))
        yield


def check_count(caller: Caller, name: str, current_count: int, wanted: int) -> None:
    if caller.owner:
        return
    if wanted == 0 < current_count and not caller.may("stop"):
        raise forbidden(f"scaling {name} to 0 workers (a stop)", "stop")
    if (wanted > current_count and wanted > caller.max_numprocesses
            and not caller.may("scale")):
        raise CommandError(f"{name}: the group endpoint may scale a watcher to at most "
                           f"{caller.max_numprocesses} workers "
                           "(endpoint_group_max_numprocesses), not "
                           f"{wanted}", ErrNo.FORBIDDEN)
