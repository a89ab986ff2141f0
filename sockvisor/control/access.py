"""Who may do what on the control channel: the one place it is decided.

Two kinds of caller.  On ipc endpoints server.py tells them apart by the
endpoint a request came in on (ZeroMQ's ipc transport does not say who the peer
is).  A loopback tcp:// endpoint leads to those ipc endpoints: relay.py sends
each connection to the endpoint of the rights `caller_for_uid` gives the uid
the kernel records on the client's socket (peer.py):

* the **owner** -- sockvisor's own user (or root), on the 0600 endpoint or from
  a socket of theirs: everything;
* an **operator** -- a member of `endpoint_group`, on the 0660 endpoint or from
  a socket of theirs;
* anyone else is refused on tcp (on ipc the file's mode already keeps them out).

Operators operate: they look (status, list, stats, options with env values
redacted, ...), reload, restart, start, scale within a maximum the config sets,
and send the signals the watcher's own `operator_signals` lists (none by default).
They never decide what runs, as whom, with which secrets, and never stop the
service for everyone -- unless `endpoint_group_grants` grants that one thing.
The README's "Control" section has the whole table.

Each command declares what it needs (`Command.access`, or `Command.requires(props)`
where it depends on the request: which options `set` changes, which signal
`signal` sends); the server calls `authorize` before running it, and `redact` on
what it answers.  Two rights depend on the watcher, which `authorize` does not
know, so the command checks them here once it has it: scaling, whose bound
depends on the watcher's current count (`incr`, `decr` and `set numprocesses`
apply it through `scaling`, under a lock per watcher, so concurrent requests
cannot add up past the maximum), and signals (`check_signal`: the watcher's
`operator_signals`).
A command that declares nothing is the owner's: a new command is safe by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import pwd
import signal
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from sockvisor.config import options as _registry
from sockvisor.control.protocol import CommandError, ErrNo

if TYPE_CHECKING:
    from sockvisor.config import GlobalConfig
    from sockvisor.control.commands.base import Command
    from sockvisor.watcher import Watcher

# What a command needs (besides a grant word from config.ENDPOINT_GROUP_GRANTS):
OPERATE = "operate"   # any operator may
OWNER = "owner"       # the owner only; no grant gives it (what runs, as whom, where)

# No signal is "operating" by itself: HUP, USR1 and USR2 kill a program that
# does not handle them (a member HUP-ing each respawned worker took the watcher
# FATAL), and USR1 opens Node's debugger.  Which ones a watcher's program takes
# as a request is for its config to say (`operator_signals`, checked by
# `check_signal`); any other needs the `signal` grant.

# `set` options an operator may change: how the watcher is operated, not what it
# runs or how it restarts (a tiny ready_timeout or a huge backoff can keep it
# down), nor how long a stop may take (graceful_timeout: a huge one made stops,
# and everything queued behind them, hang).  Declared per option in the
# registry (`who = Who.OPERATOR`, config/options.py).
OPERATOR_OPTIONS = _registry.OPERATOR_OPTIONS

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


def caller_for_uid(uid: int, group: int | None, operator_rights: Caller) -> Caller | None:
    """The rights of a loopback tcp peer whose socket belongs to `uid`: the
    owner's for sockvisor's own user and root, `operator_rights` for a member of
    `group`, None (refuse) for anyone else.

    A socket carries a uid, not its creator's groups, so membership is what the
    user database says (primary group or getgrouplist), as at login -- not a
    `newgrp` or setgroups of the moment.  May consult NSS: call it off the loop."""
    if uid in (0, os.geteuid()):
        return OWNER_CALLER
    if group is None:
        return None
    try:
        entry = pwd.getpwuid(uid)
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except (KeyError, OSError):
        return None   # a uid without a user: in no group
    return operator_rights if group in groups else None


def who(uid: int) -> str:
    """"uid 65534 (nobody)", as far as the user database knows."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


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


def check_signal(watcher: "Watcher", signum: int) -> None:
    """Raise FORBIDDEN unless the current caller may send `signum` to `watcher`:
    with the `signal` grant, or if the watcher's config lists it in
    `operator_signals`."""
    caller = current()
    if caller.may("signal") or signum in watcher.config.operator_signals:
        return
    raise forbidden(f"signal {signal.Signals(signum).name} (not in {watcher.name}'s "
                    "operator_signals)", "signal")


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
