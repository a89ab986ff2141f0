"""Soak: minutes of HTTP load while workers are SIGKILLed and reloaded, and what is left.

One supervisor (sockvisor; optionally Circus 0.19 beside it, see below) runs one
watcher `web` of `--workers` (2) copies of the reload worker from `common.py` (the
stdlib HTTP server on the inherited listening fd that answers with its pid,
finishes the request in hand before it obeys SIGTERM and sends READY=1 to
$NOTIFY_SOCKET) on `[socket:web]` at 127.0.0.1 port 0; the port the kernel chose is
read back through the control channel (`listsockets`).  For `--minutes` (10) or
`--seconds`, all at once:

  * load: `--clients` (8) threads, each sending one request after the other
    (`common.http_get_pid`: a new connection per request, `--request-timeout` 10 s),
    until the deadline or their share of `--max-requests` (a hard cap);
  * kills: every 2-4 s (uniform, `--kill-every MIN MAX`) a random live worker gets
    SIGKILL (how, exactly: see "attribution");
  * operations, every `--op-every` (5) s, alternately: `reload web`, and
    `reloadconfig` after rewriting the config file with a real change (the
    watcher's `env = SOAK_FLIP=a` flips to `b` and back, which sockvisor applies
    as a rolling reload of `web`; the reply must list `web` as reloaded.  A
    reloadconfig aborted by a kill leaves sockvisor on the old config, so the next
    one makes the same change again);
  * a sampler every 5 s: the supervisor's open fds (/proc/PID/fd), RSS (VmRSS), and
    its children in state Z (zombies).

Then the load and the chaos stop, the run waits (≤ 30 s) until the watcher has its
`--workers` workers and answers, and (≤ 5 s) until no child of the supervisor is a
zombie, and takes the end figures.

Attribution of failed requests (the point of the exercise).  A request whose
connection was *accepted by the worker that was killed* can fail whatever the
supervisor does: the kernel closes the dead worker's sockets (RST if the request
was still unread, FIN if it had been read: the client sees a reset or an empty
answer).  A connection that is still in the listening socket's accept queue is not
the worker's, and must survive: the supervisor holds that socket.  So the soak
records exactly which connections the victim held when it died, instead of
guessing from timing:

  1. SIGSTOP the victim and wait until /proc says it is stopped (state T): from
     then on it cannot accept anything more;
  2. read the victim's TCP connections (psutil: its fds' socket inodes matched
     against /proc/net/tcp) and note the client port of each connection to our
     port (the worker serves one at a time, so there are 0 or 1);
  3. SIGKILL it (always, in a `finally`).  The stop lasts a few ms.
Every client notes its own local port once connected (`on_connect`).  A failed
request counts as **in the killed worker** only if its client port is one the victim
held *and* the victim was stopped while that request was under way (request start ≤
stop ≤ failure).  Every other failure — connection refused, a timeout (connect or
answer), a reset or an empty answer on a connection no killed worker held, a wrong
answer, a failure during a reload — counts as **the supervisor could have saved
it**, and is shown by kind and by whether a reload/reloadconfig was running.  A
client-side EADDRNOTAVAIL (the load generator ran out of ephemeral ports) is
counted apart as a client error.  Timing alone ("a reset within N ms of a kill")
would also excuse a reset that sockvisor caused right after a kill; matching the
victim's own connections excuses nothing else.

Operations: a `reload` or `reloadconfig` that returns an error counts as *explained*
when a kill happened while it ran (a new worker killed before it was ready aborts the
reload, by design: the old workers keep serving), and as a failure otherwise.

Verdict (per supervisor): PASS when no failure the supervisor could have saved, no
unexplained operation error, the watcher serving again at the end, open fds at the
end ≤ start + `--fd-slack` (2), no zombie at the end and none seen in two samples in
a row (a zombie lasting 5 s is a leak; one between a death and its reap is not), and
RSS growth ≤ `--rss-slack-mib` (16 MiB).  The exit status is 1 if sockvisor's verdict
is FAIL.

Configs: sockvisor `ready = notify` (old workers serve until the new ones said
READY=1), `ready_timeout = 10`, `graceful_timeout = 5`, `[socket:web] blocking =
false` (the reload worker's select() loop wants a non-blocking socket, as in
reload.py), and `min_uptime = 0.05`, `max_restarts = 1000000`: a worker killed
younger than `min_uptime` (default 1 s) is a failed start and is restarted after a
backoff, and enough of those make the watcher FATAL; that is the flapping guard
doing its job, not what this soak measures.

Circus (`--supervisors sockvisor,circus`, the default): circusd 0.19 as it ships
(`check_delay` 5 s; `--circus-check-delay`), the same worker on its own port, the same
kill cadence and the same `reload web` (`waiting`), in the same window, with its own
clients.  It gets no `reloadconfig`: Circus's reloadconfig removes a changed watcher
(stopping every worker) and adds it anew, so nothing serves until the new workers
have started; that is a planned gap, not the zero-downtime operation being soaked
(its slots stay idle), so the Circus column is kill + reload only.

    python bench/soak.py [--minutes 10 | --seconds S] [--supervisors sockvisor,circus]
                         [--json PATH] [--keep]

Everything stays on 127.0.0.1; nothing needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

SAMPLE_EVERY = 5.0            # s between two resource samples
SETTLE_TIMEOUT = 30.0         # s for the watcher to serve again at the end
ZOMBIE_GRACE = 5.0            # s for the last zombie to be reaped at the end
OP_TIMEOUT = 60.0             # s for one reload / reloadconfig reply
STOP_TIMEOUT = 10.0           # s for a SIGSTOPped victim to show state T (busy machine)
FAILURES_KEPT = 200           # failures listed one by one in the JSON
GONE = "gone before the kill"

SOCKVISOR_WATCHER = {"ready": "notify", "ready_timeout": 10, "graceful_timeout": 5,
                     "min_uptime": 0.05, "max_restarts": 1_000_000, "restart_window": 60}


# --------------------------------------------------------------------------- records

@dataclass
class Kill:
    t: float                      # s since the start, when SIGSTOP was sent
    pid: int
    ports: list[int]              # client ports of the connections it held
    during: str | None            # the operation running at the time, if any
    skipped: str = ""             # why nobody was killed, or why its connections are unknown
    # When SIGKILL was sent (None: as `t`).  The victim stops some time after
    # SIGSTOP: a connection it accepted in between is one it held, and the
    # request on it began after `t`.
    t_end: float | None = None

    @property
    def happened(self) -> bool:
        return bool(self.pid) and self.skipped != GONE


@dataclass
class Failure:
    t0: float                     # request start, s since the start
    t1: float                     # failure seen
    port: int | None              # our client port, None if the connection never was
    kind: str
    detail: str
    during: str | None = None     # an operation that overlapped the request
    attributed_to: int | None = None   # the killed pid that held the connection


@dataclass
class Operation:
    kind: str                     # reload | reloadconfig
    t0: float
    t1: float = 0.0
    ok: bool = False
    error: str = ""
    kills: int = 0                # kills while it ran


@dataclass
class Sample:
    t: float
    fds: int
    rss_kib: int
    zombies: list[int]
    workers: int


@dataclass
class ClientStats:
    ok: int = 0
    latencies: array = field(default_factory=lambda: array("d"))   # s, ok requests
    failures: list[Failure] = field(default_factory=list)


# --------------------------------------------------------------------------- /proc

def supervisor_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def zombie_children(pid: int) -> list[int]:
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
    return sorted(found)


def _state(pid: int) -> str:
    """The one-letter state of `pid` from /proc, or "X" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return "X"
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


