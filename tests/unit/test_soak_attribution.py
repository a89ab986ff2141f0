"""bench/soak.py's attribution of failed requests (pure logic, no processes).

A failure is excused ("in the killed worker") only when its client port is a
connection the victim held when it was stopped, and the stop fell inside the
request; everything else counts against the supervisor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import soak  # noqa: E402


def make_soak() -> soak.Soak:
    args = argparse.Namespace(workers=2, clients=1, kill_every=[2.0, 4.0], op_every=5.0,
                              request_timeout=10.0, fd_slack=2, rss_slack_mib=16.0,
                              circus_check_delay=None)
    return soak.Soak("sockvisor", "/nonexistent", args, seed=1)


def test_only_the_victims_own_connection_in_its_window_is_excused():
    s = make_soak()
    s.kills = [soak.Kill(t=10.0, pid=111, ports=[40000], during=None)]
    s.ops = [soak.Operation("reload", t0=20.0, t1=20.5, ok=True)]
    stats = soak.ClientStats()
    stats.failures = [
        soak.Failure(9.9, 10.01, 40000, "reset", ""),           # the victim's: excused
        soak.Failure(9.9, 10.01, 40001, "reset", ""),           # another connection
        soak.Failure(10.5, 10.6, 40000, "reset", ""),           # same port, after the stop
        soak.Failure(20.1, 20.2, None, "refused", ""),          # during a reload
        soak.Failure(30.0, 30.1, None, "client", "EADDRNOTAVAIL"),
    ]
    s.clients = [stats]
    failures = s.attribute()
    assert [f.attributed_to for f in failures] == [111, None, None, None, None]
    assert [f.during for f in failures] == [None, None, None, "reload", None]
    s.start_sample = soak.Sample(0, fds=18, rss_kib=30000, zombies=[], workers=2)
    s.end_sample = soak.Sample(60, fds=18, rss_kib=30100, zombies=[], workers=2)
    s.serving_at_end = True
    result = s.result(60.0)
    assert result["failed_in_killed_worker"] == 1
    assert result["failed_saveable"] == 3
    assert result["failed_client_side"] == 1
    assert result["saveable_by_kind"] == {"reset": 2, "refused": 1}
    assert result["saveable_during_operation"] == 1
    assert result["verdict"] == "FAIL"


def test_a_connection_the_victim_accepted_before_it_stopped_is_its_own():
    """SIGSTOP takes effect a little after it is sent: a connection the victim
    accepted in between is among the ports it held, and its request began after
    the kill's `t`.  Seen in the suite: t0 9.3913 against a kill at 9.391 (sent)."""
    s = make_soak()
    s.kills = [soak.Kill(t=9.391, pid=7, ports=[54672], during=None, t_end=9.3931)]
    stats = soak.ClientStats()
    stats.failures = [
        soak.Failure(9.3913, 9.4425, 54672, "reset", ""),       # accepted before the stop
        soak.Failure(9.4, 9.45, 54672, "reset", ""),             # began after the kill
    ]
    s.clients = [stats]
    assert [f.attributed_to for f in s.attribute()] == [7, None]


def test_an_operation_error_is_explained_only_by_a_kill_while_it_ran():
    s = make_soak()
    s.kills = [soak.Kill(t=5.2, pid=7, ports=[], during="reload"),
               soak.Kill(t=8.0, pid=0, ports=[], during=None, skipped="no live worker")]
    s.ops = [soak.Operation("reload", t0=5.0, t1=5.4, error="aborted"),
             soak.Operation("reloadconfig", t0=7.9, t1=8.3, error="aborted")]
    s.start_sample = soak.Sample(0, fds=18, rss_kib=30000, zombies=[], workers=2)
    s.end_sample = soak.Sample(60, fds=21, rss_kib=30000, zombies=[99], workers=2)
    s.serving_at_end = True
    result = s.result(60.0)
    assert result["operations"]["reload"]["errors_explained_by_a_kill"] == 1
    assert len(result["operations"]["reloadconfig"]["errors_unexplained"]) == 1
    assert result["verdict"] == "FAIL"
    assert any("fds 18 -> 21" in reason for reason in result["reasons"])
    assert any("zombies at the end" in reason for reason in result["reasons"])


def test_classify_tells_the_clients_own_failures_from_the_servers():
    assert soak.classify(ConnectionRefusedError(111, "refused"), False)[0] == "refused"
    assert soak.classify(OSError(99, "Cannot assign requested address"), False)[0] == "client"
    assert soak.classify(TimeoutError("timed out"), False)[0] == "connect timeout"
    assert soak.classify(ConnectionResetError(104, "reset"), True)[0] == "reset"
    assert soak.classify(TimeoutError("timed out"), True)[0] == "timeout"
    assert soak.classify(ValueError("unexpected answer b''"), True)[0] == "closed, no answer"
    assert soak.classify(ValueError("unexpected body b'x'"), True)[0] == "bad answer"


def test_reloadconfig_after_an_aborted_one_makes_the_same_change_again(tmp_path, monkeypatch):
    """An aborted reloadconfig leaves sockvisor on the old config: flipping the file
    back would be no change at all (sockvisor rightly answers "unchanged")."""
    s = make_soak()
    s.directory = str(tmp_path)
    config = tmp_path / "sockvisor.ini"
    s.sup = soak.common.Supervised("sockvisor", "sockvisor", None, str(tmp_path), 1,  # type: ignore[arg-type]
                                   str(config), str(tmp_path / "log"))
    replies = iter([OSError("reload of web aborted: killed"), {"reloaded": ["web"]},
                    {"reloaded": ["web"]}])
    seen = []

    def control_call(sup, command, properties=None, timeout=10.0):
        seen.append(config.read_text().count("SOAK_FLIP=b"))
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply
    monkeypatch.setattr(soak.common, "control_call", control_call)
    ops = [s._operate("reloadconfig") for _ in range(3)]
    assert [op.ok for op in ops] == [False, True, True]
    assert seen == [1, 1, 0]     # b (aborted), b again, then back to a
