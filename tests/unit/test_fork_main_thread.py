"""Workers are forked from the main thread only (process.fork_exec).

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
process; an upgrade in place (upgrade.py) execs, which ends every thread but
the calling one.  So a worker forked from a helper thread would be SIGKILLed by
the very upgrade that must keep it: the first test shows the kernel doing that,
the second that fork_exec refuses to be called so.
"""

from __future__ import annotations

import os
import threading

from sockvisor import process
from conftest import wait_for


def _spec() -> process.SpawnSpec:
    return process.SpawnSpec(argv=["/bin/sleep", "30"], env={"PATH": os.defpath}, fds=[])


def test_pdeathsig_follows_the_forking_thread():
    """The hazard itself: a child forked (with PDEATHSIG) by a thread dies with it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    forked: list[int] = []

    def fork_in_thread() -> None:
        armed_r, armed_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(armed_r)
            libc.prctl(process.PR_SET_PDEATHSIG, 9, 0, 0, 0)
            os.close(armed_w)   # says "armed" (EOF) to the thread; exec closes nothing more
            os.execv("/bin/sleep", ["sleep", "30"])
        os.close(armed_w)
        forked.append(pid)
        os.read(armed_r, 1)     # EOF once the child has PDEATHSIG set; then the thread ends
        os.close(armed_r)
    thread = threading.Thread(target=fork_in_thread)
    thread.start()
    thread.join()
    [pid] = forked
    try:
        _, status = wait_for(lambda: (lambda r: r if r[0] else None)(os.waitpid(pid, os.WNOHANG)),
                             5, message="the child to die with its thread")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_fork_exec_refuses_a_thread():
    errors: list[BaseException] = []

    def spawn() -> None:
        try:
            pid, status_r = process.fork_exec(_spec())
        except BaseException as exc:   # noqa: BLE001 - recorded for the assertion
            errors.append(exc)
            return
        os.close(status_r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    assert errors and isinstance(errors[0], RuntimeError), errors
    assert "main thread" in str(errors[0])


def test_fork_exec_from_the_main_thread_still_works():
    pid, status_r = process.fork_exec(_spec())
    try:
        assert process.read_spawn_status(status_r) is None
    finally:
        os.close(status_r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
