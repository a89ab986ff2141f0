"""A 60-second soak of the real sockvisor: `bench/soak.py --seconds 60`.

HTTP load (a new connection per request) on a 2-worker watcher while a random
worker gets SIGKILL every 2-4 s and `reload` / `reloadconfig` (a real config
change) alternate every 5 s.  What must hold, whatever the machine's load:

* no request failed that sockvisor could have saved: the only failures allowed
  are requests whose connection the killed worker itself held (soak.py reads the
  victim's sockets while it is SIGSTOPped, then SIGKILLs it; see its docstring);
* every reload / reloadconfig succeeded, unless a kill landed while it ran (a new
  worker killed before READY=1 aborts the reload, by design);
* sockvisor serves again at the end, its open fds did not grow (≤ start + 2), no
  child of it is left a zombie (none at the end, none seen in two samples 5 s
  apart), and its RSS grew by at most 16 MiB.

The thresholds are not timing-sensitive: a busy machine means fewer requests and
slower reloads, not failures.  The soak paces its own kills and operations (that
is the fault being injected, not synchronisation) and stops at its deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
SECONDS = 60
RSS_SLACK_MIB = 16
FD_SLACK = 2


def run_soak(tmp_path: Path) -> dict:
    """Run the soak as its own process (its supervisors live in their own sessions;
    on a timeout, SIGINT lets its `finally` stop them, as bench/run_all.py does)."""
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--supervisors",
            "sockvisor", "--clients", "4", "--fd-slack", str(FD_SLACK),
            "--rss-slack-mib", str(RSS_SLACK_MIB), "--json", str(out)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                        "WATCHDOG_USEC", "WATCHDOG_PID")}
    with open(tmp_path / "soak.out", "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
                                   start_new_session=True)
        try:
            process.wait(SECONDS + 70)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            pytest.fail(f"soak did not end in time:\n{(tmp_path / 'soak.out').read_text()}")
    text = (tmp_path / "soak.out").read_text()
    assert out.exists(), f"soak wrote no JSON (exit {process.returncode}):\n{text}"
    data = json.loads(out.read_text())
    data["report"] = text
    return data


@pytest.mark.timeout(SECONDS + 120)
def test_soak_kills_and_reloads_lose_nothing_sockvisor_could_save(tmp_path):
    data = run_soak(tmp_path)
    (r,) = data["results"]
    report = data["report"] + "\n" + r["log_tail"]
    saveable = [f for f in r["failures_listed"]
                if f["attributed_to"] is None and f["kind"] != "client"]

    # The soak did what it says (or its figures would prove nothing).
    assert r["kills"] >= 5, report
    assert r["ok"] >= 1000, report
    assert r["operations"]["reload"]["ok"] >= 1, report
    assert r["operations"]["reloadconfig"]["ok"] >= 1, report

    assert r["failed_saveable"] == 0, f"{saveable}\n{report}"
    for kind, ops in r["operations"].items():
        assert ops["errors_unexplained"] == [], f"{kind}: {ops['errors_unexplained']}\n{report}"
    assert r["serving_at_end"], report
    start, end = r["start"], r["end"]
    assert end["fds"] <= start["fds"] + FD_SLACK, report
    assert end["zombies"] == [] and r["zombies_lingering"] == [], report
    assert end["rss_kib"] - start["rss_kib"] <= RSS_SLACK_MIB * 1024, report
    assert r["verdict"] == "PASS", report
