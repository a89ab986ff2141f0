"""The plugins that ship in sockvisor/plugins/, run as a user would run them
against a real sockvisor: from any directory (they are installed with the
package), finding the events endpoint from the config as sockvisorctl does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import wait_for


@pytest.mark.timeout(40)
def test_event_log_prints_the_events_of_a_reload(sockvisor):
    sv = sockvisor("""
        [socket:web]
        host = 127.0.0.1
        port = 0
        [watcher:web]
        cmd = /bin/sleep 1000
        numprocesses = 2
        sockets = web
        graceful_timeout = 2
    """)
    out_path = sv.directory / "events.jsonl"
    elsewhere = sv.directory / "elsewhere"
    elsewhere.mkdir()
    with open(out_path, "w") as out:
        plugin = subprocess.Popen(
            [sys.executable, "-m", "sockvisor.plugins.event_log", "-c", str(sv.conf),
             "--topic", "watcher.web.reload", "--count", "3", "--seconds", "30"],
            cwd=elsewhere, stdout=out, stderr=subprocess.PIPE)
    try:
        # A SUB socket only receives what is published after it has connected:
        # reload until the plugin has seen both reload events.
        def reloaded_and_seen() -> bool:
            result = subprocess.run(
                [sys.executable, "-m", "sockvisor.cli.ctl", "--endpoint",
                 f"ipc://{sv.directory}/ctl", "reload", "web"],
                capture_output=True, text=True, timeout=15)
            assert result.returncode == 0, result.stderr
            return plugin.poll() is not None
        wait_for(reloaded_and_seen, timeout=20, interval=0.2)
        assert plugin.returncode == 0, plugin.stderr.read()
    finally:
        if plugin.poll() is None:
            plugin.kill()
        plugin.wait()
    # The subscription may begin mid-reload (after a `started`): with three
    # events there is always one whole reload, started then finished.
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(lines) == 3, lines
    assert all(line["topic"].startswith("watcher.web.reload.") for line in lines)
    pairs = [(a, b) for a, b in zip(lines, lines[1:])
             if a["topic"] == "watcher.web.reload.started"
             and b["topic"] == "watcher.web.reload.finished"]
    assert pairs, lines
    started, finished = pairs[0]
    assert finished["data"]["replaced"] == 2
    assert started["data"]["generation"] == finished["data"]["generation"]
