"""Run one control command: the single implementation behind every transport.

The ZeroMQ channel (control/server.py) and the HTTP API (http/api.py) both end
here with a command name, its properties and who the caller is (access.py);
the access check, the redaction of secrets, the command itself and the mapping
of failures onto error replies are the same whichever way the request came in.  What each transport
adds is only its own framing: ZeroMQ envelopes, HTTP status codes and tokens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sockvisor.control import access, protocol
from sockvisor.control.commands import load_commands
from sockvisor.control.protocol import CommandError, ErrNo

if TYPE_CHECKING:
    from sockvisor.control.host import Host

log = logging.getLogger("sockvisor.control")


async def run_command(supervisor: "Host", name: str, properties: dict[str, Any],
                      *, caller: access.Caller, request_id: Any = None,
                      commands: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reply (protocol.ok or protocol.error) to one request; never raises
    for anything a client can cause."""
    command = (load_commands() if commands is None else commands).get(name)
    if command is None:
        return protocol.error(request_id, f"unknown command: {name!r}",
                              ErrNo.UNKNOWN_COMMAND)
    try:
        access.authorize(command, properties, caller)
        access.set_current(caller)   # this task's: for the scaling bound
        result = access.redact(await command.execute(supervisor, properties), caller)
    except CommandError as exc:
        return protocol.error(request_id, exc.reason, exc.errno)
    except asyncio.CancelledError:
        return protocol.error(request_id, "cancelled: sockvisor is stopping",
                              ErrNo.COMMAND_ERROR)
    except OSError as exc:
        return protocol.error(request_id, str(exc), ErrNo.OS_ERROR)
    except Exception as exc:   # a bug: report it, keep serving
        log.exception("control: command %s failed", name)
        return protocol.error(request_id, f"internal error: {exc}", ErrNo.COMMAND_ERROR)
    return protocol.ok(request_id, result)
