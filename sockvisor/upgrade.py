"""Upgrade sockvisor itself in place: `sockvisorctl upgrade`, or SIGUSR2.

sockvisor execs the installed code (`sys.executable -P -m sockvisor`: whatever
sockvisor the interpreter imports now; -P so that the working directory is not
searched first) in its own process, with its state on an inherited memfd
(handover.py): same pid, so the workers stay its children (their exits are
still ours to reap, and PR_SET_PDEATHSIG, which fires when the *thread* that
forked them dies, does not fire: exec ends every other thread, so workers are
forked only from the main thread -- the event loop's), and systemd's MAINPID
is still right.  No worker is restarted; the listening sockets never close, so
the workers go on accepting through the gap.

Order, and why:
 1. Refuse while anything is half-way (`refusal`): a command running on a
    watcher, a reload, a worker being stopped, a socket being retired.  Their
    coroutines cannot cross an exec; the operator retries when it is done.
 2. Pre-flight: the state is written as it is now and the new code runs as a
    child, `sockvisor upgrade-check CONF --state-fd 3`: it must import, read
    the config and decode the state (a dry run of resume that takes nothing
    over).  Any failure refuses the upgrade with the child's reason; nothing
    has changed.
 3. The reply goes out (the command returns), then the exec task waits for the
    reply's handler to finish, tells the service manager RELOADING=1, closes
    the web console, publishes `sockvisor.upgrading`, leaves PATH.upgrading
    beside each ipc endpoint (so that a client finding it down waits:
    control/client.py), closes the control endpoints with a linger so that
    libzmq flushes the reply, and -- synchronously from here, so that nothing
    happens in between -- captures the state again, writes it to a memfd,
    clears close-on-exec on exactly the fds it names, pings the watchdog, and
    execs
    `sockvisor start CONF --resume FD`.
 4. If execve fails (or something started meanwhile), close-on-exec is set
    again, the endpoints are opened again, and sockvisor carries on as it was
    (READY=1 again); the waiting `sockvisorctl upgrade` is told why.
 5. The new process (Supervisor._run_resumed) takes the state: the sockets,
    the inodes of every listening socket ever handed to workers (first: the
    tcp relays accept as soon as they are taken over, and a worker may hold a
    socket reloadconfig retired and we closed -- control/peer.py), the sockets,
    the notify socket and every pipe by fd, the watchers and workers without
    spawning, each worker's pid registered with the reaper *before* the reaper
    first looks, so a worker that exited during the gap is reaped then and
    replaced as any crash is.  The endpoints are bound again at the same
    places; a `sockvisorctl` call made in the gap is retried by the client.
    It reports (`sockvisor.upgrade`, `status`, the `upgrade` command's result)
    the versions, the gap -- from just before the exec until it serves again --
    and the workers kept.

Not carried over: what lives only in a coroutine (hence the refusals above),
the output sinks' drop counters (`stats`), and events published during the
gap (ZeroMQ subscribers reconnect by themselves and miss what came meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import sys
import time
from typing import Any

from sockvisor import __version__, fdlimit, handover, process
from sockvisor import log as sockvisor_log
from sockvisor.control import peer
from sockvisor.states import WatcherState, WorkerState

# The supervisor is handed in (`Supervisor` below is sockvisor.supervisor's, by
# name only: it imports this module, so this one does not import it).
Supervisor = Any

log = logging.getLogger("sockvisor.upgrade")

PREFLIGHT_TIMEOUT = 30.0
REPLY_LINGER_MS = 1000   # how long closing the control channel waits to flush replies
# WAITING (an idle on_demand watcher) too: nothing of it lives in a coroutine,
# and Watcher.resumed arms the watch on its sockets again.
_STEADY = (WatcherState.ACTIVE, WatcherState.STOPPED, WatcherState.FATAL,
           WatcherState.BACKOFF, WatcherState.WAITING)


class UpgradeRefused(Exception):
    """The upgrade did not happen; nothing changed.  The message says why."""


# --------------------------------------------------------------------------- what to exec

def new_argv(config_path: str, state_fd: int | None = None, check: bool = False) -> list[str]:
    """The installed sockvisor, as the interpreter running us finds it now."""
    argv = [sys.executable, "-P", "-m", "sockvisor"]
    if check:
        return [*argv, "upgrade-check", config_path, "--state-fd", "3"]
    argv += ["start", config_path, "--resume", str(state_fd)]
    if "--log-level" in sys.argv[:-1]:
        argv += ["--log-level", sys.argv[sys.argv.index("--log-level") + 1]]
    return argv


# --------------------------------------------------------------------------- the state

def refusal(supervisor: Supervisor) -> str | None:
    """Why an upgrade cannot happen now (None: it can)."""
    if not supervisor.started:
        return "sockvisor is still starting"
    if supervisor.upgrading:
        return "an upgrade is already under way"
    if supervisor._config_lock.locked():
        return "a reloadconfig is under way"
    if supervisor.retired_sockets:
        return "a socket reloadconfig removed is still held by workers"
    for watcher in supervisor.watchers.values():
        if watcher._lock.locked() or watcher.state not in _STEADY:
            return f"watcher {watcher.name} is {watcher.state.value}, a command is running"
        if watcher.hook_runner.busy():
            return f"a hook of watcher {watcher.name} is running"
        for worker in watcher.workers.values():
            if worker.state == WorkerState.STOPPING or worker.stop_requested:
                return f"{worker.label} is being stopped"
    return None


def capture(supervisor: Supervisor) -> dict[str, Any]:
    """The whole state (handover.py's format) as it is now.  Synchronous."""
    from sockvisor import output
    config = supervisor.config
    watchers = []
    for watcher in supervisor.watchers.values():
        data = watcher.snapshot()
        for item, worker in zip(data["workers"], watcher.workers.values()):
            for stream, (fd, partial) in worker.pipes.items():
                entry = output.attached.get(fd)
                # Still this worker's pipe (read to its end, its fd may be
                # another's by now): the very buffer its reader was given.
                if entry is not None and entry[2] is partial:
                    item[stream] = {"fd": fd, "partial": handover.b64(bytes(partial))}
            item["config"] = (None if worker.config is watcher.config else
                              _encode_values(worker.config, f"watcher:{watcher.name}"))
        watchers.append(data)
    control = supervisor.control
    return {
        "format": handover.FORMAT, "version": __version__, "written_at": time.time(),
        "pid": os.getpid(), "started_at": supervisor.started_at,
        "upgrades": supervisor.upgrades,
        "config": {
            "path": config.path, "globals": handover.encode(config.globals),
            "sockets": {n: handover.encode(s) for n, s in config.sockets.items()},
            "plugins": handover.encode(config.plugins),
            "warnings": list(config.warnings),
            "watchers": {n: _encode_values(w.config, f"watcher:{n}")
                         for n, w in supervisor.watchers.items()}},
        # Every listening socket ever handed to workers, closed ones too: a
        # worker may still hold one, and its kernel uid (root's) must not let
        # it pass for root on a tcp:// control endpoint (control/peer.py).
        "shared_inodes": peer.shared_inodes(),
        "sockets": [{"name": name, "fd": s.fd, "address": s.address, "adopted": s.adopted,
                     "unix_inode": list(s.unix_inode) if s.unix_inode else None,
                     "relistened": s.relistened,
                     # Where it was bound: a worker may have it elsewhere right now.
                     "bound_at": list(s.bound_at) if s.bound_at is not None else None}
                    for name, s in supervisor.sockets.items()],
        "readiness": ({"fd": supervisor.readiness.fileno(),
                       "address": supervisor.readiness.address}
                      if supervisor.readiness is not None else None),
        "control": _endpoints(control),
        "cgroup": ({"path": supervisor.cgroups.path}
                   if supervisor.cgroups is not None else None),
        "adopts_orphans": supervisor.adopts_orphans,
        "nofile_started_with": fdlimit.started_with(),
        "ready_reported": supervisor._ready_reported,
        "stream_pending": {str(fd): handover.b64(data)
                           for fd, data in output.pending_output().items()},
        "watchers": watchers,
    }


def _encode_values(config, section: str) -> Any:
    """A watcher's option values (config.current_values) for the state.  `uid`
    is a passwd entry there, which JSON would flatten into a bare tuple: the
    state carries the uid number, and `_decode_values` looks the entry up again."""
    from sockvisor import config as config_module
    values = config_module.current_values(config, section)
    for key, value in values.items():
        if isinstance(value, pwd.struct_passwd):
            values[key] = {"$uid": value.pw_uid}
    return handover.encode(values)


def _decode_values(data: Any) -> dict[str, Any]:
    from sockvisor.config.values import _parse_user
    values = handover.decode(data)
    for key, value in values.items():
        if isinstance(value, dict) and set(value) == {"$uid"}:
            values[key] = _parse_user(str(value["$uid"]))
    return values


def _endpoints(control: Any) -> dict[str, Any] | None:
    if control is None:
        return None
    return {"endpoint": control.endpoint, "admin": control.admin_endpoint,
            "events": control.events_endpoint}


def decode_config(state: dict[str, Any]):
    """The config as it was running (handover.py), rebuilt by this version's
    loader from the option values; ConfigError/StateError if it cannot be."""
    from sockvisor.config import Config
    from sockvisor.config.loader import _Loader
    data = state["config"]
    sockets = {n: handover.decode(s) for n, s in data["sockets"].items()}
    loader = _Loader(data["path"], None, os.environ)
    watchers = {}
    for name, values in data["watchers"].items():
        watchers[name] = loader.watcher_from_values(name, f"watcher:{name}",
                                                    _decode_values(values), sockets)
    return Config(path=data["path"], globals=handover.decode(data["globals"]),
                  sockets=sockets, watchers=watchers,
                  warnings=tuple(data.get("warnings", ())),
                  plugins=handover.decode(data["plugins"]))


def shared_inodes_of(state: dict[str, Any]) -> list[int]:
    """The state's `shared_inodes` (none in a state written before they were
    carried); StateError if it is not a list of sock_diag's 32-bit inodes."""
    inodes = state.get("shared_inodes", [])
    if not isinstance(inodes, list) or not all(
            type(inode) is int and 0 <= inode <= 0xFFFFFFFF for inode in inodes):
        raise handover.StateError("shared_inodes: not a list of socket inodes")
    return inodes


def check(state: dict[str, Any]) -> str:
    """The dry run of a resume (the pre-flight child): decode everything a resume
    would take, take nothing.  Returns a summary; raises on any problem."""
    from sockvisor.config.loader import _Loader
    config = decode_config(state)
    loader = _Loader(config.path, None, os.environ)
    workers = 0
    for watcher in state["watchers"]:
        if watcher["name"] not in config.watchers:
            raise handover.StateError(f"watcher {watcher['name']} has no config")
        WatcherState(watcher["state"])
        for worker in watcher["workers"]:
            WorkerState(worker["state"])
            if worker.get("config") is not None:
                loader.watcher_from_values(watcher["name"], f"watcher:{watcher['name']}",
                                           _decode_values(worker["config"]),
                                           config.sockets)
            workers += 1
    for entry in state["sockets"]:
        if entry["name"] not in config.sockets:
            raise handover.StateError(f"socket {entry['name']} has no config")
    shared_inodes_of(state)
    return (f"state format {state['format']} from sockvisor {state['version']}: "
            f"{len(state['sockets'])} sockets, {len(state['watchers'])} watchers, "
            f"{workers} workers; sockvisor {__version__} can resume it")


def restore_watcher(config, data: dict[str, Any], context):
    """One watcher of the state, its workers taken over (Watcher.restore)."""
    from sockvisor.config.loader import _Loader
    from sockvisor.watcher import Watcher
    name = data["name"]
    loader = _Loader(config.path, None, os.environ)
    decoded: dict[str, Any] = {}   # one WatcherConfig per distinct worker config
    worker_configs, pipes = {}, {}
    for item in data["workers"]:
        if item.get("config") is not None:
            key = repr(item["config"])
            if key not in decoded:
                decoded[key] = loader.watcher_from_values(
                    name, f"watcher:{name}", _decode_values(item["config"]), config.sockets)
            worker_configs[item["pid"]] = decoded[key]
        pipes[item["pid"]] = {stream: (item[stream]["fd"], handover.unb64(item[stream]["partial"]))
                              for stream in ("stdout", "stderr") if item.get(stream)}
    return Watcher.restore(config.watchers[name], context, data, worker_configs, pipes)


# --------------------------------------------------------------------------- pre-flight

async def preflight(supervisor: Supervisor, state_fd: int) -> None:
    """Run the new code on the state (`sockvisor upgrade-check`) as a child;
    UpgradeRefused with its reason if it fails."""
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    spec = process.SpawnSpec(argv=new_argv(supervisor.config.path, check=True),
                             env=dict(os.environ), fds=[state_fd], stdout=out_w,
                             stderr=out_w)
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pid, status_r = process.fork_exec(spec)
    except OSError as exc:
        os.close(out_r)
        raise UpgradeRefused(f"cannot run the new sockvisor: {exc.strerror}") from None
    finally:
        os.close(out_w)
    assert supervisor.reaper is not None
    supervisor.reaper.register(pid, lambda status: exited.done() or exited.set_result(status))
    from sockvisor.preflight import _read_all
    output = _read_all(loop, out_r)
    try:
        status, text = await asyncio.wait_for(
            asyncio.gather(asyncio.shield(exited), output), PREFLIGHT_TIMEOUT)
    except asyncio.TimeoutError:
        try:
            os.killpg(pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        await asyncio.shield(exited)
        raise UpgradeRefused(f"the new sockvisor's pre-flight did not finish within "
                             f"{PREFLIGHT_TIMEOUT:g}s") from None
    finally:
        spawn_error = process.read_spawn_status(status_r)
        os.close(status_r)
    if spawn_error is not None:
        raise UpgradeRefused(process.describe_spawn_error(spawn_error, sys.executable))
    if status != 0:
        lines = text.decode(errors="replace").strip().splitlines()
        raise UpgradeRefused("the new sockvisor failed its pre-flight: "
                             + (lines[-1] if lines else f"exit status {status >> 8}"))
    log.info("upgrade pre-flight: %s", text.decode(errors="replace").strip())


# --------------------------------------------------------------------------- the upgrade

async def upgrade(supervisor: Supervisor, after: "asyncio.Task | None" = None
                  ) -> dict[str, Any]:
    """Pre-flight, then exec once `after` (the task sending the reply) is done.
    UpgradeRefused if it cannot happen; nothing changed then."""
    try:
        return await _upgrade(supervisor, after)
    except UpgradeRefused as exc:
        reason = str(exc) if str(exc).startswith("upgrade refused") else \
            f"upgrade refused: {exc}"
        log.error("%s; nothing changed", reason)
        supervisor.publish("sockvisor.upgrade.refused", {"reason": reason})
        raise UpgradeRefused(reason) from None


async def _upgrade(supervisor: Supervisor, after: "asyncio.Task | None"
                   ) -> dict[str, Any]:
    reason = refusal(supervisor)
    if reason:
        raise UpgradeRefused(f"upgrade refused: {reason}")
    supervisor.upgrading = True
    try:
        state = capture(supervisor)
        state_fd = handover.write(state)
        try:
            await preflight(supervisor, state_fd)
        finally:
            os.close(state_fd)
        reason = refusal_after_preflight(supervisor)
        if reason:
            raise UpgradeRefused(f"upgrade refused: {reason}")
    except handover.StateError as exc:
        supervisor.upgrading = False
        raise UpgradeRefused(f"upgrade refused: {exc}") from None
    except BaseException:
        supervisor.upgrading = False
        raise
    workers = sum(len(w["workers"]) for w in state["watchers"])
    task = asyncio.ensure_future(_exec_after(supervisor, after))
    supervisor._pending_closes.add(task)   # a strong reference until it is done
    task.add_done_callback(supervisor._pending_closes.discard)
    return {"from": __version__, "pid": os.getpid(), "workers": workers,
            "upgrades": supervisor.upgrades}


def refusal_after_preflight(supervisor: Supervisor) -> str | None:
    """The pre-flight took a while: is everything still at rest?"""
    supervisor.upgrading = False
    try:
        return refusal(supervisor)
    finally:
        supervisor.upgrading = True


async def _exec_after(supervisor: Supervisor, after: "asyncio.Task | None") -> None:
    if after is not None and after is not asyncio.current_task():
        await asyncio.wait([after])
    try:
        await _exec(supervisor)
    except Exception:
        log.exception("upgrade failed; carrying on as before")
    finally:
        supervisor.upgrading = False


async def _exec(supervisor: Supervisor) -> None:
    notifier = supervisor.notifier
    if supervisor._ready_reported:
        notifier.reloading()
    if supervisor.http is not None:
        await supervisor.http.close()
        supervisor.http = None
    # The plugins' tasks would not cross the exec, and a third-party plugin's
    # process would run twice once the new code starts its own: stopped here,
    # started again by the resumed process (or below, if the exec fails).
    await supervisor.plugins.close(shutting_down=False)
    # To subscribers while they are connected: the one after the exec reaches
    # only those that have reconnected by then.
    supervisor.publish("sockvisor.upgrading", {"from": __version__, "pid": os.getpid()})
    endpoints = _endpoints(supervisor.control)
    marked: list[str] = []
    if supervisor.control is not None:
        # Clients that find the endpoint down meanwhile wait for it (client.py).
        marked = list(supervisor.control.ipc_paths)
        mark_endpoints(marked)
        # The tcp relays' ports stay bound through the exec (and if it fails):
        # only the ZeroMQ sockets close.
        supervisor.relay_fds = supervisor.control.hand_over_relays()
        await supervisor.control.close(linger=REPLY_LINGER_MS)
        supervisor.control = None
    # From here on nothing awaits: the state is exactly what is exec'd with.
    reason = refusal_after_preflight(supervisor)
    if reason is None:
        state = capture(supervisor)
        if endpoints is not None:   # closed by now: as they were
            state["control"] = {**endpoints, "relays": supervisor.relay_fds,
                                "marked": marked}
        fds = handover.named_fds(state)
        state_fd = handover.write(state)
        argv = new_argv(supervisor.config.path, state_fd)
        log.info("upgrading: exec %s", " ".join(argv))
        sockvisor_log.flush()   # loggerconfig's handlers run in a thread the exec ends
        handover.set_inheritable([*fds, state_fd], True)
        if supervisor._watchdog_task is not None:
            notifier.watchdog()   # the new process pings first thing (cli/main.py)
        try:
            os.execve(argv[0], argv, os.environ)
        except OSError as exc:
            handover.set_inheritable(fds, False)
            os.close(state_fd)
            reason = f"exec {argv[0]} failed: {exc.strerror}"
    # Still here: the upgrade did not happen.  Said to whoever asks how it went
    # (`sockvisorctl upgrade` does), in the log, and as an event.
    log.error("upgrade abandoned: %s; carrying on as before", reason)
    supervisor.last_upgrade = {**(supervisor.last_upgrade or {}),
                               "failed_attempt": {"at": time.time(), "reason": reason}}
    supervisor.publish("sockvisor.upgrade.failed", {"reason": reason})
    await supervisor.reopen_endpoints(marked)
    supervisor.plugins.start(supervisor.config.plugins)
    if supervisor._ready_reported:
        notifier.ready(supervisor.status_line())


def mark_endpoints(paths: list[str]) -> None:
    """PATH.upgrading (our pid) beside each ipc endpoint while it is down: a
    client then waits for it instead of reporting sockvisor gone."""
    for path in paths:
        if not _ours(os.path.dirname(path)):
            continue   # clients there report the endpoint down instead of waiting
        # A fresh file (O_EXCL after unlinking whatever has the name): never
        # written through a link someone else put there (DESIGN.md §5).
        unmark_endpoints([path])
        try:
            fd = os.open(path + ".upgrading", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("cannot mark %s as upgrading: %s", path, exc.strerror)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")


def _ours(directory: str) -> bool:
    """A directory only root or we can write (not a symlink): root creates and
    removes the markers by name, so nobody else may swap what the name means."""
    import stat
    try:
        st = os.lstat(directory or ".")
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid in (0, os.geteuid())
            and not st.st_mode & 0o022)


def unmark_endpoints(paths: list[str]) -> None:
    for path in paths:
        if not _ours(os.path.dirname(path)):
            continue
        try:
            os.unlink(path + ".upgrading")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s.upgrading: %s", path, exc.strerror)


# --------------------------------------------------------------------------- the CLI

def check_main(config_path: str, state_fd: int) -> int:
    """`sockvisor upgrade-check CONF --state-fd N` (the pre-flight child)."""
    from sockvisor import config as config_module
    try:
        config_module.load(config_path)
        state = handover.read(state_fd)
        print(check(state))
    except Exception as exc:   # whatever it is, the upgrade is refused with it
        print(f"sockvisor {__version__}: cannot resume: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0
