"""sockvisor's own fd budget (issue 10, §2): every worker's stdout and stderr
are pipes sockvisor reads, whatever the `stdout` mode, so each worker costs
sockvisor two fds.  At start sockvisor raises its soft RLIMIT_NOFILE to the
hard limit (systemd's advice for programs that do not use select()), and gives
its workers back the soft limit it was started with — select()-based programs
break above 1024 — unless the watcher sets `rlimit_nofile`.

Started under `prlimit --nofile=256:4096` (or a lower hard limit) with 150
workers (300 pipe fds alone), every worker must run, `logs` must have their
lines, and each worker must read its own soft limit as 256.
"""

from __future__ import annotations

import re
import resource

import pytest

from conftest import Sockvisor, wait_for
from control_client_helpers import describe, endpoint_of, ok, run_ctl

WORKERS = 150
HARD = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])   # never above ours
LIMITS = """#!/bin/sh
echo "nofile $(ulimit -Sn) $(ulimit -Hn)"
exec sleep 3600
"""


def soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(f"no open-files limit for {pid}")


@pytest.mark.timeout(120)
@pytest.mark.skipif(HARD < 2 * WORKERS + 100, reason="the hard open-files limit is too low")
def test_many_workers_past_the_soft_limit_sockvisor_started_with(tmp_path):
    script = tmp_path / "limits.sh"
    script.write_text(LIMITS)
    script.chmod(0o755)
    directory = tmp_path / "sv"
    directory.mkdir()
    config = f"""
[sockvisor]
endpoint = ipc://{directory}/ctl

[watcher:many]
cmd = {script}
numprocesses = {WORKERS}
graceful_timeout = 1

[watcher:own]
cmd = {script}
rlimit_nofile = 100
graceful_timeout = 1
"""
    sv = Sockvisor(directory, config, argv_prefix=["prlimit", f"--nofile=256:{HARD}", "--"])
    try:
        sv.wait_ready(60)
        endpoint = endpoint_of(sv)
        status = ok(endpoint, "status", {"name": "many"})
        assert status["status"] == "active", status
        pids = sv.wait_workers(WORKERS + 1, "sleep", timeout=30)
        assert len(pids) == WORKERS + 1
        # Every worker's lines reached the ring (which keeps the last 50).
        lines = wait_for(lambda: (r := ok(endpoint, "logs", {"name": "many", "lines": 50})
                                  ["lines"]) and len(r) == 50 and r,
                         message=lambda: sv.describe())
        assert {line["line"] for line in lines} == {f"nofile 256 {HARD}"}, lines
        assert len({line["pid"] for line in lines}) == 50
        result = run_ctl("--endpoint", endpoint, "logs", "own", "-n", "5")
        assert result.returncode == 0, describe(result)
        assert re.fullmatch(r"stdout \[\d+\] nofile 100 100\n", result.stdout), describe(result)
        # ... and on sockvisor's stdout, one line per worker.
        wait_for(lambda: sv.stdout().count(f"nofile 256 {HARD}\n") == WORKERS,
                 message=lambda: sv.describe())
        assert soft_nofile(sv.pid) == HARD   # sockvisor's own: raised to the hard limit
    finally:
        sv.cleanup()
