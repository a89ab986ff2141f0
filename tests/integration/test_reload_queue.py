"""End to end: commands on one watcher are queued, never refused as busy; other
watchers are not held up.

Two reloads of the same watcher sent together both succeed, the second after the
first (one generation each).  While a slow reload waits for READY=1, another
watcher's `incr` and any `status` answer at once.
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import wait_for
from control_helpers import (ServeWorker, control, ctl, socket_section, watcher_section,
                             worker_pids)


@pytest.mark.timeout(30)
def test_concurrent_reloads_queue_and_other_watcher_answers_at_once(sockvisor, tmp_path):
    slow = ServeWorker(tmp_path / "slow")
    fast = ServeWorker(tmp_path / "fast")
    sv = sockvisor(socket_section("web") + socket_section("api")
                   + watcher_section("web", slow, numprocesses=2, ready="notify",
                                     ready_timeout=10)
                   + watcher_section("other", fast, socket="api", numprocesses=1))
    with control(sv) as client:
        before = client.wait_ready("web", 2)
        client.wait_ready("other", 1)
        slow.set_mode("delay=0.7")

        replies: dict[str, dict] = {}
        finished: dict[str, float] = {}

        def reload(label: str) -> None:
            with control(sv) as own:
                replies[label] = own.raw("reload", name="web")
                finished[label] = time.monotonic()
        first = threading.Thread(target=reload, args=("first",))
        second = threading.Thread(target=reload, args=("second",))
        first.start()
        wait_for(lambda: client.status("web")["state"] == "reloading", 3,
                 message="the first reload to start")
        second.start()
        try:
            # Meanwhile another watcher scales at once, and status answers at once.
            began = time.monotonic()
            result = ctl(sv, "incr", "other", "1")
            incr_took = time.monotonic() - began
            assert result.returncode == 0 and result.stdout.strip() == "2", result
            began = time.monotonic()
            reply = client.call("incr", name="other", nb=1)
            incr_call_took = time.monotonic() - began
            assert reply["numprocesses"] == 3
            began = time.monotonic()
            during = client.status("web")
            status_took = time.monotonic() - began
            assert during["state"] == "reloading", during
            client.wait_ready("other", 3, timeout=3)
            assert client.status("web")["state"] == "reloading", \
                "the reloads ended before the other watcher was checked: make them slower"
        finally:
            first.join(15)
            second.join(15)
        print(f"\nduring a reload of web: sockvisorctl incr other {incr_took * 1000:.0f} ms "
              f"(process start included), incr call {incr_call_took * 1000:.1f} ms, "
              f"status {status_took * 1000:.1f} ms")
        assert incr_call_took < 0.5 and status_took < 0.5
        assert incr_took < 2.0   # a whole sockvisorctl process

        for label in ("first", "second"):
            assert replies[label]["status"] == "ok", replies[label]
            assert "busy" not in str(replies[label]).lower()
        generations = [replies[label]["watcher"]["generation"] for label in ("first",
                                                                             "second")]
        assert generations == [before["generation"] + 1, before["generation"] + 2]
        assert finished["first"] <= finished["second"]
        # Each waited for its own generation's READY=1: one after the other.
        assert replies["second"]["watcher"]["seconds"] >= 0.6
        after = client.wait_ready("web", 2, generation=before["generation"] + 2)
        assert not worker_pids(after) & worker_pids(before)
