"""End to end: sockvisor publishes what happens on its PUB endpoint.

Events are two frames, `[topic, json]`, topic like `watcher.web.spawn`.  With an
explicit ipc endpoint E they go out on `E.events` (server.endpoints_for), a
socket file as private as the control one.  A subscriber sees a worker's life
(spawn, ready, exit), the watcher's state changes, and a reload's start and
end, in that order.
"""

from __future__ import annotations

import os
import stat

import pytest

from control_client_helpers import endpoint_of, ok, pids_of, subscribed, sync_events


@pytest.mark.timeout(60)
def test_events_follow_workers_states_and_reloads(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    events_path = f"{sv.directory}/ctl.events"
    assert stat.S_IMODE(os.stat(events_path).st_mode) == 0o600
    with subscribed(f"ipc://{events_path}") as events:
        sync_events(events, endpoint, "web")
        [first] = sv.wait_workers(1, "worker.py")

        # A worker's life: spawn, ready, exit.
        ok(endpoint, "incr", {"name": "web"})
        [added] = set(sv.wait_workers(2, "worker.py")) - {first}
        spawn = events.wait("watcher.web.spawn", pid=added)
        assert spawn["wid"] == 2 and isinstance(spawn["generation"], int)
        events.wait("watcher.web.ready", pid=added)
        ok(endpoint, "decr", {"name": "web"})
        exit_event = events.wait("watcher.web.exit", pid=added)
        assert exit_event["expected"] is True and exit_event["status"]

        # A reload: started, the new generation spawned and ready, the old one
        # gone, finished -- and the watcher's state going there and back.
        generation = ok(endpoint, "status", {"name": "web"})["watcher"]["generation"]
        mark = len(events.drain())
        ok(endpoint, "reload", {"name": "web"})
        [new] = pids_of(endpoint, "web")
        finished = events.wait("watcher.web.reload.finished")
        assert finished == {"generation": generation + 1, "replaced": 1}
        events.wait("watcher.web.exit", pid=first)
        topics = [topic for topic, _ in events.seen[mark:]]
        state_changes = [(data["from"], data["to"]) for topic, data in events.seen[mark:]
                         if topic == "watcher.web.state"]
        assert state_changes[:2] == [("active", "reloading"), ("reloading", "active")]
        started = topics.index("watcher.web.reload.started")
        assert events.seen[mark + started][1] == {"generation": generation + 1}
        new_spawn = next(i for i, (topic, data) in enumerate(events.seen[mark:])
                         if topic == "watcher.web.spawn" and data["pid"] == new)
        assert events.seen[mark + new_spawn][1]["generation"] == generation + 1
        assert started < new_spawn < topics.index("watcher.web.reload.finished")

        # Stopping: the state events name both ends of each change.
        ok(endpoint, "stop", {"name": "web"})
        assert events.wait("watcher.web.state", to="stopping")["from"] == "active"
        assert events.wait("watcher.web.state", to="stopped")["from"] == "stopping"
        events.wait("watcher.web.exit", pid=new)