# --------------------------------------------------------------------------- one soaked supervisor

class Soak:
    """One supervisor under load, kills and operations; the threads and their records."""

    def __init__(self, kind: str, directory: str, args: argparse.Namespace, seed: int):
        self.kind = kind
        self.directory = directory
        self.args = args
        self.rng = random.Random(seed)
        self.sup: common.Supervised | None = None
        self.port = 0
        self.began = 0.0
        self.flip = "a"               # SOAK_FLIP in the config file
        self.running_flip = "a"       # SOAK_FLIP of the config sockvisor runs
        self.current_op: str | None = None
        self.kills: list[Kill] = []
        self.ops: list[Operation] = []
        self.samples: list[Sample] = []
        self.clients: list[ClientStats] = []
        self.lingering: set[int] = set()
        self.notes: list[str] = []
        self.start_sample: Sample | None = None
        self.end_sample: Sample | None = None
        self.serving_at_end = False
        self.exit_status: int | None = None
        self.log_tail = ""

    # ---- start

    def worker_args(self, fd: str | None = None) -> str:
        return common.worker_args(os.path.join(self.directory, "worker.py"),
                                  common.reload_worker_options(0.0), fd)

    def sections(self) -> dict[str, dict[str, object]]:
        n = self.args.workers
        if self.kind == "sockvisor":
            return {"sockvisor": {"loglevel": "warning",
                                  "endpoint": f"ipc://{self.directory}/sockvisor-control",
                                  "pubsub_endpoint": f"ipc://{self.directory}/sockvisor-events"},
                    "socket:web": {"host": common.HOST, "port": 0, "blocking": "false"},
                    "watcher:web": {"cmd": f"{sys.executable} {self.worker_args()}",
                                    "numprocesses": n,
                                    "sockets": "web", **SOCKVISOR_WATCHER,
                                    "env": f"SOAK_FLIP={self.flip}"}}
        circus: dict[str, object] = {"endpoint": f"ipc://{self.directory}/circus-control",
                                     "pubsub_endpoint": f"ipc://{self.directory}/circus-pubsub",
                                     "statsd": "False"}
        if self.args.circus_check_delay is not None:
            circus["check_delay"] = self.args.circus_check_delay
        return {"circus": circus,
                "socket:web": {"host": common.HOST, "port": 0},
                "watcher:web": {"cmd": sys.executable,
                                "args": self.worker_args("$(circus.sockets.web)"),
                                "numprocesses": n, "use_sockets": "True",
                                "graceful_timeout": 5}}

    def start(self) -> None:
        common.write_worker(self.directory)
        self.sup = common.launch_supervisor(self.kind, self.directory, self.sections(),
                                            label=self.kind, ready=self._serving,
                                            timeout=60.0)
        self.sup.settings["numprocesses"] = self.args.workers

    def _serving(self, sup: common.Supervised) -> bool:
        """The port from `listsockets` (the config says 0), then: all workers up, one answers."""
        if not sup.port:
            reply = common.control_call(sup, "listsockets", timeout=2.0)
            sup.port = next(int(s["port"]) for s in reply["sockets"]  # type: ignore[union-attr]
                            if s["name"] == "web")
            self.port = sup.port
        workers = sup.workers()
        return (len(workers) == self.args.workers
                and common.http_get_pid(sup.port, timeout=2.0) in workers)

    def now(self) -> float:
        return time.monotonic() - self.began

    def sample(self) -> Sample:
        assert self.sup is not None
        pid = self.sup.pid
        return Sample(round(self.now(), 2), supervisor_fds(pid), common.proc_rss_kib(pid),
                      zombie_children(pid), len(self.sup.workers()))

    # ---- the threads

    def threads(self, stop: threading.Event, quota: int) -> list[threading.Thread]:
        self.clients = [ClientStats() for _ in range(self.args.clients)]
        found = [threading.Thread(target=self._client, args=(stop, stats, quota),
                                  name=f"{self.kind}-client-{i}", daemon=True)
                 for i, stats in enumerate(self.clients)]
        for target in (self._killer, self._operator, self._sampler):
            found.append(threading.Thread(target=target, args=(stop,),
                                          name=f"{self.kind}-{target.__name__[1:]}",
                                          daemon=True))
        return found

    def _client(self, stop: threading.Event, stats: ClientStats, quota: int) -> None:
        connected: list[int] = []

        def note(conn: socket.socket) -> None:
            connected.append(conn.getsockname()[1])

        done = 0
        while not stop.is_set() and done < quota:
            done += 1
            connected.clear()
            t0 = time.monotonic()
            try:
                common.http_get_pid(self.port, timeout=self.args.request_timeout,
                                    on_connect=note)
            except (OSError, ValueError) as exc:
                t1 = time.monotonic()
                port = connected[0] if connected else None
                kind, detail = classify(exc, port is not None)
                stats.failures.append(Failure(round(t0 - self.began, 4),
                                              round(t1 - self.began, 4), port, kind, detail))
            else:
                stats.ok += 1
                stats.latencies.append(time.monotonic() - t0)

    def _killer(self, stop: threading.Event) -> None:
        low, high = self.args.kill_every
        while not stop.wait(self.rng.uniform(low, high)):
            assert self.sup is not None
            try:
                workers = sorted(self.sup.workers())
            except psutil.Error as exc:
                self.kills.append(Kill(round(self.now(), 3), 0, [], self.current_op,
                                       skipped=f"could not list workers: {exc}"))
                continue
            if not workers:
                self.kills.append(Kill(round(self.now(), 3), 0, [], self.current_op,
                                       skipped="no live worker"))
                continue
            self.kills.append(self._kill(self.rng.choice(workers)))

    def _kill(self, victim: int) -> Kill:
        """SIGSTOP, note the victim's connections to our port, SIGKILL (see the docstring)."""
        during = self.current_op
        t = self.now()
        try:
            os.kill(victim, signal.SIGSTOP)
        except ProcessLookupError:
            return Kill(round(t, 3), victim, [], during, skipped=GONE)
        ports: list[int] = []
        try:
            # kill() returns before the signal is acted on: until the victim shows
            # state T it may still accept a connection we would not see.
            deadline = time.monotonic() + STOP_TIMEOUT
            while _state(victim) not in "TtZX" and time.monotonic() < deadline:
                time.sleep(0.0002)
            if _state(victim) not in "Tt":
                skipped = f"state {_state(victim)} after SIGSTOP"
            else:
                skipped = ""
                with contextlib.suppress(psutil.Error):
                    for conn in psutil.Process(victim).net_connections(kind="tcp4"):
                        if conn.raddr and conn.laddr.port == self.port:
                            ports.append(conn.raddr.port)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        kill = Kill(round(t, 4), victim, ports, during, t_end=round(self.now(), 4))
        if skipped:
            kill.skipped = skipped      # killed all the same; its connections unknown
        return kill

    def _operator(self, stop: threading.Event) -> None:
        # sockvisor: reload, reloadconfig, reload, ...; Circus: reload, (idle), reload, ...
        plan = ["reload", "reloadconfig" if self.kind == "sockvisor" else None]
        index = 0
        while not stop.wait(max(0.0, (index + 1) * self.args.op_every - self.now())):
            kind = plan[index % 2]
            index += 1
            if kind is not None:
                self.ops.append(self._operate(kind))

    def _operate(self, kind: str) -> Operation:
        assert self.sup is not None
        op = Operation(kind, round(self.now(), 3))
        self.current_op = kind
        try:
            if kind == "reload":
                common.control_call(self.sup, "reload", {"name": "web", "waiting": True},
                                    timeout=OP_TIMEOUT)
            else:
                # Flip from what sockvisor runs.  An aborted reloadconfig leaves it on
                # the old config, so until one succeeds each attempt is the same change.
                self.flip = "b" if self.running_flip == "a" else "a"
                path = self.sup.config_path
                with open(path + ".new", "w", encoding="utf-8") as handle:
                    handle.write(common._ini(self.sections()))   # the format launch used
                os.replace(path + ".new", path)
                reply = common.control_call(self.sup, "reloadconfig", timeout=OP_TIMEOUT)
                if "web" not in (reply.get("reloaded") or []):  # type: ignore[operator]
                    raise OSError(f"reloadconfig did not reload web: {reply}")
                self.running_flip = self.flip
            op.ok = True
        except OSError as exc:
            op.error = str(exc)[:300]
        finally:
            self.current_op = None
            op.t1 = round(self.now(), 3)
        return op

    def _sampler(self, stop: threading.Event) -> None:
        previous: set[int] = set()
        while not stop.wait(SAMPLE_EVERY):
            with contextlib.suppress(OSError, psutil.Error):
                sample = self.sample()
                self.samples.append(sample)
                self.lingering |= previous & set(sample.zombies)
                previous = set(sample.zombies)

    # ---- the end

    def settle(self) -> None:
        """After the chaos: serving again, zombies reaped (bounded waits), end figures."""
        assert self.sup is not None
        try:
            self.sup.wait_serving(SETTLE_TIMEOUT)
            self.serving_at_end = True
        except (RuntimeError, TimeoutError) as exc:
            self.notes.append(f"not serving {SETTLE_TIMEOUT:g}s after the end: "
                              f"{str(exc).splitlines()[0]}")
        if self.sup.process.poll() is not None:
            self.notes.append(f"{self.kind} exited with status {self.sup.process.returncode}")
            return
        with contextlib.suppress(TimeoutError):
            common.wait_for(lambda: not zombie_children(self.sup.pid), ZOMBIE_GRACE,
                            what="zombies to be reaped")
        self.end_sample = self.sample()

    def stop(self) -> None:
        if self.sup is not None:
            common.close_control(self.sup)
            self.exit_status = self.sup.stop()
            self.log_tail = self.sup.log_tail(30)

    # ---- figures

    def attribute(self) -> list[Failure]:
        """Every failure, each marked with the killed pid that held its connection (if
        any) and the operation it overlapped; every operation with its kills."""
        for op in self.ops:
            op.kills = sum(1 for k in self.kills if k.happened and op.t0 <= k.t <= op.t1)
        by_port: dict[int, list[Kill]] = {}
        for kill in self.kills:
            for port in kill.ports:
                by_port.setdefault(port, []).append(kill)
        failures = sorted((f for c in self.clients for f in c.failures), key=lambda f: f.t0)
        for failure in failures:
            failure.during = next((o.kind for o in self.ops
                                   if o.t0 <= failure.t1 and failure.t0 <= o.t1), None)
            if failure.port is None:
                continue
            for kill in by_port.get(failure.port, []):
                # The request overlapped the stop-to-kill window (the port alone
                # could be a later connection that reused it).
                end = kill.t if kill.t_end is None else kill.t_end
                if failure.t0 <= end and kill.t <= failure.t1:
                    failure.attributed_to = kill.pid
                    break
        return failures

    def result(self, seconds: float) -> dict[str, Any]:
        failures = self.attribute()
        in_worker = [f for f in failures if f.attributed_to is not None]
        client = [f for f in failures if f.attributed_to is None and f.kind == "client"]
        saveable = [f for f in failures if f.attributed_to is None and f.kind != "client"]
        by_kind: dict[str, int] = {}
        for f in saveable:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        latencies = sorted(x for c in self.clients for x in c.latencies)
        ok = sum(c.ok for c in self.clients)
        kills = [k for k in self.kills if k.happened]
        held = sum(len(k.ports) for k in kills)
        ops: dict[str, dict[str, Any]] = {}
        for kind in ("reload", "reloadconfig"):
            mine = [o for o in self.ops if o.kind == kind]
            errors = [o for o in mine if not o.ok]
            ops[kind] = {"run": len(mine), "ok": len(mine) - len(errors),
                         "errors_explained_by_a_kill": sum(1 for o in errors if o.kills),
                         "errors_unexplained": [asdict(o) for o in errors if not o.kills],
                         "seconds_median": round(common.median([o.t1 - o.t0 for o in mine]), 3)
                         if mine else None}
        start, end = self.start_sample, self.end_sample
        samples = [s for s in [start, *self.samples, end] if s is not None]
        result: dict[str, Any] = {
            "supervisor": self.kind, "port": self.port, "seconds": round(seconds, 1),
            "requests": ok + len(failures), "ok": ok, "failed": len(failures),
            "failed_in_killed_worker": len(in_worker),
            "failed_saveable": len(saveable), "saveable_by_kind": by_kind,
            "saveable_during_operation": sum(1 for f in saveable if f.during),
            "failed_client_side": len(client),
            "latency_ms": {"p50": round(common.percentile(latencies, 50) * 1000, 2),
                           "p99": round(common.percentile(latencies, 99) * 1000, 2),
                           "max": round(latencies[-1] * 1000, 1) if latencies else None},
            "kills": len(kills), "kills_skipped": len(self.kills) - len(kills),
            "kills_with_connection": sum(1 for k in kills if k.ports),
            "connections_held_by_victims": held,
            "kills_state_unknown": sum(1 for k in kills if k.skipped),
            "operations": ops,
            "start": asdict(start) if start else None, "end": asdict(end) if end else None,
            "fds_max": max((s.fds for s in samples), default=None),
            "rss_kib_max": max((s.rss_kib for s in samples), default=None),
            "zombies_lingering": sorted(self.lingering),
            "zombies_max_in_a_sample": max((len(s.zombies) for s in samples), default=None),
            "serving_at_end": self.serving_at_end, "notes": self.notes,
            "samples": [asdict(s) for s in samples],
            "kill_log": [asdict(k) for k in self.kills],
            "operation_log": [asdict(o) for o in self.ops],
            "failures_listed": [asdict(f) for f in failures[:FAILURES_KEPT]],
            "exit_status": self.exit_status, "log_tail": self.log_tail,
        }
        result["verdict"], result["reasons"] = verdict(result, self.args)
        return result


