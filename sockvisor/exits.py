"""How `sockvisor start` ends: its exit statuses, and the error that carries one.

Apart from the supervisor so that what it starts first (the control channel, the
web console) can fail start-up with the right status without importing the
arbiter that imports them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_SOCKET = 3     # an endpoint or a listening socket could not be opened
EXIT_START = 4      # an autostart watcher could not start (start_failure = exit)


class StartupError(Exception):
    """Start-up cannot go on; carries the exit status to use."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
