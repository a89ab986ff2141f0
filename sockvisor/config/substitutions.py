"""`$(sockvisor.wid)` and `$(sockvisor.sockets.NAME)` (and the `circus.`
spellings) in cmd/args: known per worker only, so resolved at spawn time.
(`$(sockvisor.env.X)` is resolved by the loader, once -- unless a Python hook
may still set X: then here, from the worker's environment.)
"""

from __future__ import annotations

import re
from typing import Mapping

_SUBSTITUTION = re.compile(r"\$\((sockvisor|circus)\.([A-Za-z0-9_.\-]+)\)")


def has_worker_substitution(text: str) -> bool:
    """`text` holds $(sockvisor.wid) or $(sockvisor.sockets.NAME): known per worker only."""
    return bool(_SUBSTITUTION.search(text))


def expand_worker_args(argv: list[str], wid: int, fds: Mapping[str, int],
                       env: Mapping[str, str] | None = None) -> list[str]:
    """Resolve $(sockvisor.wid) and $(sockvisor.sockets.NAME) for one worker, and
    with `env` a $(sockvisor.env.X) the loader left for spawn time (a Python hook
    may set X: config/loader.py's defer_env); KeyError names an X still unset."""
    def replace(match: re.Match[str]) -> str:
        ref = match.group(2)
        if ref == "wid":
            return str(wid)
        if ref.startswith("sockets."):
            return str(fds[ref[len("sockets."):]])
        if ref.startswith("env.") and env is not None:
            name = ref[len("env."):]
            if name not in env:
                raise KeyError(name)
            return env[name]
        return match.group(0)
    return [_SUBSTITUTION.sub(replace, arg) for arg in argv]
