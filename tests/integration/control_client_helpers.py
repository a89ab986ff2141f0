"""Kept for compatibility: the control-channel helpers now live in control_helpers.py
(the canonical module), the worker program in tests/http_worker.py and the client
load in tests/http_load.py.  New tests import from those.

This module re-exports the names tests have imported from it, and keeps the older
face of its `Load` (`Load(port, threads=2, timeout=5.0)`, `results`, and `failures`
as a list of strings rather than a method) over `http_load.Load`.
"""

from __future__ import annotations

from typing import Any

import http_load
from control_helpers import (  # noqa: F401 - re-exported
    Events, alone, bare_sockvisor, call, describe, echo_worker_cmd, endpoint_of, fd_link,
    listen_backlog, ok, pids_of, port_of, raw_exchange, raw_reply, run_ctl, run_ctl_alone,
    sockets_of, subscribed, sync_events)


class Load(http_load.Load):
    """`http_load.Load` as this module had it: `Load(port, threads=2, timeout=5.0)`,
    `results` (every answer) and `failures` (one string per failed request)."""

    def __init__(self, port: int, threads: int = 2, timeout: float = 5.0, **bounds: Any):
        super().__init__(port, threads=threads, timeout=timeout, **bounds)

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.answers()

    @property
    def failures(self) -> list[str]:   # type: ignore[override]
        return [f"{s.started:.3f} {s.kind}: {s.error}" for s in self.snapshot()
                if s.pid is None]
