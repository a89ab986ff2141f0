"""The control protocol: one JSON frame per request and per reply, in Circus's shape.

Request:  {"id": "...", "command": "status", "properties": {...}}
Reply:    {"id": "...", "status": "ok", "time": 1700000000.0, ...}
Error:    {"id": "...", "status": "error", "reason": "...", "errno": 3, "time": ...}

The errno values are Circus's (so `circusctl` prints our errors correctly), plus
FORBIDDEN for a command that the endpoint it arrived on may not run.  Events
go out on a PUB socket as two frames: [topic, json], topic like `watcher.web.spawn`.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any, NamedTuple

MAX_REQUEST_BYTES = 1 << 20      # a bigger frame gets an error reply
# libzmq drops the peer beyond this.  It bounds what one peer can make libzmq
# queue in sockvisor: server.RCVHWM messages of at most this size.
MAX_SOCKET_MESSAGE = 4 << 20
MAX_ID_LENGTH = 256              # a request id is echoed in the reply: keep it short
MAX_REASON = 2000                # error reasons quote client input: keep replies small


class ErrNo(enum.IntEnum):
    NOT_SPECIFIED = 0
    INVALID_JSON = 1
    UNKNOWN_COMMAND = 2
    MESSAGE_ERROR = 3        # bad properties, unknown watcher, ...
    OS_ERROR = 4
    COMMAND_ERROR = 5        # the command ran and failed (e.g. reload aborted)
    BAD_MSG_DATA_ERROR = 6   # malformed envelope: extra frames, too big
    FORBIDDEN = 7            # not allowed on this endpoint (sockvisor's own)


class CommandError(Exception):
    def __init__(self, reason: str, errno: ErrNo = ErrNo.MESSAGE_ERROR):
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


class Request(NamedTuple):   # not a dataclass: sockvisorctl imports this, quickly
    id: Any
    command: str
    properties: dict[str, Any]


def parse_request(payload: bytes) -> Request:
    """Decode and shape-check one request frame; raise CommandError if it is bad."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise CommandError(f"request of {len(payload)} bytes is larger than "
                           f"{MAX_REQUEST_BYTES}", ErrNo.BAD_MSG_DATA_ERROR)
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"json invalid: {exc}", ErrNo.INVALID_JSON) from None
    except RecursionError:
        # `[[[[...` a few thousand deep: the decoder recurses once per level.
        raise CommandError("json invalid: nested too deeply", ErrNo.INVALID_JSON) from None
    if not isinstance(message, dict):
        raise CommandError("a request must be a JSON object", ErrNo.INVALID_JSON)
    command = message.get("command")
    if not isinstance(command, str) or not command:
        raise CommandError("'command' must be a non-empty string", ErrNo.MESSAGE_ERROR)
    properties = message.get("properties", {})
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise CommandError("'properties' must be a JSON object", ErrNo.MESSAGE_ERROR)
    request_id = message.get("id")
    if not _valid_id(request_id):
        raise CommandError(f"'id' must be a string of at most {MAX_ID_LENGTH} characters "
                           "or a 64-bit number", ErrNo.MESSAGE_ERROR)
    return Request(request_id, command.lower(), properties)


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= MAX_ID_LENGTH
    return (isinstance(value, int) and not isinstance(value, bool)
            and -(1 << 63) <= value < (1 << 64))


def request_id_of(payload: bytes) -> Any:
    """Best effort: the id of a request that failed validation, for the reply."""
    try:
        message = json.loads(payload)
        value = message.get("id") if isinstance(message, dict) else None
        return value if value is not None and _valid_id(value) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def ok(request_id: Any, props: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"status": "ok", "time": time.time()}
    if props:
        reply.update(props)
    reply["id"] = request_id
    return reply


def error(request_id: Any, reason: str, errno: ErrNo = ErrNo.NOT_SPECIFIED) -> dict[str, Any]:
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + "... (cut)"
    return {"status": "error", "reason": reason, "errno": int(errno), "tb": None,
            "time": time.time(), "id": request_id}


def is_error(reply: dict[str, Any]) -> bool:
    return reply.get("status") == "error" and "errno" in reply


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=str).encode()


def make_request(request_id: str, command: str, properties: dict[str, Any]) -> bytes:
    return encode({"id": request_id, "command": command, "properties": properties})
