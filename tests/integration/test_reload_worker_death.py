"""End to end: an old worker killed in the middle of a reload.

Exits are handled outside the per-watcher command queue, so the death is seen and
the child reaped at once, while the reload is still waiting for its slow new
generation; the reload then completes with the right number of ready workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from conftest import wait_for
from control_helpers import (ServeWorker, control, is_reaped, process_state,
                             socket_section,
                             watcher_section, worker_pids)


def start_reload(sv) -> tuple[threading.Thread, list[dict]]:
    replies: list[dict] = []

    def reload() -> None:
        with control(sv) as own:
            replies.append(own.raw("reload", name="web"))
    thread = threading.Thread(target=reload)
    thread.start()
    return thread, replies


def wait_new_starting(client, generation: int, count: int) -> dict:
    def starting() -> dict | None:
        detail = client.status("web")
        new = [w for w in detail["workers"] if w["generation"] == generation
               and w["state"] == "starting"]
        return detail if detail["state"] == "reloading" and len(new) == count else None
    return wait_for(starting, 3, message=f"{count} workers of generation {generation} "
                                         "starting")


def assert_no_zombie(sv) -> None:
    zombies = [p.pid for p in sv.children(include_zombies=True)
               if process_state(p.pid) == "Z"]
    assert not zombies, zombies


@pytest.mark.timeout(30)
def test_old_worker_killed_mid_reload_is_reaped_at_once(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="notify", ready_timeout=10))
    with control(sv) as client:
        before = client.wait_ready("web", 2)
        worker.set_mode("delay=2")
        thread, replies = start_reload(sv)
        try:
            wait_new_starting(client, before["generation"] + 1, 2)
            victim = max(worker_pids(before))
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: is_reaped(victim), 1,
                     message=f"killed worker {victim} to be reaped during the reload")
            reaped_after = time.monotonic() - killed_at
            sv.wait_log(rf"web\[{victim}\] exited unexpectedly .*killed by SIGKILL",
                        timeout=1)
            during = client.status("web")
            assert during["state"] == "reloading", during
            assert victim not in worker_pids(during)
        finally:
            thread.join(15)
        [reply] = replies
        print(f"\nkilled old worker reaped {reaped_after * 1000:.1f} ms after SIGKILL "
              "during the reload")
        assert reply["status"] == "ok", reply
        assert reply["watcher"]["ready"] == 2 and reply["watcher"]["numprocesses"] == 2
        after = client.status("web")
        assert after["state"] == "active" and len(after["workers"]) == 2, after
        assert all(w["ready"] and w["generation"] == before["generation"] + 1
                   for w in after["workers"]), after
        assert_no_zombie(sv)
        assert sorted(sv.worker_pids("serve.py")) == sorted(worker_pids(after))


@pytest.mark.timeout(30)
def test_old_worker_killed_mid_batched_reload_keeps_the_count(sockvisor, tmp_path):
    """reload_batch = 1: an old worker that dies while the first new one starts
    makes the overlap enough; the reload retires no worker it still needs and
    ends with numprocesses ready."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=3,
                                                      ready="notify", reload_batch=1,
                                                      ready_timeout=10))
    with control(sv) as client:
        before = client.wait_ready("web", 3)
        worker.set_mode("delay=0.6")
        thread, replies = start_reload(sv)
        snapshots = []
        try:
            wait_new_starting(client, before["generation"] + 1, 1)
            # The last old worker: the reload retires the oldest first.
            victim = max(before["workers"], key=lambda w: w["wid"])["pid"]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: is_reaped(victim), 1, message=f"{victim} reaped")
            early = client.status("web")
            assert not any(w["ready"] for w in early["workers"]
                           if w["generation"] == before["generation"] + 1), \
                f"the new worker was ready before the kill was handled: {early}"
            # From the moment the first new worker is ready, 3 are ready again.
            wait_for(lambda: any(w["ready"] and w["generation"] == before["generation"] + 1
                                 for w in client.status("web")["workers"]), 5,
                     message="the first new worker to be ready")
            while thread.is_alive():
                snapshots.append(client.status("web"))
        finally:
            thread.join(15)
        [reply] = replies
        assert reply["status"] == "ok", reply
        assert reply["watcher"]["ready"] == 3, reply
        low = [s for s in snapshots if s["state"] == "reloading"
               and sum(w["ready"] for w in s["workers"]) < 3]
        assert not low, low[0]
        after = client.status("web")
        assert after["state"] == "active" and len(after["workers"]) == 3, after
        assert all(w["ready"] and w["generation"] == before["generation"] + 1
                   for w in after["workers"]), after
        assert_no_zombie(sv)