# (kind, detail) of a failed request: the tests' classification, so that a
# "refused" or a "reset" means the same thing in a test and in the soak.
classify = common.http_load.classify


def verdict(r: dict[str, Any], args: argparse.Namespace) -> tuple[str, list[str]]:
    reasons = []
    if r["failed_saveable"]:
        reasons.append(f"{r['failed_saveable']} failed requests the supervisor could have saved")
    unexplained = sum(len(o["errors_unexplained"]) for o in r["operations"].values())
    if unexplained:
        reasons.append(f"{unexplained} operation errors with no kill during them")
    if not r["serving_at_end"]:
        reasons.append("not serving at the end")
    start, end = r["start"], r["end"]
    if start is None or end is None:
        reasons.append("no end figures (supervisor gone?)")
    else:
        if end["fds"] > start["fds"] + args.fd_slack:
            reasons.append(f"fds {start['fds']} -> {end['fds']} (> +{args.fd_slack})")
        if end["zombies"]:
            reasons.append(f"{len(end['zombies'])} zombies at the end")
        growth = (end["rss_kib"] - start["rss_kib"]) / 1024
        if growth > args.rss_slack_mib:
            reasons.append(f"RSS grew {growth:.1f} MiB (> {args.rss_slack_mib:g})")
    if r["zombies_lingering"]:
        reasons.append(f"zombies seen in two samples {SAMPLE_EVERY:g}s apart: "
                       f"{r['zombies_lingering']}")
    return ("PASS" if not reasons else "FAIL"), reasons


