"""End to end: `stats` shows each worker's children (a gunicorn master's workers)
and a total per watcher; the table reads like a person would (8.0s, 2h03m),
--json keeps the raw seconds."""

from __future__ import annotations

import json
import re

import pytest

from conftest import wait_for
from control_client_helpers import describe, endpoint_of, run_ctl

MASTER = r'''
import os, signal, time
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    children.append(pid)
print("children", *children, flush=True)
while True:
    signal.pause()
'''


@pytest.mark.timeout(60)
def test_stats_lists_children_and_totals(sockvisor, scripts, tmp_path):
    master = tmp_path / "master.py"
    master.write_text(MASTER)
    sv = sockvisor(f"""
        [watcher:web]
        cmd = {scripts.python} {master}
        stdout = prefix
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    [pid] = sv.wait_workers(1, "master.py")
    said = wait_for(lambda: re.search(rf"web\[{pid}\] children (\d+) (\d+)", sv.stdout()))
    children = sorted(int(n) for n in said.groups())

    result = run_ctl("--endpoint", endpoint, "stats", "web", "--json")
    assert result.returncode == 0, describe(result)
    reply = json.loads(result.stdout)
    info = reply["info"][str(pid)]
    assert sorted(child["pid"] for child in info["children"]) == children
    assert reply["totals"]["processes"] == 3
    assert reply["totals"]["rss"] == info["rss"] + sum(c["rss"] for c in info["children"])
    assert isinstance(info["age"], float)

    table = run_ctl("--endpoint", endpoint, "stats")
    assert table.returncode == 0, describe(table)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["WATCHER", "PID", "CPU%", "MEM%", "RSS", "CPU-TIME", "AGE"]
    worker_row = next(line for line in lines if line.split()[:2] == ["web", str(pid)])
    assert re.search(r"\d+\.\ds$", worker_row), worker_row       # AGE like 1.2s
    for child in children:
        assert any(line.split()[:1] == [str(child)] for line in lines[1:]), lines
    assert any("total (3)" in line for line in lines), lines
