"""End to end: a reload whose new generation cannot start is aborted.

The new workers are stopped, the old ones (the very same pids) keep serving, the
watcher is active again on its previous generation and configuration, and the
command fails: sockvisorctl exits 1 and says the reload was aborted.  A later
reload, once the cause is fixed, works as usual.
"""

from __future__ import annotations

import time

import pytest

from control_helpers import (ServeWorker, control, ctl, request_once,
                             socket_section, watcher_section, worker_pids)


def assert_old_generation_serves(sv, client, port: int, before: dict) -> None:
    """Status as before the reload, and every answer from the old pids."""
    after = client.status("web")
    assert after["state"] == "active", after
    assert after["generation"] == before["generation"], after
    assert worker_pids(after) == worker_pids(before), after
    assert all(w["ready"] for w in after["workers"]), after
    assert {p.pid for p in sv.children(include_zombies=True)} == worker_pids(before)
    answered = {request_once(port)["pid"] for _ in range(20)}
    assert answered <= worker_pids(before), answered


@pytest.mark.timeout(30)
def test_reload_to_a_crashing_generation_is_aborted(sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="delay:0.3"))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        sv.wait_answering(port, worker_pids(before))

        worker.set_mode("crash")   # the next generation exits at once
        result = ctl(sv, "reload", "web")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "aborted" in result.stderr, result.stderr
        assert "exited before it was ready" in result.stderr, result.stderr
        assert_old_generation_serves(sv, client, port, before)
        sv.wait_log(r"web\[\d+\] exited unexpectedly .*exit status 3")

        # `set web env CRASH=1` reloads with the new env: aborted the same way, and
        # the previous configuration stays.
        result = ctl(sv, "set", "web", "env", "CRASH=1")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "aborted" in result.stderr, result.stderr
        assert_old_generation_serves(sv, client, port, before)

        # Fixed: the next reload replaces the old generation as usual.
        worker.set_mode("")
        result = ctl(sv, "reload", "web")
        assert result.returncode == 0, result.stderr
        after = client.wait_ready("web", 2, generation=before["generation"] + 1)
        assert not worker_pids(after) & worker_pids(before)
        sv.wait_answering(port, worker_pids(after))


@pytest.mark.timeout(30)
def test_reload_to_a_generation_never_ready_is_aborted_after_ready_timeout(
        sockvisor, tmp_path):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready="notify", ready_timeout=1))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)

        worker.set_mode("noready")   # alive, but never sends READY=1
        began = time.monotonic()
        result = ctl(sv, "reload", "web")
        took = time.monotonic() - began
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "aborted" in result.stderr and "ready_timeout" in result.stderr, \
            result.stderr
        assert 0.9 <= took < 5, took
        assert_old_generation_serves(sv, client, port, before)
        # The candidates were stopped and reaped before the reply: no zombie either.
        assert {p.pid for p in sv.children(include_zombies=True)} == worker_pids(before)
        sv.wait_log(r"not ready within ready_timeout \(1s\)")
