"""End to end: a bad release can never retire good workers (issue 10, section 1).

gunicorn sends READY=1 before its workers import the app; with a syntax error in
the app it then halts.  A reload that retired the old generation at READY=1 took
the site down.  `ready_settle` (default `min_uptime`): a new worker counts as
ready for a reload only once it has stayed alive that long after it was ready.
The worker here sends READY=1 and exits 0.3 s later without ever accepting, as
gunicorn's master does when its workers cannot boot.  The reload must fail
(sockvisorctl exits 1 with the reason), the old pids keep serving under a load
that sees no failed request, and the watcher stays on its old configuration.
"""

from __future__ import annotations

import pytest

from control_helpers import (Load, ServeWorker, control, ctl, socket_section,
                             watcher_section, worker_pids)


def assert_old_generation_kept(sv, client, load: Load, before: dict) -> None:
    after = client.status("web")
    assert after["state"] == "active", after
    assert after["generation"] == before["generation"], after
    assert worker_pids(after) == worker_pids(before), after
    assert all(w["ready"] for w in after["workers"]), after
    assert {p.pid for p in sv.children(include_zombies=True)} == worker_pids(before)
    # Requests keep coming and only the old workers answer them.
    sv.wait_answering(client.port("web"), worker_pids(before))
    assert set(load.pids()) <= worker_pids(before), load.pids()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("ready", ["notify", "started"])
def test_reload_to_a_generation_that_dies_after_ready_is_aborted(sockvisor, tmp_path,
                                                                 ready):
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section("web", worker, numprocesses=2,
                                                      ready=ready))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        sv.wait_answering(port, worker_pids(before))

        worker.set_mode("ready_then_exit=0.3")
        with Load(port, threads=3, max_requests=3000, pause=0.005) as load:
            result = ctl(sv, "reload", "web")
            assert result.returncode == 1, (result.stdout, result.stderr)
            assert "aborted" in result.stderr, result.stderr
            assert "ready_settle" in result.stderr, result.stderr
            assert_old_generation_kept(sv, client, load, before)
        assert load.snapshot(), "the load sent nothing"
        assert load.failures() == [], load.failures()[:5]

        # Fixed: the next reload replaces the old generation, after the settle time.
        worker.set_mode("")
        result = ctl(sv, "reload", "web")
        assert result.returncode == 0, result.stderr
        after = client.wait_ready("web", 2, generation=before["generation"] + 1)
        assert not worker_pids(after) & worker_pids(before)


@pytest.mark.timeout(40)
def test_reloadconfig_to_a_release_that_dies_after_ready_keeps_the_old_config(
        sockvisor, tmp_path):
    good = ServeWorker(tmp_path / "good")
    bad = ServeWorker(tmp_path / "bad")
    bad.set_mode("ready_then_exit=0.3")
    sv = sockvisor(socket_section() + watcher_section("web", good, numprocesses=2,
                                                      ready="notify"))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        text = sv.conf.read_text()
        sv.conf.write_text(text.replace(good.cmd, bad.cmd))
        with Load(port, threads=3, max_requests=3000, pause=0.005) as load:
            result = ctl(sv, "reloadconfig")
            assert result.returncode == 1, (result.stdout, result.stderr)
            assert "ready_settle" in result.stderr, result.stderr
            assert_old_generation_kept(sv, client, load, before)
        assert load.failures() == [], load.failures()[:5]
        # Back on the old configuration: a plain reload starts the good program.
        assert str(good.script) in client.call("options", name="web")["options"]["args"]
        result = ctl(sv, "reload", "web")
        assert result.returncode == 0, result.stderr
        client.wait_ready("web", 2, generation=before["generation"] + 1)


@pytest.mark.timeout(40)
def test_ready_settle_zero_retires_at_ready(sockvisor, tmp_path):
    """The setting is what decides: without a settle time the same release is
    taken (and then crash-loops), which is what the default prevents."""
    worker = ServeWorker(tmp_path / "worker")
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=1, ready="notify", ready_settle=0,
        max_restarts=100))
    with control(sv) as client:
        before = client.wait_ready("web", 1)
        worker.set_mode("ready_then_exit=0.3")
        result = ctl(sv, "reload", "web")
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert not worker_pids(client.status("web")) & worker_pids(before)


@pytest.mark.timeout(40)
def test_start_up_is_not_over_until_workers_settled(sockvisor, tmp_path):
    """The same rule at start-up: a first generation that says READY=1 and dies is
    no start.  It goes FATAL before it ever settled, so the start fails (exit 4)
    instead of holding a port nobody serves."""
    worker = ServeWorker(tmp_path / "worker")
    worker.set_mode("ready_then_exit=0.3")
    sv = sockvisor(socket_section() + watcher_section(
        "web", worker, numprocesses=1, ready="notify", max_restarts=1), ready=False)
    assert sv.wait_exit(20) == 4, sv.describe()
    assert "start-up failed" in sv.log()