# --------------------------------------------------------------------------- the run

def run(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    soaks = []
    for index, kind in enumerate(args.supervisors):
        path = os.path.join(directory, kind)
        os.makedirs(path)
        soaks.append(Soak(kind, path, args, args.seed + index))
    machine = common.machine_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        for soak in soaks:
            soak.start()
        stop = threading.Event()
        quota = max(1, args.max_requests // (args.clients * len(soaks)))
        threads = [t for soak in soaks for t in soak.threads(stop, quota)]
        began = time.monotonic()
        for soak in soaks:
            soak.began = began
            soak.start_sample = soak.sample()
        for thread in threads:
            thread.start()
        stop.wait(seconds)      # the soak's own length, not a synchronisation
        stop.set()
        for thread in threads:  # clients: ≤ one request timeout; operator: ≤ one reply
            thread.join(args.request_timeout + OP_TIMEOUT + 10)
            if thread.is_alive():
                soaks[0].notes.append(f"thread {thread.name} still running at the end")
        elapsed = time.monotonic() - began
        for soak in soaks:
            soak.settle()
    finally:
        for soak in soaks:
            soak.stop()
    return {"machine": machine, "started": started.isoformat(),
            "settings": {"seconds": seconds, "workers": args.workers, "clients": args.clients,
                         "kill_every": args.kill_every, "op_every": args.op_every,
                         "request_timeout": args.request_timeout,
                         "max_requests": args.max_requests, "seed": args.seed,
                         "fd_slack": args.fd_slack, "rss_slack_mib": args.rss_slack_mib,
                         "sockvisor_watcher": SOCKVISOR_WATCHER,
                         "circus_check_delay": args.circus_check_delay},
            "results": [soak.result(elapsed) for soak in soaks]}


# --------------------------------------------------------------------------- report

def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def report(data: dict[str, Any]) -> str:
    s, m = data["settings"], data["machine"]
    results = data["results"]
    low, high = s["kill_every"]
    lines = [
        f"soak: {s['seconds'] / 60:g} min of HTTP load ({s['clients']} clients per supervisor, "
        f"a new connection per request), SIGKILL of a random worker every {low:g}-{high:g} s, "
        f"an operation every {s['op_every']:g} s (sockvisor: reload / reloadconfig "
        f"alternately; circus: reload / nothing); {s['workers']} workers, 127.0.0.1",
        f"machine: nproc {m['nproc']}, Python {m['python']}, circus {m['circus']}, sockvisor "
        f"{m['sockvisor']}"
        + (f" ({m['sockvisor_commit']})" if "sockvisor_commit" in m else "")
        + f", kernel {m['kernel']}, load {m['loadavg']}",
        ""]

    def row(name: str, get) -> list[object]:
        cells: list[object] = [name]
        for r in results:
            try:
                cells.append(get(r))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        return cells

    def ops(kind: str):
        def get(r: dict[str, Any]) -> str:
            o = r["operations"][kind]
            if not o["run"]:
                return "-"
            text = f"{o['ok']}/{o['run']}"
            if o["errors_explained_by_a_kill"]:
                text += f" ({o['errors_explained_by_a_kill']} aborted by a kill)"
            if o["errors_unexplained"]:
                text += f" ({len(o['errors_unexplained'])} UNEXPLAINED)"
            return text
        return get

    def kinds(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(r["saveable_by_kind"].items())) or "-"

    rows = [
        row("requests", lambda r: f"{r['requests']:,}"),
        row("  ok", lambda r: f"{r['ok']:,}"),
        row("  failed", lambda r: f"{r['failed']:,}"),
        row("    in the killed worker (in flight)", lambda r: r["failed_in_killed_worker"]),
        row("    the supervisor could have saved", lambda r: r["failed_saveable"]),
        row("      by kind", kinds),
        row("      while a reload/reloadconfig ran", lambda r: r["saveable_during_operation"]),
        row("    client-side (no free port)", lambda r: r["failed_client_side"]),
        row("latency ms p50 / p99 / max (ok)",
            lambda r: f"{r['latency_ms']['p50']:g} / {r['latency_ms']['p99']:g} / "
                      f"{r['latency_ms']['max']:g}"),
        row("kills (SIGKILL of a worker)", lambda r: r["kills"]),
        row("  holding a connection", lambda r: f"{r['kills_with_connection']} "
                                               f"({r['connections_held_by_victims']} conns)"),
        row("reloads ok / run", ops("reload")),
        row("reloadconfigs ok / run", ops("reloadconfig")),
        row("fds start -> end (max)",
            lambda r: f"{r['start']['fds']} -> {r['end']['fds']} ({r['fds_max']})"),
        row("RSS MiB start -> end (max)",
            lambda r: f"{_mib(r['start']['rss_kib'])} -> {_mib(r['end']['rss_kib'])} "
                      f"({_mib(r['rss_kib_max'])})"),
        row("zombies start -> end (lingering)",
            lambda r: f"{len(r['start']['zombies'])} -> {len(r['end']['zombies'])} "
                      f"({len(r['zombies_lingering'])})"),
        row("verdict", lambda r: r["verdict"]),
    ]
    lines.append(common.format_table(["measure"] + [r["supervisor"] for r in results], rows,
                                     align="l" + "r" * len(results)))
    lines.append("")
    lines.append("in the killed worker = its client port was a connection the victim held when "
                 "it was stopped (SIGSTOP, read its sockets, SIGKILL)")
    lines.append(f"verdict: no saveable failure, no unexplained operation error, serving at the "
                 f"end, fds end <= start + {s['fd_slack']}, no zombie at the end nor in two "
                 f"samples {SAMPLE_EVERY:g}s apart, RSS growth <= {s['rss_slack_mib']:g} MiB")
    for r in results:
        for reason in r["reasons"]:
            lines.append(f"{r['supervisor']}: FAIL: {reason}")
        for note in r["notes"]:
            lines.append(f"{r['supervisor']}: NOTE: {note}")
        for o in (x for ops_ in r["operations"].values() for x in ops_["errors_unexplained"]):
            lines.append(f"{r['supervisor']}: {o['kind']} at {o['t0']:.1f}s: {o['error']}")
    return "\n".join(lines)


def figures(data: dict[str, Any]) -> list[dict[str, object]]:
    """The run_all.py figures (see common.figure)."""
    by = {r["supervisor"]: r for r in data["results"]}
    sv, cc = by.get("sockvisor"), by.get("circus")
    if sv is None:
        return []
    out = [common.figure("soak: failed requests the supervisor could have saved",
                         str(sv["failed_saveable"]),
                         str(cc["failed_saveable"]) if cc else "", "", "0",
                         sv["failed_saveable"] == 0,
                         other=f"in killed workers: {sv['failed_in_killed_worker']} of "
                               f"{sv['requests']:,}")]
    if sv["start"] and sv["end"]:
        out.append(common.figure("soak: fds / zombies / RSS MiB, start -> end",
                                 f"{sv['start']['fds']}->{sv['end']['fds']} / "
                                 f"{len(sv['end']['zombies'])} / "
                                 f"{_mib(sv['start']['rss_kib'])}->{_mib(sv['end']['rss_kib'])}",
                                 "", "", "flat", sv["verdict"] == "PASS"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="HTTP load while workers are SIGKILLed and reloaded; what failed, and "
                    "the supervisor's fds, RSS and zombies before and after.")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    length.add_argument("--seconds", type=float, help="length in seconds, for short runs")
    parser.add_argument("--supervisors", default="sockvisor,circus",
                        help="comma-separated: sockvisor, circus (default both, same window)")
    parser.add_argument("--workers", type=int, default=2, help="numprocesses (default 2)")
    parser.add_argument("--clients", type=int, default=8,
                        help="client threads per supervisor (default 8)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=[2.0, 4.0],
                        metavar=("MIN", "MAX"), help="s between kills, uniform (2 4)")
    parser.add_argument("--op-every", type=float, default=5.0,
                        help="s between two operations (default 5)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="s per request, connect and answer (default 10)")
    parser.add_argument("--max-requests", type=int, default=5_000_000,
                        help="hard cap on requests, all clients together (default 5,000,000)")
    parser.add_argument("--circus-check-delay", type=float, default=None,
                        help="Circus's check_delay (default: as it ships, 5 s)")
    parser.add_argument("--fd-slack", type=int, default=2,
                        help="verdict: fds at the end may exceed the start by this (2)")
    parser.add_argument("--rss-slack-mib", type=float, default=16.0,
                        help="verdict: RSS may grow by this many MiB (16)")
    parser.add_argument("--seed", type=int, default=None, help="seed for kill timing/victims")
    parser.add_argument("--json", metavar="PATH", help="every figure and record; '-': stdout")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    args.supervisors = [s.strip() for s in args.supervisors.split(",") if s.strip()]
    if not args.supervisors or set(args.supervisors) - {"sockvisor", "circus"} \
            or len(set(args.supervisors)) != len(args.supervisors):
        parser.error("--supervisors: sockvisor and/or circus, once each")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    low, high = args.kill_every
    if not 0 < low <= high:
        parser.error("--kill-every MIN MAX: 0 < MIN <= MAX")
    with common.temp_directory("sockvisor-soak-", keep=args.keep) as directory:
        data = run(args, directory)
        if args.keep:
            data["directory"] = directory
    data["figures"] = figures(data)
    text = report(data)
    if args.json == "-":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(data, indent=2, default=str) + "\n")
    sv = next((r for r in data["results"] if r["supervisor"] == "sockvisor"), None)
    return 1 if sv is not None and sv["verdict"] != "PASS" else 0


if __name__ == "__main__":
    sys.exit(main())
