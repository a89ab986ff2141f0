"""A launcher with no processes, for driving a real Watcher in milliseconds.

`FakeLauncher` is the real `Launcher` (generations, socket resolution, readiness
timers, the reap bookkeeping) with `launch` replaced: a worker is a
`process.Worker` with a pid no process has (above the kernel's pid_max), whose
signals are recorded instead of sent.  A stop signal or SIGKILL makes it "exit"
on the next loop turn (or `kill_delay` later); a test ends one with `crash`,
makes one ready with `make_ready`, and chooses what the next launches do with
`auto_ready` (ready as soon as "exec" succeeds) and `fail_launch` (fork fails).
Like supervisor's dummy processes in its own tests.
"""

from __future__ import annotations

import asyncio
import itertools
import signal

from sockvisor import process
from sockvisor.config import ReadyKind
from sockvisor.launcher import Generation, Launcher
from sockvisor.states import WorkerState

_PIDS = itertools.count(1 << 30)   # beyond any pid_max: never a real process


class FakeWorker(process.Worker):
    launcher: "FakeLauncher"

    def signal(self, signum: int, process_group: bool = False) -> bool:
        if self.state == WorkerState.EXITED:
            return False
        self.signals.append(signum)
        self.launcher._exit_later(self, int(signum))
        return True

    def kill_group(self) -> None:
        if self.state != WorkerState.EXITED:
            self.signals.append(signal.SIGKILL)
            self.launcher._exit_later(self, int(signal.SIGKILL))

    def before_reap(self) -> None:
        pass


class FakeLauncher(Launcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.auto_ready = True
        self.fail_launch = False
        self.exit_on_signal = True
        self.kill_delay = 0.0
        self.launched: list[FakeWorker] = []
        self.generations: dict[int, Generation] = {}

    def launch(self, generation, wid, sinks):
        if self.fail_launch:
            return None
        pid = next(_PIDS)
        worker = FakeWorker(generation.config, wid, generation.number, pid,
                            self.hooks.on_state)
        worker.launcher = self
        worker.signals = []
        worker.sockets = generation.sockets
        self.generations[pid] = generation
        self.context.workers_by_pid[pid] = worker
        self.launched.append(worker)
        loop = asyncio.get_running_loop()
        worker.exec_ok = True
        ready = generation.config.ready
        if self.auto_ready:
            worker.mark_ready()
        if ready.kind != ReadyKind.STARTED:
            worker.add_timer(loop.call_later(ready.timeout, self._ready_timeout, worker))
        return worker

    def make_ready(self, *workers: FakeWorker) -> None:
        for worker in workers:
            worker.mark_ready()

    def crash(self, worker: FakeWorker, status: int = 3 << 8) -> None:
        """The worker exits on its own (exit status 3 by default), reaped at once."""
        self._reaped(worker, self.generations[worker.pid], status)

    def _exit_later(self, worker: FakeWorker, status: int) -> None:
        if getattr(worker, "exiting", False) or (
                not self.exit_on_signal and status != signal.SIGKILL):
            return
        worker.exiting = True
        loop = asyncio.get_running_loop()

        def reap() -> None:
            if worker.state != WorkerState.EXITED:
                self._reaped(worker, self.generations[worker.pid], status)
        loop.call_later(self.kill_delay, reap)

    def live(self, watcher) -> list[FakeWorker]:
        return [w for w in watcher.workers.values() if not w.stop_requested]
