"""`listsockets`: the sockets sockvisor holds, with their real bound addresses."""

from __future__ import annotations

import socket
from typing import Any

from sockvisor.control.commands.base import Command, table


class ListSockets(Command):
    """List the listening sockets: name, fd, real bound address, backlog, users.

    sockvisorctl listsockets

    A port given as 0 in the config shows the port the kernel chose.  QUEUED is
    the accept queue: connections the kernel completed that no worker accepted
    yet, over the limit the kernel applies (`accept_queue`, `accept_queue_limit`
    in the reply; "?" when the kernel does not tell).  Each socket's listen
    state is checked first: a socket a worker shut down is put back to
    listening, or bound anew at the same address (with a new `fd`; the workers
    holding the old one are replaced) when no listen() revives it; `relistened`
    counts those repairs, and `listening` is false (with `broken` saying why)
    for one that could not be repaired.
    """
    name = "listsockets"
    access = "operate"

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        # Not at import: sockvisorctl loads this module and must stay light.
        from sockvisor.accept_queue import accept_queue
        from sockvisor.sockets import keep_listening
        keep_listening(supervisor.sockets.values(), supervisor.publish)
        result = []
        for listening in supervisor.sockets.values():
            entry: dict[str, Any] = {"name": listening.name, "fd": listening.fd,
                                     "backlog": listening.config.backlog,
                                     "address": listening.address,
                                     "adopted": listening.adopted,
                                     "listening": listening.listening,
                                     "relistened": listening.relistened,
                                     "watchers": sorted(
                                         w.name for w in supervisor.watchers.values()
                                         if listening.name in w.config.sockets)}
            if listening.broken:
                entry["broken"] = listening.broken
            if listening.sock.family == socket.AF_UNIX:
                entry["path"] = listening.address
            else:
                host, port = listening.sock.getsockname()[:2]
                entry["host"], entry["port"] = host, port
            queue = accept_queue(listening.sock)
            # None when the kernel does not tell (e.g. no unix_diag): unknown, not 0.
            entry["accept_queue"] = queue.length if queue else None
            entry["accept_queue_limit"] = queue.limit if queue else None
            result.append(entry)
        result.sort(key=lambda entry: entry["fd"])
        return {"sockets": result}

    def format(self, reply):
        def queue(s: dict[str, Any]) -> str:
            if s.get("accept_queue") is None:
                return "?"
            return f"{s['accept_queue']}/{s['accept_queue_limit']}"
        rows = [[s["name"], s["fd"], s["address"], s["backlog"], queue(s),
                 ",".join(s["watchers"]),
                 s.get("relistened", 0) if s.get("listening", True) else "BROKEN"]
                for s in reply["sockets"]]
        return table(rows, ["NAME", "FD", "ADDRESS", "BACKLOG", "QUEUED", "WATCHERS",
                            "RELISTENED"])


COMMAND = ListSockets()
