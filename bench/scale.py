"""Scale: spawning N workers, and control-command latency with N workers, against N.

sockvisor and Circus 0.19 each run one watcher `sleepers` of cheap workers
(`/bin/sleep <a number unique to this run>`, so that 1,000 of them fit in memory and
clean-up finds exactly them), started with `numprocesses = 1` (Circus does not start
a watcher of 0 workers, and then ignores `incr`).  Both stay up for the whole run;
"N workers" below means N on top of that first one.  For each round, for each N in `--spawn` (10, 100, 500, 1000), and
for each supervisor in a shuffled order:

  1. spawn: send `incr sleepers N` on the control channel (the in-process client of
     each: sockvisor's ControlClient, Circus's CircusClient) and start the clock;
     first watch /proc until N children of the supervisor run the worker (`exec`:
     exec done; this costs the supervisor nothing), then stop the clock when the
     supervisor itself says all N are up, asked every `--poll` (5 ms):
       - sockvisor: `status` (the summary, cheap) shows `ready` == N; with the
         default `ready = started` a worker is ready when its exec succeeded
         (sockvisor learns it from the close-on-exec status pipe);
       - Circus: it has no readiness; its `incr` replies once it has spawned all N
         (each `subprocess.Popen` returns after the exec succeeded); `list
         sleepers` shows N pids (Circus's "active" processes).  Its `incr` replies
         before it has spawned them all, and while its spawning goes on it refuses
         other commands ("arbiter is already running watcher_incr command"): such
         refusals are retried every 10 ms and counted.
     `reply` is the time until the `incr` reply alone.
  2. command latency with N workers, `--samples` (50) calls each, median:
       - `status sleepers`: sockvisor answers every worker's pid, wid, generation,
         state, uptime and restarts; Circus answers the watcher's state word only;
       - `list sleepers`: both answer the pids (Circus asks psutil for the status of
         every process).
  3. `decr sleepers N` and wait until the supervisor has one live child left (so the
     next step starts from the same state); `stop` is that time.

Reported: medians per N, the ratio sockvisor/Circus, and how each grows: the
exponent k of t ~ N^k (least squares on log-log over N >= 100, where fixed
per-call costs no longer dominate) and what that makes per 10x N (10^k; linear:
10x).  Targets: `status sleepers` with 1,000 workers < 20 ms; growth no worse than
linear (k <= 1.1, which leaves 0.1 for noise).

    python bench/scale.py [--spawn 10 --spawn 100 ...] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

STATUS_TARGET_MS = 20.0
STATUS_TARGET_N = 1000
LINEAR_SLACK = 1.1
STEP_TIMEOUT = 120.0      # s: one spawn or one stop of N workers
WATCHER = "sleepers"
BASE = 1                  # workers the watcher keeps: Circus will not start a watcher of 0


@dataclass
class Sup:
    kind: str
    supervisor: common.Supervised | None = None
    # metric -> N -> samples (ms)
    samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    broken: str = ""

    def add(self, metric: str, n: int, value: float) -> None:
        self.samples.setdefault(metric, {}).setdefault(n, []).append(value)

    def median(self, metric: str, n: int) -> float:
        return common.median(self.samples.get(metric, {}).get(n, []))


def start(kind: str, directory: str, sleep_argv: list[str]) -> common.Supervised:
    directory = os.path.join(directory, kind)
    os.mkdir(directory)
    if kind == "sockvisor":
        sections = {"sockvisor": {"loglevel": "warning",
                                  "endpoint": f"ipc://{directory}/sockvisor-control",
                                  "pubsub_endpoint": f"ipc://{directory}/sockvisor-events"},
                    f"watcher:{WATCHER}": {"cmd": " ".join(sleep_argv), "numprocesses": BASE,
                                           "graceful_timeout": 5}}
    else:
        sections = {"circus": {"endpoint": f"ipc://{directory}/circus-control",
                               "pubsub_endpoint": f"ipc://{directory}/circus-pubsub",
                               "statsd": "False"},
                    f"watcher:{WATCHER}": {"cmd": sleep_argv[0], "args": " ".join(sleep_argv[1:]),
                                           "numprocesses": BASE, "graceful_timeout": 5}}
    return common.launch_supervisor(kind, directory, sections, timeout=30.0)


def up_count(sup: common.Supervised) -> int:
    """How many workers the supervisor says are up (see the module docstring)."""
    if sup.kind == "sockvisor":
        reply = common.control_call(sup, "status", timeout=30.0)
        return int(next(w["ready"] for w in reply["watchers"]  # type: ignore[union-attr]
                        if w["name"] == WATCHER))
    reply = common.control_call(sup, "list", {"name": WATCHER}, timeout=30.0)
    return len(reply["pids"])  # type: ignore[arg-type]


def exec_children(pid: int, argv_bytes: bytes) -> int:
    """Children of `pid` that already run the worker (exec done), straight from /proc
    (the `children` file of each of its threads): watching costs the supervisor nothing."""
    count = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                kids = handle.read().split()
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as handle:
                    if handle.read() == argv_bytes:
                        count += 1
            except OSError:
                pass
    return count


def poll_until(condition, timeout: float, interval: float, what: str) -> int:
    """Poll `condition`; an error reply (Circus: "arbiter is already running ...
    command") counts as "not yet".  Returns how many error replies there were."""
    deadline = time.perf_counter() + timeout
    errors = 0
    while True:
        try:
            if condition():
                return errors
        except OSError:
            errors += 1
        if time.perf_counter() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def call_retrying(entry: "Sup", n: int, command: str, props: dict[str, object]) -> None:
    """A command Circus may refuse while its previous one still runs ("arbiter is
    already running ... command", its global lock): retried every 10 ms; each refusal
    is counted (`busy_replies`)."""
    sup = entry.supervisor
    assert sup is not None
    deadline = time.perf_counter() + STEP_TIMEOUT
    while True:
        try:
            common.control_call(sup, command, props, timeout=STEP_TIMEOUT)
            return
        except OSError as exc:
            if "already running" not in str(exc) or time.perf_counter() >= deadline:
                raise
            entry.add("busy_replies", n, 1)
            time.sleep(0.01)


def ensure_active(sup: common.Supervised) -> None:
    """Circus leaves a watcher with numprocesses = 0 stopped: start it."""
    if sup.kind == "circus":
        reply = common.control_call(sup, "status", {"name": WATCHER}, timeout=30.0)
        if reply.get("status") != "active":
            common.control_call(sup, "start", {"name": WATCHER}, timeout=30.0)


def one_step(entry: Sup, n: int, args: argparse.Namespace) -> None:
    sup = entry.supervisor
    assert sup is not None
    if sup.process.poll() is not None:
        raise RuntimeError(f"{sup.label} exited ({sup.process.returncode})\n{sup.log_tail()}")
    ensure_active(sup)
    # 1. spawn N
    began = time.perf_counter()
    call_retrying(entry, n, "incr", {"name": WATCHER, "nb": n})
    entry.add("reply", n, (time.perf_counter() - began) * 1000)
    poll_until(lambda: exec_children(sup.pid, args.argv_bytes) >= n + BASE, STEP_TIMEOUT,
               args.poll, f"{n} workers to exec")
    entry.add("exec", n, (time.perf_counter() - began) * 1000)
    busy = poll_until(lambda: up_count(sup) >= n + BASE, STEP_TIMEOUT, args.poll,
                      f"{sup.label} to report {n} workers up")
    if busy:
        entry.add("busy_replies", n, busy)
    entry.add("spawn", n, (time.perf_counter() - began) * 1000)
    # 2. command latency with N workers
    for command in ("status", "list"):
        for _ in range(args.samples):
            t0 = time.perf_counter()
            reply = common.control_call(sup, command, {"name": WATCHER}, timeout=30.0)
            entry.add(command, n, (time.perf_counter() - t0) * 1000)
        if command == "list" and len(reply["pids"]) != n + BASE:  # type: ignore[arg-type]
            raise RuntimeError(f"{sup.label}: list shows {len(reply['pids'])} pids, "  # type: ignore[arg-type]
                               f"expected {n + BASE}")
    # 3. back to zero
    t0 = time.perf_counter()
    call_retrying(entry, n, "decr", {"name": WATCHER, "nb": n})
    poll_until(lambda: len(common.children(sup.pid)) <= BASE, STEP_TIMEOUT, 0.02,
               f"{sup.label}'s workers to exit")
    entry.add("stop", n, (time.perf_counter() - t0) * 1000)


def growth(entry: Sup, metric: str, sizes: list[int]) -> tuple[float, float]:
    """(k, k over the last two sizes) of t ~ N^k, from the medians at N >= 100."""
    points = [(math.log(n), math.log(entry.median(metric, n))) for n in sizes
              if n >= 100 and entry.samples.get(metric, {}).get(n)
              and entry.median(metric, n) > 0]
    if len(points) < 2:
        return float("nan"), float("nan")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    k = (sum((x - mx) * (y - my) for x, y in points)
         / sum((x - mx) ** 2 for x, _ in points))
    (x1, y1), (x2, y2) = points[-2], points[-1]
    return k, (y2 - y1) / (x2 - x1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Spawn time and control latency against N workers, sockvisor vs "
                    "Circus 0.19.")
    parser.add_argument("--spawn", type=int, action="append", metavar="N",
                        help="worker counts; repeatable (default 10, 100, 500, 1000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="spawn/measure/stop cycles per N and supervisor (default 3)")
    parser.add_argument("--samples", type=int, default=50,
                        help="calls of each command per N and round (default 50)")
    parser.add_argument("--poll", type=float, default=0.005,
                        help="seconds between two looks at the worker count (default 0.005)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N = 10, 100, 1000, one round, 20 samples")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="raw results to PATH ('-': stdout)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.spawn = args.spawn or [10, 100, 1000]
        args.rounds, args.samples = 1, 20
    sizes = sorted(set(args.spawn or [10, 100, 500, 1000]))
    if min(sizes) < 1 or args.rounds < 1 or args.samples < 1:
        parser.error("--spawn, --rounds and --samples must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    out = sys.stderr if args.json == "-" else sys.stdout
    machine = common.machine_info()
    sleep_argv = ["/bin/sleep", str(10_000_000 + random.randrange(1_000_000))]
    args.argv_bytes = b"\0".join(a.encode() for a in sleep_argv) + b"\0"

    entries = [Sup("sockvisor"), Sup("circus")]
    began = time.monotonic()
    logs: dict[str, str] = {}
    with common.temp_directory(prefix="sockvisor-scale-", keep=args.keep) as directory:
        try:
            for entry in entries:
                entry.supervisor = start(entry.kind, directory, sleep_argv)
            print(f"scale: N in {sizes}, {args.rounds} round(s), {args.samples} samples; "
                  f"seed {seed}", file=sys.stderr, flush=True)
            for round_no in range(args.rounds):
                for n in sizes:
                    order = [e for e in entries if not e.broken]
                    rng.shuffle(order)
                    for entry in order:
                        try:
                            one_step(entry, n, args)
                        except (OSError, RuntimeError, TimeoutError) as exc:
                            entry.broken = f"N={n}: {exc}"
                            print(f"scale: {entry.kind}: giving up: {entry.broken}",
                                  file=sys.stderr)
                    print(f"scale: round {round_no + 1} N={n} done, "
                          f"{time.monotonic() - began:.0f}s", file=sys.stderr, flush=True)
        finally:
            for entry in entries:
                if entry.supervisor is not None:
                    common.close_control(entry.supervisor)
                    entry.supervisor.stop(timeout=60)
                    logs[entry.kind] = entry.supervisor.log_tail(20)
            left = common.kill_processes_with_argv(sleep_argv)
            if left:
                print(f"scale: killed {left} leftover workers", file=sys.stderr)
            if args.keep:
                print(f"scale: configs and logs kept in {directory}", file=sys.stderr)
    elapsed = time.monotonic() - began

    sv, cc = entries
    metrics = [("spawn", "spawn N (until all up)"), ("exec", "spawn N (all exec'd, /proc)"),
               ("reply", "incr reply"),
               ("status", "status NAME"), ("list", "list NAME"), ("stop", "decr N (until gone)")]

    def ms(value: float) -> str:
        if value != value:
            return "-"
        return f"{value:.2f}" if value < 10 else (f"{value:.1f}" if value < 1000 else f"{value:.0f}")
    rows = []
    for metric, title in metrics:
        for n in sizes:
            a, b = sv.median(metric, n), cc.median(metric, n)
            rows.append([title, n, ms(a), ms(b),
                         f"{a / b:.2f}" if a == a and b == b and b > 0 else "-"])
    grow_rows, figures, growths = [], [], {}
    for metric, title in metrics:
        ks = {e.kind: growth(e, metric, sizes) for e in entries}
        growths[metric] = ks
        grow_rows.append([title] + [f"{ks[e.kind][0]:.2f} ({10 ** ks[e.kind][0]:.1f}x)"
                                    if ks[e.kind][0] == ks[e.kind][0] else "-"
                                    for e in entries]
                         + [f"{ks[e.kind][1]:.2f}" if ks[e.kind][1] == ks[e.kind][1] else "-"
                            for e in entries])
    big = max(sizes)
    for metric, title in (("spawn", "spawn"), ("status", "status NAME"), ("list", "list NAME")):
        a, b = sv.median(metric, big), cc.median(metric, big)
        target, met = "", None
        if metric == "status" and big >= STATUS_TARGET_N:
            n_t = STATUS_TARGET_N if STATUS_TARGET_N in sizes else big
            a = sv.median(metric, n_t)
            b = cc.median(metric, n_t)
            target, met = f"< {STATUS_TARGET_MS:g} ms", bool(a < STATUS_TARGET_MS)
            big_label = n_t
        else:
            big_label = big
        figures.append(common.figure(
            f"{title} with {big_label} workers (ms, median)", ms(a), ms(b),
            f"sv/circus {a / b:.2f}" if a == a and b == b and b > 0 else "", target, met))
    for metric, title in (("spawn", "spawn"), ("status", "status NAME")):
        k_sv, k_cc = growths[metric]["sockvisor"][0], growths[metric]["circus"][0]
        figures.append(common.figure(
            f"{title} growth per 10x N (N >= 100)",
            f"{10 ** k_sv:.1f}x (k={k_sv:.2f})" if k_sv == k_sv else "-",
            f"{10 ** k_cc:.1f}x (k={k_cc:.2f})" if k_cc == k_cc else "-", "",
            f"no worse than linear (k <= {LINEAR_SLACK:g})",
            bool(k_sv <= LINEAR_SLACK) if k_sv == k_sv else None))

    print(f"scale: workers = {sleep_argv[0]}, N in {sizes}, {args.rounds} interleaved "
          f"round(s); medians in ms; ratio = sockvisor / circus", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    print("", file=out)
    print(common.format_table(["measure", "N", "sockvisor", "circus", "sv/circus"], rows),
          file=out)
    print("", file=out)
    print("growth: t ~ N^k, least squares over N >= 100 (per 10x N); last = k between "
          "the two largest N", file=out)
    print(common.format_table(["measure", "sockvisor k", "circus k", "sockvisor last",
                               "circus last"], grow_rows), file=out)
    print("", file=out)
    print("spawn: `incr sleepers N` sent -> N more children have exec'd the worker (/proc, "
          f"polled every {args.poll * 1000:g} ms) -> the supervisor reports them up\n  "
          "(sockvisor: `status` ready == N+1; circus: `list` shows N+1 pids); exec'd = the "
          "/proc moment alone; busy refusals: see --json\n"
          f"status/list: {args.samples} calls per round, in-process clients; circus's "
          "`status NAME` is the state word only, sockvisor's lists every worker\n"
          f"{elapsed:.0f}s in all; shared machine, expect noise", file=out)
    for entry in entries:
        if entry.broken:
            print(f"NOTE {entry.kind}: stopped early: {entry.broken}", file=out)

    if args.json:
        dump = {"benchmark": "scale", "machine": machine, "seed": seed,
                "elapsed_s": round(elapsed, 1), "worker_argv": sleep_argv,
                "settings": {k: v for k, v in vars(args).items()
                             if k not in ("json", "argv_bytes")},
                "figures": figures, "growth": growths,
                "medians": {e.kind: {m: {n: e.median(m, n) for n in sizes}
                                     for m, _ in metrics} for e in entries},
                "samples": {e.kind: e.samples for e in entries},
                "broken": {e.kind: e.broken for e in entries},
                "supervisor_log_tail": logs}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0 if not any(e.broken for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
