"""End to end: how sockvisor stops, and what it leaves behind (nothing).

SIGTERM stops gracefully: each worker gets its watcher's stop_signal, one that
ignores it is SIGKILLed after graceful_timeout, and sockvisor exits 0.  SIGQUIT
stops at once.  SIGKILL of sockvisor itself takes the workers with it
(PR_SET_PDEATHSIG), so the port is free for the next sockvisor straight away.
"""

from __future__ import annotations

import re
import signal
import time

from conftest import is_gone, port_is_free, wait_for


def test_sigterm_stops_gracefully_then_kills_the_stubborn(sockvisor, scripts):
    sv = sockvisor(f"""
        [socket:web]
        port = 0

        [watcher:polite]
        cmd = {scripts.cmd("worker.py")} --role polite --report-signals
        sockets = web
        numprocesses = 2
        stop_signal = SIGUSR1
        stdout = prefix
        graceful_timeout = 5

        [watcher:stubborn]
        cmd = {scripts.cmd("worker.py")} --role stubborn --ignore-term --no-serve --say ignoring
        stdout = prefix
        graceful_timeout = 0.5
    """)
    polite = sv.wait_workers(2, "--role polite")
    [stubborn] = sv.wait_workers(1, "--role stubborn")
    # Signal handlers are installed before a worker serves or speaks: wait for that.
    assert sv.wait_answering(sv.port("web"), polite) == set(polite)
    wait_for(lambda: f"stubborn[{stubborn}] ignoring" in sv.stdout(), 10,
             message=lambda: f"the stubborn worker's SIG_IGN\n{sv.describe()}")

    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    status = sv.wait_exit(10)
    elapsed = time.monotonic() - started

    assert status == 0, sv.describe()
    out = sv.stdout()
    for pid in polite:
        assert f"polite[{pid}] got SIGUSR1" in out, sv.describe()
    assert "got SIGTERM" not in out
    log = sv.log()
    for pid in polite:
        assert re.search(rf"polite\[{pid}\] stopped \(exit status 0\)", log), log
    assert re.search(rf"stubborn\[{stubborn}\] did not exit within graceful_timeout "
                     r"\(0\.5s\): SIGKILL", log), log
    assert re.search(rf"stubborn\[{stubborn}\] stopped \(killed by SIGKILL\)", log), log
    assert "sockvisor stopped" in log
    # It waited for the stubborn one, but not for the polite ones' 5 s.
    assert 0.5 <= elapsed < 4.5, elapsed
    for pid in [*polite, stubborn]:
        assert is_gone(pid), f"worker {pid} survived sockvisor"


def test_sigquit_stops_at_once(sockvisor, scripts):
    sv = sockvisor(f"""
        [watcher:stubborn]
        cmd = {scripts.cmd("worker.py")} --ignore-term --no-serve
        numprocesses = 2
        graceful_timeout = 30
    """)
    pids = sv.wait_workers(2, "worker.py")
    started = time.monotonic()
    sv.signal(signal.SIGQUIT)
    status = sv.wait_exit(10)
    elapsed = time.monotonic() - started
    assert status == 0, sv.describe()
    assert elapsed < 5, f"SIGQUIT took {elapsed:.1f}s: it waited for graceful_timeout"
    assert "stopping (immediate)" in sv.log()
    assert "did not exit within graceful_timeout" not in sv.log()
    for pid in pids:
        assert is_gone(pid), f"worker {pid} survived sockvisor"


def test_sigkill_of_sockvisor_leaves_no_worker_and_frees_the_port(sockvisor, scripts):
    body = """
        [socket:web]
        port = {port}

        [watcher:web]
        cmd = {cmd}
        sockets = web
        numprocesses = 2
        graceful_timeout = 1
    """
    cmd = scripts.cmd("worker.py")
    first = sockvisor(body.format(port=0, cmd=cmd), name="first")
    port = first.port("web")
    pids = first.wait_workers(2, "worker.py")
    first.http_get(port)

    first.signal(signal.SIGKILL)
    assert first.wait_exit(5) == -signal.SIGKILL
    wait_for(lambda: all(is_gone(pid) for pid in pids), 5,
             message=lambda: f"workers {pids} to die with sockvisor")
    assert port_is_free(port)

    second = sockvisor(body.format(port=port, cmd=cmd), name="second")
    assert second.port("web") == port
    new = second.wait_workers(2, "worker.py")
    assert not set(new) & set(pids)
    assert second.http_get(port)["pid"] in new
