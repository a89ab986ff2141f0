"""Reading Circus's `hooks.NAME = ...` keys: a command, or a refused dotted path.

Circus hooks are Python callables that circusd imports and calls with its own
Watcher and Arbiter objects (`hook(watcher, arbiter, hook_name, **kwargs)`);
their return value is the answer.  Those objects exist only inside circusd, so
sockvisor cannot call such a function.  It runs hooks as *commands* instead
(sockvisor/hooks.py): exit status 0 is Circus's True, anything else its False.

How a value is told apart (documented in the README):
  * a bare dotted name -- identifiers joined by dots and nothing else, such as
    `mycoolapp.myplugins.check_redis` -- is what Circus configs contain: a Python
    callable.  It is refused with a message that says how to write it as a
    command.  (A program whose name looks like that -- `check.sh` -- is written
    with its path: `./check.sh`, `/usr/local/bin/check.sh`, or with arguments.)
  * anything else is a command, split into words as `cmd` is.
  * Circus's optional `, BOOL` after the value (`hooks.before_start = x.y, true`:
    ignore the hook's failures) is taken off first: a trailing comma followed by
    a boolean word.
"""

from __future__ import annotations

import re

from sockvisor.config.model import HookCommand
from sockvisor.config.values import split_words

# Circus 0.19's hook points, in the order of a watcher's life.
HOOK_POINTS = ("before_start", "after_start", "before_spawn", "after_spawn",
               "before_signal", "after_signal", "before_reap", "after_reap",
               "before_stop", "after_stop")

# What a hook gets in its environment besides the watcher's (hooks.py sets them).
CONTEXT_VARIABLES = ("SOCKVISOR_HOOK", "SOCKVISOR_WATCHER", "SOCKVISOR_PID",
                     "SOCKVISOR_WID", "SOCKVISOR_SIGNAL", "SOCKVISOR_EXIT_CODE")

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_FLAG = re.compile(r"(.*?)\s*,\s*(true|false|yes|no|on|off|1|0)\s*", re.IGNORECASE | re.DOTALL)
_TRUE = ("true", "yes", "on", "1")


def parse_hook(raw: str) -> HookCommand:
    """`hooks.NAME`'s value: a HookCommand, or ValueError (a dotted path, no words)."""
    text = raw.strip()
    ignore_failure = False
    flagged = _FLAG.fullmatch(text)
    if flagged:
        text, ignore_failure = flagged.group(1), flagged.group(2).lower() in _TRUE
    if _DOTTED.fullmatch(text):
        raise ValueError(dotted_path_message(text))
    try:
        words = split_words(text)
    except ValueError as exc:
        raise ValueError(f"cannot split into words: {exc}") from None
    if not words:
        raise ValueError("must not be empty")
    return HookCommand(tuple(words), ignore_failure)


def dotted_path_message(name: str) -> str:
    module, _, function = name.rpartition(".")
    return (
        f"not supported as Circus writes it: {name!r} is a Python function, which Circus imports and calls inside circusd "
        f"with circusd's own watcher and arbiter objects; sockvisor runs a hook as a "
        f"command instead, and its exit status is the answer (0: True, anything else: "
        f"False).  Those objects exist only inside circusd, so the function cannot be "
        f"called as it is: rewrite what it checks as a program that reads the hook's "
        f"context from its environment ({', '.join(CONTEXT_VARIABLES)}) and exits 0 "
        f"for True, e.g. `python3 -c 'import sys, {module}; "
        f"sys.exit(0 if {module}.{function}() else 1)'` for a function that needs no "
        f"watcher.  A program whose name looks like a dotted name is given with its "
        f"path (./{name})")


def describe_hook(hook: HookCommand | None) -> str | None:
    """The command as `options`/`get` show it (None: no hook)."""
    if hook is None:
        return None
    import shlex
    text = " ".join(shlex.quote(word) for word in hook.argv)
    return f"{text}, true" if hook.ignore_failure else text
