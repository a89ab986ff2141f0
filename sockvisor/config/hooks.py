"""Reading Circus's `hooks.NAME = ...` keys: a Python callable or a command.

Circus hooks are Python callables that circusd imports and calls with its own
Watcher and Arbiter objects (`hook(watcher, arbiter, hook_name, **kwargs)`);
their return value is the answer.  sockvisor runs either kind (hooks.py):

  * a bare dotted name -- identifiers joined by dots and nothing else, such as
    `mycoolapp.myplugins.check_redis`, or Circus's `module:function` -- is what
    Circus configs contain: a Python callable (HookPython).  It is imported and
    called in a process of its own, as the watcher's user, with stand-ins for
    circusd's objects (circus_hook_shim.py).  A program whose name looks like
    that -- `check.sh` -- is written with its path: `./check.sh`.
  * anything else is a command (HookCommand), split into words as `cmd` is;
    exit status 0 is True, anything else False.
  * Circus's optional `, BOOL` after the value (`hooks.before_start = x.y, true`:
    ignore the hook's failures) is taken off first: a trailing comma followed by
    a boolean word.

`extended_stats` (Circus's hook for `stats --extended`) takes a Python callable
only: it edits a dict, which a command cannot.
"""

from __future__ import annotations

import os
import re
import sys

from sockvisor.config.model import HookCommand, HookPython, WatcherConfig
from sockvisor.config.values import split_words

# Circus 0.19's hook points, in the order of a watcher's life.
HOOK_POINTS = ("before_start", "after_start", "before_spawn", "after_spawn",
               "before_signal", "after_signal", "before_reap", "after_reap",
               "before_stop", "after_stop")

# Circus's hook for `stats --extended` (a Python callable only).
STATS_HOOK = "extended_stats"

# What a hook gets in its environment besides the watcher's (hooks.py sets them).
CONTEXT_VARIABLES = ("SOCKVISOR_HOOK", "SOCKVISOR_WATCHER", "SOCKVISOR_PID",
                     "SOCKVISOR_WID", "SOCKVISOR_SIGNAL", "SOCKVISOR_EXIT_CODE")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# `a.b.c` or Circus's `a.b:c` (circus.util.resolve_name reads both).
_DOTTED = re.compile(rf"{_NAME}(?:\.{_NAME})*(?::{_NAME}(?:\.{_NAME})*|(?:\.{_NAME})+)")
_FLAG = re.compile(r"(.*?)\s*,\s*(true|false|yes|no|on|off|1|0)\s*", re.IGNORECASE | re.DOTALL)
_TRUE = ("true", "yes", "on", "1")


def parse_hook(raw: str) -> HookCommand | HookPython:
    """`hooks.NAME`'s value: a HookPython (a dotted name), a HookCommand, or
    ValueError (no words)."""
    text, ignore_failure = _take_flag(raw)
    if _DOTTED.fullmatch(text):
        return HookPython(text, ignore_failure)
    try:
        words = split_words(text)
    except ValueError as exc:
        raise ValueError(f"cannot split into words: {exc}") from None
    if not words:
        raise ValueError("must not be empty")
    return HookCommand(tuple(words), ignore_failure)


def parse_stats_hook(raw: str) -> HookPython:
    """`hooks.extended_stats`: a Python callable only."""
    text, ignore_failure = _take_flag(raw)
    if not _DOTTED.fullmatch(text):
        raise ValueError(f"{text!r} is not a Python callable (module.function): "
                         "extended_stats edits the stats of `stats --extended`, "
                         "which only a Python function can do")
    return HookPython(text, ignore_failure)


def _take_flag(raw: str) -> tuple[str, bool]:
    text = raw.strip()
    flagged = _FLAG.fullmatch(text)
    if flagged:
        return flagged.group(1), flagged.group(2).lower() in _TRUE
    return text, False


def describe_hook(hook: HookCommand | HookPython | None) -> str | None:
    """The hook as `options`/`get` show it (None: no hook)."""
    if hook is None:
        return None
    import shlex
    text = (hook.target if isinstance(hook, HookPython)
            else " ".join(shlex.quote(word) for word in hook.argv))
    return f"{text}, true" if hook.ignore_failure else text


def python_for_hooks(config: WatcherConfig) -> str:
    """The interpreter of `config`'s Python hooks: hook_python, else the
    virtualenv's python (its packages are the watcher's), else sockvisor's own
    (Circus calls hooks inside circusd, under its interpreter)."""
    if config.hook_python:
        return config.hook_python
    if config.virtualenv:
        return os.path.join(config.virtualenv, "bin", "python")
    return sys.executable


def hook_program(config: WatcherConfig, hook: HookCommand | HookPython) -> str:
    """The program a hook's process execs: the command's, or the interpreter."""
    return python_for_hooks(config) if isinstance(hook, HookPython) else hook.argv[0]


def python_hook_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a Python hook's process: Circus imports hooks with circusd's
    own sys.path, which the watcher's PYTHONPATH extends -- so sockvisor's own
    PYTHONPATH (`PYTHONPATH=/src sockvisor start ...`) follows the watcher's."""
    own = os.environ.get("PYTHONPATH", "")
    if own:
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), own) if p)
    return env
