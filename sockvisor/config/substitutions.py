"""`$(sockvisor.wid)` and `$(sockvisor.sockets.NAME)` (and the `circus.`
spellings) in cmd/args: known per worker only, so resolved at spawn time.
(`$(sockvisor.env.X)` is resolved by the loader, once.)
"""

from __future__ import annotations

import re
from typing import Mapping

_SUBSTITUTION = re.compile(r"\$\((sockvisor|circus)\.([A-Za-z0-9_.\-]+)\)")


def has_worker_substitution(text: str) -> bool:
    """`text` holds $(sockvisor.wid) or $(sockvisor.sockets.NAME): known per worker only."""
    return bool(_SUBSTITUTION.search(text))


def expand_worker_args(argv: list[str], wid: int, fds: Mapping[str, int]) -> list[str]:
    """Resolve $(sockvisor.wid) and $(sockvisor.sockets.NAME) for one worker."""
    def replace(match: re.Match[str]) -> str:
        ref = match.group(2)
        if ref == "wid":
            return str(wid)
        if ref.startswith("sockets."):
            return str(fds[ref[len("sockets."):]])
        return match.group(0)
    return [_SUBSTITUTION.sub(replace, arg) for arg in argv]

