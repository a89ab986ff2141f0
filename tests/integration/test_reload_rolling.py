"""End to end: the zero-downtime rolling reload under client load.

The listening socket stays in sockvisor for the whole reload, so its one accept
queue carries connections across generations: no request is refused or dropped,
however often we reload.  With `ready = notify`, old workers keep serving until
the new ones said READY=1, so a slow-starting generation costs clients nothing;
with `reload_batch = 1` the number of ready workers never drops below
numprocesses.  Read-only commands answer at once while a reload waits.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import wait_for
from control_helpers import (Load, ServeWorker, control, ctl, percentile,
                             socket_section, watcher_section, worker_pids)


@pytest.mark.timeout(60)
def test_ten_reloads_under_load_drop_no_request(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2))
    with control(sv) as client:
        port = client.port("web")
        first = client.wait_ready("web", 2)
        generation_of = {pid: first["generation"] for pid in worker_pids(first)}
        with Load(port, threads=3, pause=0.005, max_requests=50000) as load:
            wait_for(lambda: load.answered_by(worker_pids(first)), 5,
                     message="the first generation to answer")
            for _ in range(10):
                result = ctl(sv, "--json", "reload", "web")
                assert result.returncode == 0, f"{result.stderr}\n{sv.describe()}"
                reply = json.loads(result.stdout)
                assert reply["status"] == "ok", reply
                assert reply["watcher"]["replaced"] == 2, reply
                assert reply["watcher"]["state"] == "active", reply
                detail = client.status("web")
                assert detail["generation"] == reply["watcher"]["generation"]
                new = worker_pids(detail)
                assert len(new) == 2 and not new & set(generation_of), detail
                generation_of.update({pid: detail["generation"] for pid in new})
                # Every generation serves before the next reload replaces it.
                wait_for(lambda: load.answered_by(new), 5,
                         message=lambda: f"generation {detail['generation']} to answer: "
                                         f"{len(load.snapshot())} requests, last "
                                         f"{load.snapshot()[-3:]}, now {time.monotonic()} "
                                         f"status {client.status('web')}\n{sv.describe()}")
        samples = load.snapshot()
    failures = [s for s in samples if s.pid is None]
    assert not failures, f"{len(failures)} of {len(samples)} failed: {failures[:5]}"
    served = load.pids()
    assert set(served) <= set(generation_of), f"unknown pids answered: {served}"
    generations = {generation_of[pid] for pid in served}
    assert len(generations) >= 10, generations
    latencies = [s.latency for s in samples]
    print(f"\n10 reloads: {len(samples)} requests, 0 failed, {len(generations)} "
          f"generations answered, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")


@pytest.mark.timeout(30)
def test_slow_ready_generation_keeps_latency_and_status_prompt(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="notify", ready_timeout=5))
    with control(sv) as client:
        port = client.port("web")
        first = client.wait_ready("web", 2)
        old = worker_pids(first)
        with Load(port, threads=2) as load:
            wait_for(lambda: len(load.snapshot()) >= 200, 10, message="200 requests")
            baseline = [s.latency for s in load.snapshot()]

            worker.set_mode("delay=1")   # the new generation takes 1 s to be ready
            replies: list[dict] = []

            def reload() -> None:
                with control(sv) as own:
                    replies.append(own.raw("reload", name="web", waiting=True))
            thread = threading.Thread(target=reload)
            reload_started = time.monotonic()
            thread.start()

            def mid_reload() -> dict | None:
                detail = client.status("web")
                starting = [w for w in detail["workers"]
                            if w["generation"] == first["generation"] + 1]
                return detail if detail["state"] == "reloading" and len(starting) == 2 \
                    else None
            detail = wait_for(mid_reload, 2, message="the reload to spawn 2 workers")
            # A read-only command answers at once, while the reload waits.
            status_times = []
            while thread.is_alive() and len(status_times) < 20:
                began = time.monotonic()
                during = client.status("web")
                status_times.append(time.monotonic() - began)
                if during["state"] != "reloading":
                    break
                running = {w["pid"] for w in during["workers"]
                           if w["state"] == "running" and w["ready"]}
                assert running == old, during
            thread.join(15)
            reload_finished = time.monotonic()
            assert not thread.is_alive()
        samples = load.snapshot()

    [reply] = replies
    assert reply["status"] == "ok", reply
    assert reply["watcher"]["seconds"] >= 0.9, reply   # it did wait for READY=1
    assert {w["pid"] for w in detail["workers"] if w["ready"]} == old
    assert all(w["state"] == "starting" and not w["ready"] for w in detail["workers"]
               if w["pid"] not in old), detail
    assert max(status_times) < 0.5, status_times

    failures = [s for s in samples if s.pid is None]
    assert not failures, failures[:5]
    during = [s for s in samples if s.started <= reload_finished
              and s.started + s.latency >= reload_started]
    assert len(during) >= 20, f"only {len(during)} requests during the reload"
    latencies = [s.latency for s in during]
    print(f"\nslow-ready reload ({reply['watcher']['seconds']}s): {len(during)} requests "
          f"during it, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max "
          f"{max(latencies) * 1000:.1f} ms (before: p99 "
          f"{percentile(baseline, 0.99) * 1000:.1f} ms, max {max(baseline) * 1000:.1f} ms); "
          f"status during reload max {max(status_times) * 1000:.1f} ms")
    assert max(latencies) < 0.5, sorted(latencies)[-5:]
    # Until the new ones were ready, the old ones answered everything.
    ready_at = reload_started + 0.9
    assert {s.pid for s in during if s.started + s.latency < ready_at} <= old


@pytest.mark.timeout(30)
def test_reload_batch_one_never_drops_below_numprocesses(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=3,
                                                      ready="notify", reload_batch=1))
    with control(sv) as client:
        first = client.wait_ready("web", 3)
        worker.set_mode("delay=0.3")
        replies: list[dict] = []

        def reload() -> None:
            with control(sv) as own:
                replies.append(own.raw("reload", name="web"))
        thread = threading.Thread(target=reload)
        thread.start()
        snapshots = []
        deadline = time.monotonic() + 15
        while thread.is_alive() and time.monotonic() < deadline:
            snapshots.append(client.status("web"))
        thread.join(5)
        assert not thread.is_alive()
        final = client.status("web")

    [reply] = replies
    assert reply["status"] == "ok", reply
    assert reply["watcher"]["replaced"] == 3 and reply["watcher"]["ready"] == 3, reply
    reloading = [s for s in snapshots if s["state"] == "reloading"]
    assert len(reloading) >= 10, f"only {len(reloading)} snapshots during the reload"
    for snapshot in snapshots:
        ready = [w for w in snapshot["workers"] if w["ready"]]
        assert len(ready) >= 3, snapshot
        # One new worker at a time: never more than 3 + 1 (+ the one retiring).
        assert len(snapshot["workers"]) <= 5, snapshot
    assert max(len(s["workers"]) for s in reloading) >= 4
    generations = {w["generation"] for s in reloading for w in s["workers"] if w["ready"]}
    assert generations == {first["generation"], first["generation"] + 1}
    assert final["state"] == "active" and final["generation"] == first["generation"] + 1
    assert len(final["workers"]) == 3 and all(w["ready"] for w in final["workers"])
    assert not worker_pids(final) & worker_pids(first)
