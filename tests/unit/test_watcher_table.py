"""The watcher's lifecycle table (states.py), driven through a real Watcher on a
fake launcher (fake_launcher.py): no process is forked, each case takes
milliseconds to a second.

* Every GO or STAY cell of the table is a test case below (generated from the
  table): the watcher is brought into the state by real commands and worker
  events, the event is caused the way it happens in production (a command, a
  crash, a timer, readiness), and the outcome the watcher records must be the
  one the cell says.  A new cell without a way to cause it fails here.
* Every IGNORED or IMPOSSIBLE cell says why, and `decide` refuses the impossible.
* Then the behaviours the table exists for: a rollback keeps the generation's
  sockets, FATAL during a reload fails the reload, BACKOFF is a state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time

import pytest

from fake_launcher import FakeLauncher
from sockvisor.config import ReadyKind, ReadyPolicy, RestartPolicy, WatcherConfig
from sockvisor.sockets import ListeningSocket
from sockvisor.config import SocketConfig
from sockvisor.states import (WATCHER_TABLE, Kind, TransitionError, WatcherEvent,
                              WatcherState, decide, row, table_markdown)
from sockvisor.watcher import ReloadError, Watcher, WatcherContext

S, E = WatcherState, WatcherEvent

BACKOFF = 0.3         # the backoff delay: longer than READY_TIMEOUT
READY_TIMEOUT = 0.12


def config(max_restarts: int = 100, numprocesses: int = 2, sockets=(),
           **changes) -> WatcherConfig:
    return dataclasses.replace(WatcherConfig(
        name="web", cmd="/bin/true", numprocesses=numprocesses, sockets=tuple(sockets),
        graceful_timeout=0.2,
        restart=RestartPolicy(min_uptime=0.02, backoff_base=BACKOFF, backoff_max=BACKOFF,
                              max_restarts=max_restarts, window=60.0),
        ready=ReadyPolicy(kind=ReadyKind.NOTIFY, timeout=READY_TIMEOUT, settle=0.01)),
        **changes)


def on_demand_socket() -> ListeningSocket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return ListeningSocket(SocketConfig(name="web", family=socket.AF_INET,
                                        host="127.0.0.1", port=0), sock)


def rig_for(state: WatcherState, event: WatcherEvent) -> "Rig":
    """send_hup for the HUP cells, on_demand (with a listening socket) for WAITING,
    DEMAND and IDLE ones; otherwise a plain watcher."""
    changes = {"max_restarts": max_restarts_for(state, event)}
    if event is E.HUP:
        changes["send_hup"] = True
    if state is S.WAITING or event in (E.DEMAND, E.IDLE):
        changes.update(on_demand=True, sockets=("web",))
        rig = Rig(config(**changes), sockets={"web": on_demand_socket()})
    else:
        rig = Rig(config(**changes))
    rig.event = event
    return rig


def event_needs_no_workers(rig: "Rig") -> bool:
    """WAITING with no worker left (DEMAND, RELOAD's first target); else with one."""
    return rig.event in (E.DEMAND, E.RELOAD)


class Rig:
    """A Watcher on a FakeLauncher, recording (state before, event, state after)
    for every event sent through its table."""

    def __init__(self, watcher_config: WatcherConfig, sockets=None):
        self.events: list[tuple[str, dict]] = []
        self.sockets = dict(sockets or {})
        context = WatcherContext(reaper=None, sockets=self.sockets, notify_address=None,
                                 publish=lambda topic, data: self.events.append((topic, data)),
                                 workers_by_pid={})
        self.watcher = Watcher(watcher_config, context, make_launcher=FakeLauncher)
        self.launcher: FakeLauncher = self.watcher.launcher
        self.event: WatcherEvent | None = None
        self.pending: list[socket.socket] = []   # clients of on_demand's socket
        self.seen: list[tuple[WatcherState, WatcherEvent, WatcherState]] = []
        self.tasks: list[asyncio.Task] = []
        dispatch = self.watcher._dispatch

        def recording(event, reason="", choice=None):
            before = self.watcher.state
            try:
                return dispatch(event, reason, choice)
            finally:
                self.seen.append((before, event, self.watcher.state))
        self.watcher._dispatch = recording

    def task(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self.tasks.append(task)
        return task

    def live(self):
        return self.launcher.live(self.watcher)

    def ready(self):
        return [w for w in self.live() if w.ready_at is not None]

    def not_ready(self):
        return [w for w in self.live() if w.ready_at is None]

    async def until(self, predicate, timeout: float = 3.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}: "
                                     f"{self.watcher.status()}")
            await asyncio.sleep(0.005)

    @property
    def address(self):
        return self.sockets["web"].sock.getsockname()

    async def demand(self) -> None:
        """A client connects (the watcher wakes up), then the fake workers' stand-in
        accepts it, so that it is not pending any more."""
        client = socket.create_connection(self.address)
        await self.until(lambda: self.watcher.state is not S.WAITING, what="a demand")
        server, _ = self.sockets["web"].sock.accept()
        server.close()
        client.close()

    async def close(self) -> None:
        for client in self.pending:
            client.close()
        for listening in self.sockets.values():
            listening.sock.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.launcher.kill_delay = 0.0
        self.launcher.exit_on_signal = True
        await self.watcher.kill_now()


# ---------------------------------------------------------------- reaching a state

async def reach(rig: Rig, state: WatcherState) -> None:
    """Bring the watcher into `state` the way production does, with no command
    holding its lock (except where the state is a command's), and -- where the
    state allows -- one worker that is not ready yet (`spare`)."""
    w, launcher = rig.watcher, rig.launcher
    if state is S.STOPPED:
        return
    await w.start()
    if w.config.on_demand:
        assert w.state is S.WAITING
        if state is S.WAITING and event_needs_no_workers(rig):
            return
        await rig.demand()                 # a connection: started, then taken away
        await rig.until(lambda: w.state is S.ACTIVE)
    assert w.state is S.ACTIVE
    launcher.auto_ready = False
    if state is S.STOPPING:
        launcher.kill_delay = 0.3
        rig.task(w.kill_now())
        await rig.until(lambda: w.state is S.STOPPING)
        return
    await w.incr(1)                        # the spare: alive, not ready
    if state is S.ACTIVE:
        return
    if state is S.WAITING:                 # a ready worker exits on its own
        healthy = rig.ready()[0]
        await rig.until(lambda: healthy.uptime > w.config.restart.min_uptime)
        launcher.crash(healthy)
        assert w.state is S.WAITING, w.status()
        return
    if state is S.RELOADING:
        rig.task(w.reload())               # candidates never ready (until timeout)
        await rig.until(lambda: w.state is S.RELOADING and w._candidates)
        return
    await w.incr(1)                        # a second spare
    launcher.crash(rig.not_ready()[0])     # a failed start
    if state in (S.BACKOFF, S.FATAL):
        assert w.state is state, w.status()
        return
    assert state is S.STARTING
    await rig.until(lambda: w.state is S.STARTING, BACKOFF + 1)


def max_restarts_for(state: WatcherState, event: WatcherEvent) -> int:
    if state is S.FATAL:
        return 0
    if event is E.RESTART_LIMIT:
        # reaching BACKOFF takes one failed start, STARTING two (the second
        # spare misses its ready_timeout during the backoff)
        return {S.BACKOFF: 1, S.STARTING: 2}.get(state, 0)
    return 100


# ---------------------------------------------------------------- causing an event

async def cause(rig: Rig, state: WatcherState, event: WatcherEvent) -> None:
    w, launcher = rig.watcher, rig.launcher
    if event is E.START:
        rig.task(w.start())
    elif event is E.STOP:
        # A stop command queues behind a running reload: only an immediate stop
        # (SIGQUIT) meets RELOADING.
        rig.task(w.kill_now() if state is S.RELOADING else w.stop())
    elif event is E.RESTART:
        rig.task(w.restart())
    elif event in (E.RELOAD, E.HUP):       # which one: the config's send_hup
        rig.task(w.reload())
    elif event is E.DEMAND:
        rig.pending.append(socket.create_connection(rig.address))
    elif event is E.SCALE:
        rig.task(w.incr(1))
    elif event in (E.WORKER_EXIT, E.IDLE):   # a worker that ran long enough dies
        healthy = rig.ready()[0]
        await rig.until(lambda: healthy.uptime > w.config.restart.min_uptime)
        launcher.crash(healthy)
    elif event in (E.START_FAILED, E.RESTART_LIMIT):   # one that never got ready dies
        launcher.crash(rig.not_ready()[-1] if state is not S.RELOADING else
                       [x for x in rig.not_ready() if x not in w._candidates][0])
    elif event in (E.STARTED, E.SETTLE_ELAPSED, E.RELOAD_DONE):
        launcher.make_ready(*rig.not_ready())
    elif event in (E.BACKOFF_ELAPSED, E.READY_TIMEOUT, E.ALL_EXITED):
        pass                               # a timer, or the workers' exits
    else:
        raise AssertionError(f"no way to cause {event}")


LIVE_CELLS = [(state, event) for state, cells in WATCHER_TABLE.items()
              for event, cell in cells.items() if cell.kind in (Kind.GO, Kind.STAY)]


@pytest.mark.parametrize("state,event", LIVE_CELLS,
                         ids=[f"{s.value}-{e.value}" for s, e in LIVE_CELLS])
def test_cell(state, event):
    cell = WATCHER_TABLE[state][event]

    async def scenario():
        rig = rig_for(state, event)
        try:
            await reach(rig, state)
            assert rig.watcher.state is state, rig.watcher.status()
            mark = len(rig.seen)
            await cause(rig, state, event)
            await rig.until(lambda: any(b is state and e is event
                                        for b, e, _ in rig.seen[mark:]),
                            READY_TIMEOUT + BACKOFF + 1, f"{event.value} in {state.value}")
            after = next(a for b, e, a in rig.seen[mark:] if b is state and e is event)
            if cell.kind is Kind.GO:
                assert after in cell.to, (after, cell)
            else:
                assert after is state, (after, cell)
        finally:
            await rig.close()
    asyncio.run(scenario())


def test_every_cell_is_decided_and_explained():
    for state in WatcherState:
        assert set(WATCHER_TABLE[state]) == set(WatcherEvent), state
        for event, cell in WATCHER_TABLE[state].items():
            assert cell.why, (state, event)
            assert (cell.kind is Kind.GO) == bool(cell.to), (state, event)
            if cell.kind is Kind.IMPOSSIBLE:
                with pytest.raises(TransitionError):
                    decide(state, event)
            elif cell.kind is Kind.GO:
                assert decide(state, event)[1] is cell.to[0]
                for other in set(WatcherState) - set(cell.to):
                    with pytest.raises(TransitionError):
                        decide(state, event, other)
            else:
                assert decide(state, event)[1] is state
    # Every state can be left (STOPPED by a start), and reached.
    reached = {to for cells in WATCHER_TABLE.values() for c in cells.values() for to in c.to}
    assert reached == set(WatcherState) - {S.STOPPED} | {S.STOPPED}
    assert "| reload_done | → active / backoff |" in table_markdown()
    assert row(S.RELOADING)["reload_done"] == "active/backoff"
    assert "start" not in row(S.RELOADING)    # impossible: left out


def test_the_docs_table_is_the_generated_one():
    from pathlib import Path
    docs = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"
    assert docs.read_text() == table_markdown() + "\n", \
        "regenerate: python3 -m sockvisor.states > docs/lifecycle.md"


# ---------------------------------------------------------------- behaviours

def listening(name: str) -> ListeningSocket:
    sock = socket.socket()
    return ListeningSocket(SocketConfig(name=name, family=socket.AF_INET,
                                        host="127.0.0.1", port=0), sock)


def test_rollback_spawns_on_the_sockets_its_generation_was_started_with():
    """A reloadconfig renamed socket web to front (same listening socket) and the
    reload aborted: a worker of the rolled-back generation that dies is replaced
    on the old socket, though the supervisor's table no longer has `web`."""
    async def scenario():
        web = listening("web")
        rig = Rig(config(sockets=("web",)), sockets={"web": web})
        w, launcher = rig.watcher, rig.launcher
        try:
            await w.start()
            before = {x.pid for x in rig.live()}
            # reloadconfig: the table changes first, then the watcher reloads.
            rig.sockets.pop("web")
            rig.sockets["front"] = web
            launcher.fail_launch = True      # the new generation cannot start
            with pytest.raises(ReloadError, match="could not spawn"):
                await w.reload(dataclasses.replace(w.config, sockets=("front",)))
            assert w.config.sockets == ("web",) and w.state is S.ACTIVE
            assert {x.pid for x in rig.live()} == before
            launcher.fail_launch = False
            launcher.auto_ready = True
            victim = rig.live()[0]
            await rig.until(lambda: victim.uptime > 0.02)
            launcher.crash(victim)
            await rig.until(lambda: len(rig.ready()) == 2)
            replacement = rig.live()[-1]
            assert replacement.sockets == (web,) and replacement.wid == victim.wid
            assert sorted(x.wid for x in rig.live()) == [1, 2]
        finally:
            await rig.close()
    asyncio.run(scenario())


def test_watcher_going_fatal_during_a_reload_fails_the_reload_saying_so():
    async def scenario():
        rig = Rig(config(max_restarts=0, reload_batch=1))
        w, launcher = rig.watcher, rig.launcher
        try:
            await w.start()
            launcher.auto_ready = False
            reload = rig.task(w.reload())
            await rig.until(lambda: w._candidates)
            old = [x for x in rig.live() if x.generation == 1][0]
            old.ready_at = None              # dies as a failed start: FATAL at once
            launcher.crash(old)
            assert w.state is S.FATAL
            launcher.make_ready(*w._candidates)
            with pytest.raises(ReloadError, match="is FATAL"):
                await reload
            assert w.state is S.FATAL and w.config.sockets == ()
            assert (S.FATAL, E.SETTLE_ELAPSED, S.FATAL) in rig.seen
            # Nothing was spawned after the watcher went FATAL.
            assert len(launcher.launched) == 3
            launcher.auto_ready = True
            await w.start()
            assert w.state is S.ACTIVE and len(rig.ready()) == 2
        finally:
            await rig.close()
    asyncio.run(scenario())


def test_backoff_is_a_state_with_its_timer():
    async def scenario():
        rig = Rig(config(numprocesses=1))
        w, launcher = rig.watcher, rig.launcher
        try:
            await w.start()
            launcher.auto_ready = False
            await w.incr(1)
            launcher.crash(rig.not_ready()[0])
            assert w.state is S.BACKOFF
            status = w.status()
            assert 0 < status["backoff"] <= BACKOFF and status["next"]["backoff_elapsed"] == "starting"
            await w.decr(1)                  # retiring is not held back
            launcher.auto_ready = True
            await w.incr(1)                  # spawning is
            assert len(rig.live()) == 1
            await rig.until(lambda: w.state is S.ACTIVE, BACKOFF + 1)
            assert [t for t, d in rig.events if t == "watcher.web.state"][-2:] and \
                [d["to"] for t, d in rig.events if t == "watcher.web.state"][-3:] == [
                    "backoff", "starting", "active"]
            assert len(rig.ready()) == 2 and "backoff" not in w.status()
        finally:
            await rig.close()
    asyncio.run(scenario())


def test_on_demand_waits_for_a_connection_and_turning_it_off_starts_now():
    async def scenario():
        rig = Rig(config(on_demand=True, sockets=("web",), numprocesses=2),
                  sockets={"web": on_demand_socket()})
        w, launcher = rig.watcher, rig.launcher
        try:
            await w.start()
            assert w.state is S.WAITING and not launcher.launched
            assert w.status()["next"]["demand"] == "starting"
            await rig.demand()
            await rig.until(lambda: w.state is S.ACTIVE and len(rig.ready()) == 2)
            # A worker exits on its own: not replaced until the next connection.
            healthy = rig.ready()[0]
            await rig.until(lambda: healthy.uptime > w.config.restart.min_uptime)
            launcher.crash(healthy)
            assert w.state is S.WAITING and len(rig.live()) == 1
            assert len(launcher.launched) == 2
            # on_demand turned off (set, reloadconfig): nothing to wait for.
            await w.replace_config(dataclasses.replace(w.config, on_demand=False))
            await rig.until(lambda: w.state is S.ACTIVE and len(rig.ready()) == 2)
            assert w._demand is None
        finally:
            await rig.close()
    asyncio.run(scenario())


def test_an_on_demand_watch_follows_a_socket_bound_anew():
    """A worker connect()ed the shared socket away and sockvisor bound a new one
    (sockets.py): a WAITING watcher must watch the new socket, or the connections
    arriving there never start it."""
    import ctypes
    import struct

    from sockvisor.sockets import keep_listening

    async def scenario():
        listening = on_demand_socket()
        rig = Rig(config(on_demand=True, sockets=("web",)), sockets={"web": listening})
        w = rig.watcher
        hijacked = socket.socket(fileno=os.dup(listening.fd))   # a worker's fd 3
        other = socket.socket()
        try:
            await w.start()
            assert w.state is S.WAITING
            other.bind(("127.0.0.1", 0))
            other.listen(1)
            libc = ctypes.CDLL(None, use_errno=True)
            unspec = struct.pack("=H14s", socket.AF_UNSPEC, b"")
            assert libc.connect(hijacked.fileno(), unspec, len(unspec)) == 0
            hijacked.setblocking(True)
            hijacked.connect(other.getsockname())
            replaced = []
            keep_listening([listening], lambda topic, data: replaced.append(data))
            assert replaced and replaced[0]["replaced"], replaced
            w.socket_replaced(listening)   # what the supervisor does on that event
            for _ in range(5):
                await asyncio.sleep(0)
            assert w.state is S.WAITING
            await rig.demand()   # a connection to the new socket starts it
            await rig.until(lambda: w.state is S.ACTIVE)
        finally:
            hijacked.close()
            other.close()
            await rig.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("send_hup", [False, True])
def test_workers_on_a_socket_bound_anew_are_replaced_by_a_rolling_reload(send_hup):
    """Their fd is the dead socket: new workers, ready, then the old ones retired
    gracefully -- SIGHUP (send_hup) would leave them on the dead socket."""
    async def scenario():
        listening, elsewhere = on_demand_socket(), on_demand_socket()
        rig = Rig(config(send_hup=send_hup, sockets=("web",)), sockets={"web": listening})
        w = rig.watcher
        try:
            await w.start()
            old = rig.live()
            assert len(old) == 2 and w.state is S.ACTIVE
            w.socket_replaced(listening)
            await rig.until(lambda: not set(rig.live()) & set(old) and len(rig.ready()) == 2
                            and w.state is S.ACTIVE, what="the old workers replaced")
            assert all(worker.signals == [signal.SIGTERM] for worker in old), \
                [worker.signals for worker in old]
            assert [t for t, _ in rig.events if t.startswith("watcher.web.reload")] == [
                "watcher.web.reload.started", "watcher.web.reload.finished"]
            await rig.until(lambda: not w._background, what="the roll's task done")
            w.socket_replaced(elsewhere)   # a socket it does not use: nothing scheduled
            assert not w._background
            assert len(rig.launcher.launched) == 4
        finally:
            elsewhere.close()
            await rig.close()
    asyncio.run(scenario())


def test_a_socket_broken_again_and_again_rolls_the_workers_a_bounded_number_of_times():
    """A worker sharing the socket breaks it at every start: each break still
    gets the socket bound anew (sockets.py), but the workers are rolled at most
    RENEW_LIMIT times in RENEW_WINDOW -- not a reload storm for ever."""
    from sockvisor.watcher import RENEW_LIMIT

    async def scenario():
        listening = on_demand_socket()
        rig = Rig(config(sockets=("web",)), sockets={"web": listening})
        w = rig.watcher
        try:
            await w.start()
            for rolled in range(1, RENEW_LIMIT + 1):
                w.socket_replaced(listening)
                await rig.until(lambda: len(rig.launcher.launched) == 2 * (rolled + 1)
                                and len(rig.ready()) == 2 and w.state is S.ACTIVE
                                and not set(rig.live()) - set(rig.ready()),
                                what=f"roll {rolled} done")
                await rig.until(lambda: sum(t == "watcher.web.reload.finished"
                                            for t, _ in rig.events) == rolled,
                                what=f"roll {rolled} finished")
            await rig.until(lambda: not w._background, what="the last roll's task done")
            for _ in range(3):
                w.socket_replaced(listening)
                assert not w._background   # no roll scheduled past the limit
            reloads = [t for t, _ in rig.events if t == "watcher.web.reload.finished"]
            assert len(reloads) == RENEW_LIMIT, rig.events
            assert len(rig.launcher.launched) == 2 * (RENEW_LIMIT + 1)
        finally:
            await rig.close()
    asyncio.run(scenario())
