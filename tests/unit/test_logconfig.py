"""sockvisor.logconfig: a loggerconfig's handlers behind a bounded queue.

Each case runs in a child interpreter (logging's state is process-wide): the
configuration is applied with `logconfig.apply`, records are logged from the
main thread (the event loop's, in sockvisor) while the real handler is held
up, and what it finally received is printed as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]


def child(program: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(program)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def run(program: str) -> dict:
    return json.loads(child(program).stdout.strip().splitlines()[-1])


def test_a_held_up_handler_never_blocks_the_logging_call_and_drops_are_counted():
    """The queue holds 100 records here: the 150 logged while the handler waits
    all return at once; those that did not fit are dropped, and counted in a
    warning the handler gets when it catches up."""
    seen = run("""
        import json, logging, threading, time
        from sockvisor import logconfig
        logconfig.MAX_QUEUED = 100
        gate = threading.Event()
        seen = []

        class Gated(logging.Handler):
            def emit(self, record):
                gate.wait(10)
                seen.append(self.format(record))

        text = json.dumps({"version": 1, "handlers": {"g": {"()": "__main__.Gated"}},
                           "root": {"level": "INFO", "handlers": ["g"]}})
        listener = logconfig.apply("/etc/logging.json", text)
        started = time.monotonic()
        for number in range(150):
            logging.getLogger("sockvisor.test").info("record %d", number)
        took = time.monotonic() - started
        gate.set()
        listener.close(10)
        print(json.dumps({"took": took, "seen": seen}))
    """)
    assert seen["took"] < 1.0, seen["took"]
    records = [line for line in seen["seen"] if line.startswith("record ")]
    warnings = [line for line in seen["seen"] if "log records dropped" in line]
    assert len(warnings) == 1, seen["seen"]
    dropped = int(warnings[0].split()[0])
    assert dropped >= 49 and len(records) + dropped == 150, (dropped, len(records))
    assert records == [f"record {n}" for n in range(len(records))]   # oldest kept, in order


def test_sockvisor_s_loggers_survive_disable_existing_loggers_and_follow_circus():
    """fileConfig (as Circus calls it) disables every logger the file does not
    name: sockvisor's, created at import, must still log; with no `sockvisor`
    logger in the file, sockvisor's lines go where the `circus` logger's do
    (its handler on stdout, at DEBUG), not to root's (stderr, WARNING)."""
    program = """
        import logging, textwrap
        from sockvisor import logconfig
        early = logging.getLogger("sockvisor.early")
        text = textwrap.dedent('''
        [loggers]
        keys = root, circus
        [handlers]
        keys = circus, root
        [formatters]
        keys = plain
        [logger_root]
        level = WARNING
        handlers = root
        [logger_circus]
        level = DEBUG
        handlers = circus
        qualname = circus
        propagate = 0
        [handler_circus]
        class = StreamHandler
        args = (sys.stdout,)
        formatter = plain
        [handler_root]
        class = StreamHandler
        args = (sys.stderr,)
        formatter = plain
        [formatter_plain]
        format = %(name)s %(levelname)s %(message)s
        ''')
        listener = logconfig.apply("/etc/logging.ini", text)
        early.debug("from an early logger")
        logging.getLogger("sockvisor.late").info("from a late one")
        listener.close(5)
    """
    result = child(program)
    assert result.stdout.splitlines() == ["sockvisor.early DEBUG from an early logger",
                                          "sockvisor.late INFO from a late one"]
    assert result.stderr == ""


def test_a_handler_stuck_for_good_does_not_keep_the_process_from_exiting():
    """`close` gives up after its timeout; the exit then does not wait on the
    stuck handler either (logging's own exit hook would take its lock)."""
    program = """
        import json, logging, threading, time
        from sockvisor import logconfig

        class Stuck(logging.Handler):
            def emit(self, record):
                threading.Event().wait()   # an NFS mount that never answers

        text = json.dumps({"version": 1, "handlers": {"s": {"()": "__main__.Stuck"}},
                           "root": {"level": "INFO", "handlers": ["s"]}})
        listener = logconfig.apply("/etc/logging.json", text)
        logging.getLogger("sockvisor.test").info("the last line")
        started = time.monotonic()
        listener.close(0.5)
        print(round(time.monotonic() - started, 1))
    """
    started = time.monotonic()
    try:
        result = child(program, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the process did not exit: it waited for the stuck "
                             "handler") from None
    assert float(result.stdout.strip()) < 2.0
    assert time.monotonic() - started < 8
