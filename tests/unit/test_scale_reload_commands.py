"""`incr` and background `reload` against a real Watcher (nothing spawned: a
stopped watcher only keeps its count; a fake reload never forks).

* Concurrent `incr`s queued behind a running command each checked the room left
  *before* the watcher's lock, so together they passed MAX_NUMPROCESSES.  The
  room is checked under the lock: the later one fails with a clear error.
* `reload` with `waiting = false` answers at once; the reload it started must
  still run even when nothing else refers to it (the event loop keeps only a
  weak reference to a task).
"""

from __future__ import annotations

import asyncio
import gc
import weakref

from sockvisor.config import WatcherConfig
from sockvisor.control.commands import incr_cmd, reload_cmd
from sockvisor.control.commands.base import MAX_NUMPROCESSES
from sockvisor.control.protocol import CommandError
from sockvisor.watcher import Watcher, WatcherContext


class FakeSupervisor:
    def __init__(self, watchers):
        self.watchers = {w.name: w for w in watchers}


def stopped_watcher(numprocesses: int) -> Watcher:
    context = WatcherContext(reaper=None, sockets={}, notify_address=None,
                             publish=lambda topic, data: None, workers_by_pid={})
    return Watcher(WatcherConfig(name="web", cmd="/bin/true", numprocesses=numprocesses,
                                 autostart=False), context)


def test_concurrent_incr_never_pass_the_maximum():
    async def scenario():
        watcher = stopped_watcher(MAX_NUMPROCESSES - 5)
        supervisor = FakeSupervisor([watcher])
        await watcher._lock.acquire()      # a command is running (a reload, say)
        first = asyncio.ensure_future(incr_cmd.COMMAND.execute(
            supervisor, {"name": "web", "nb": 4}))
        second = asyncio.ensure_future(incr_cmd.COMMAND.execute(
            supervisor, {"name": "web", "nb": 4}))
        await asyncio.sleep(0)            # both are queued behind the lock now
        await asyncio.sleep(0)
        watcher._lock.release()
        results = await asyncio.gather(first, second, return_exceptions=True)
        return watcher, results
    watcher, results = asyncio.run(scenario())
    assert watcher.numprocesses <= MAX_NUMPROCESSES, (watcher.numprocesses, results)
    assert results[0] == {"numprocesses": MAX_NUMPROCESSES - 1}, results
    assert isinstance(results[1], CommandError), results
    assert "at most" in str(results[1]), results[1]


class ParkedWatcher:
    """A watcher whose reload waits on a future that nothing else refers to: the
    task running it is then reachable only through whoever keeps it."""
    name = "web"

    def __init__(self):
        self.task = None

    async def reload(self):
        self.task = weakref.ref(asyncio.current_task())
        await asyncio.get_running_loop().create_future()   # parked for good
        return {"name": "web"}


def test_background_reload_is_kept_until_it_ends():
    async def scenario():
        watcher = ParkedWatcher()
        reply = await reload_cmd.COMMAND.execute(FakeSupervisor([watcher]),
                                                 {"name": "web", "waiting": False})
        assert reply == {"info": "reload started"}
        await asyncio.sleep(0)
        gc.collect()
        task = watcher.task()
        assert task is not None and not task.done(), \
            "the background reload was garbage-collected while it ran"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(scenario())
