"""Faults at start-up: the control endpoint cannot be opened.

sockvisor opens (and so validates) its control endpoint before it binds a single
listening socket.  When the endpoint cannot be opened -- its folder is missing,
or a second instance already serves on it -- sockvisor exits 3 at once with a
message naming the endpoint, and the configured port never listens: nothing
holds a port that nobody will serve.  (It used to bind the port first, then hang
for ever in the ZeroMQ context's teardown, holding the port.)
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import _clean_env, free_port, listening_inodes, port_is_free, wait_for

DEADLINE = 10.0   # seconds we wait for the exit at all
FAST = 5.0        # what "at once" means on a loaded machine (it takes < 1 s)


def _config(tmp_path, name: str, endpoint: str, port: int, scripts) -> str:
    conf = tmp_path / f"{name}.ini"
    conf.write_text(f"""\
[sockvisor]
endpoint = {endpoint}

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = {scripts.cmd("worker.py")} --marker {tmp_path / (name + '.spawned')}
sockets = web
""")
    return str(conf)


def _start_and_watch_port(conf: str, port: int) -> tuple[int, str, float, bool]:
    """Run `sockvisor start CONF`; (exit status, stderr, seconds, port ever listened)."""
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "sockvisor", "start", conf],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=_clean_env(),
                          start_new_session=True) as proc:
        listened = False

        def exited() -> bool:
            nonlocal listened
            listened = listened or bool(listening_inodes(port))
            return proc.poll() is not None
        try:
            # Polls every 5 ms: a port that listens for a moment is seen too.
            wait_for(exited, DEADLINE, interval=0.005, message="sockvisor to exit")
        except AssertionError:
            proc.kill()
            proc.wait()
            pytest.fail(f"sockvisor still running after {DEADLINE:g}s (port listened: "
                        f"{listened})\n{proc.stderr.read()}")
        finally:
            if proc.poll() is None:
                proc.kill()
        elapsed = time.monotonic() - started
        return proc.returncode, proc.stderr.read(), elapsed, listened


def _assert_failed_fast(status: int, stderr: str, elapsed: float, listened: bool,
                        port: int, tmp_path, name: str, words: str) -> None:
    assert status == 3, stderr
    assert elapsed < FAST, f"took {elapsed:.1f}s to give up"
    assert "cannot open the control endpoint" in stderr and words in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not listened, "the port listened while the endpoint could not be opened"
    assert "listening on" not in stderr, stderr
    assert port_is_free(port)
    assert not (tmp_path / f"{name}.spawned").exists(), "a worker was started"


@pytest.mark.timeout(30)
def test_missing_endpoint_folder_exits_3_before_binding(tmp_path, scripts):
    port = free_port()
    endpoint = f"ipc://{tmp_path}/no/such/folder/ctl"
    conf = _config(tmp_path, "missing", endpoint, port, scripts)
    status, stderr, elapsed, listened = _start_and_watch_port(conf, port)
    _assert_failed_fast(status, stderr, elapsed, listened, port, tmp_path, "missing",
                        "does not exist")


@pytest.mark.timeout(40)
def test_endpoint_in_use_by_another_instance_exits_3_before_binding(sockvisor, tmp_path,
                                                                    scripts):
    first = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py")}
        sockets = web
        """)
    endpoint = f"ipc://{first.directory}/ctl"
    port = free_port()
    conf = _config(tmp_path, "second", endpoint, port, scripts)
    status, stderr, elapsed, listened = _start_and_watch_port(conf, port)
    _assert_failed_fast(status, stderr, elapsed, listened, port, tmp_path, "second", "in use")
    # The first instance is untouched and still answers on its endpoint.
    from sockvisor.control.client import ControlClient
    with ControlClient(endpoint, 5) as client:
        assert client.call("numwatchers")["numwatchers"] == 1
    assert first.proc.poll() is None
