"""kill -9 → replacement latency: sockvisor and Circus 0.19 side by side, in one run.

Each supervisor runs one worker (numprocesses = 1, the same stdlib HTTP worker from
`common.py`) on its own listening socket on 127.0.0.1.  One kill:

  1. note the worker's pid (a child of the supervisor, by psutil);
  2. SIGKILL it and start the clock;
  3. *spawn*: poll every 0.5 ms until the supervisor has a new child (the fork of
     the replacement; the poll is the benchmark's, not the supervisor's);
  4. *answer*: send one HTTP request at once: it waits in the listening socket's
     accept queue (the supervisor still holds the socket) and is answered when the
     replacement starts accepting; the time counted is kill → the first answer
     whose body names the new pid.

Rows: sockvisor with `min_uptime = 0.05` (a worker that dies younger than
`min_uptime`, default 1 s, counts as a failed start and is restarted after a
backoff; the benchmark waits until the worker is older than that before killing
it, so every kill takes the healthy-worker path: replaced at once), and Circus with
its default `check_delay` (5 s from an ini file) plus one row per extra
`--circus-check-delay`, 0.1 s by default.  Circus notices dead workers only when
its periodic `manage_watchers` runs, every `check_delay`, so each kill is delayed
by a random amount of time (uniform over one `check_delay`) after the previous
replacement, so that kills land at a uniform phase of that period instead of
always just after a tick.  Circus 0.19 loads its flapping plugin only from a
`[plugin:flapping]` section, which these configs do not have.

The rows run interleaved (one kill per row per round, in a shuffled order), so a
noisy neighbour slows every row alike.  Each row starts with one warm-up kill that
is not counted.  Rows with `check_delay` >= 1 s cost about `check_delay` per kill,
so they get `--slow-kills` (30) instead of `--kills` (50) to keep the default run
under about four minutes.

    python bench/respawn.py [--kills 50] [--slow-kills 30] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

POLL_INTERVAL = 0.0005       # s between two looks for the new child
SETTLE = 0.1                 # s a replacement lives before it is killed (> min_uptime)
SOCKVISOR_WATCHER = {"min_uptime": 0.05, "max_restarts": 1_000_000, "restart_window": 60}
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class Kill:
    old_pid: int
    new_pid: int | None = None
    answered_by: int | None = None
    spawn_ms: float | None = None
    answer_ms: float | None = None
    waited_s: float = 0.0         # time between the previous replacement and this kill
    note: str = ""


@dataclass
class Row:
    label: str
    start: Callable[[str], common.Supervised]
    period: float                  # Circus's check_delay; 0 for sockvisor
    target: int
    kills: list[Kill] = field(default_factory=list)
    supervisor: common.Supervised | None = None
    poller: common.NewChildPoller | None = None
    last_spawn: float = 0.0
    broken: str = ""
    consecutive_failures: int = 0
    exit_status: int | None = None      # the supervisor's, after SIGTERM (-9: we killed it)

    @property
    def done(self) -> bool:
        return bool(self.broken) or len(self.kills) >= self.target

    def spawn_ms(self) -> list[float]:
        return [k.spawn_ms for k in self.kills if k.spawn_ms is not None]

    def answer_ms(self) -> list[float]:
        return [k.answer_ms for k in self.kills if k.answer_ms is not None]

    def failures(self) -> int:
        return sum(1 for k in self.kills if k.answer_ms is None)


def kill_once(row: Row, timeout: float, rng: random.Random) -> Kill:
    """SIGKILL the row's worker and time its replacement (see the module docstring)."""
    sup, poller = row.supervisor, row.poller
    assert sup is not None and poller is not None
    if sup.process.poll() is not None:
        raise RuntimeError(f"{row.label}: the supervisor exited "
                           f"({sup.process.returncode})\n{sup.log_tail()}")
    workers = sup.workers()
    if len(workers) != 1:
        workers = [sup.wait_serving(timeout)]
        row.last_spawn = time.perf_counter()
    old = workers[0]
    # Old enough to count as healthy, then a random share of one check period.
    wait = max(0.0, row.last_spawn + SETTLE - time.perf_counter())
    wait += rng.uniform(0.0, row.period)
    time.sleep(wait)
    kill = Kill(old_pid=old, waited_s=round(time.perf_counter() - row.last_spawn, 4))

    poller.arm(exclude={old})
    start = time.perf_counter()
    deadline = start + timeout
    try:
        os.kill(old, signal.SIGKILL)
    except ProcessLookupError:
        kill.note = "the worker was already gone"
        return kill
    while True:
        new = poller.poll()
        now = time.perf_counter()
        if new is not None:
            kill.new_pid, kill.spawn_ms = new, (now - start) * 1000
            row.last_spawn = now
            break
        if now >= deadline:
            kill.note = f"no new worker within {timeout:g}s"
            return kill
        time.sleep(POLL_INTERVAL)
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            kill.note = f"no answer from the new worker within {timeout:g}s"
            return kill
        try:
            pid = common.http_get_pid(sup.port, timeout=min(remaining, 5.0))
        except (OSError, ValueError):
            time.sleep(0.001)
            continue
        if pid == old:   # cannot happen once the kill is delivered; never counted
            continue
        kill.answered_by, kill.answer_ms = pid, (time.perf_counter() - start) * 1000
        if pid != kill.new_pid:
            kill.note = f"answered by pid {pid}, not by the first new child {kill.new_pid}"
        return kill


def build_rows(args: argparse.Namespace) -> list[Row]:
    rows = [Row("sockvisor min_uptime=0.05",
                lambda d: common.start_sockvisor(d, watcher=SOCKVISOR_WATCHER),
                0.0, args.kills)]
    for value in args.circus_check_delay:
        check_delay = None if value == "default" else float(value)
        rows.append(Row(f"circus {value}", (lambda cd: lambda d: common.start_circus(
            d, check_delay=cd))(check_delay), 0.0, args.kills))
    return rows


def summarise(row: Row, reference: Row | None) -> list[object]:
    spawn, answer = row.spawn_ms(), row.answer_ms()

    def ms(value: float) -> str:
        return "-" if value != value else (f"{value:.1f}" if value < 1000 else f"{value:.0f}")

    def ratio(values: list[float], ref: list[float]) -> str:
        if not values or not ref:
            return "-"
        return f"{common.median(values) / common.median(ref):.1f}x"
    ref_spawn = reference.spawn_ms() if reference else []
    ref_answer = reference.answer_ms() if reference else []
    return [row.label, len(answer), row.failures(),
            ms(common.median(spawn)), ms(common.percentile(spawn, 99)),
            ms(common.median(answer)), ms(common.percentile(answer, 99)),
            ratio(spawn, ref_spawn), ratio(answer, ref_answer)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="kill -9 -> replacement latency, sockvisor vs Circus 0.19 (loopback).")
    parser.add_argument("--kills", type=int, default=50,
                        help="counted kills per row (default 50)")
    parser.add_argument("--slow-kills", type=int, default=30,
                        help="counted kills for Circus rows with check_delay >= 1 s, "
                             "which cost about check_delay each (default 30)")
    parser.add_argument("--circus-check-delay", action="append", default=None,
                        metavar="SECONDS|default",
                        help="a Circus row with this check_delay; repeatable "
                             "(default: 'default' and 0.1)")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="per-kill limit in seconds (default 15)")
    parser.add_argument("--seed", type=int, default=None, help="seed for kill timing")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every raw measurement to PATH ('-': stdout)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, supervisor logs)")
    args = parser.parse_args(argv)
    args.circus_check_delay = args.circus_check_delay or ["default", "0.1"]
    if args.kills < 1 or args.slow_kills < 1:
        parser.error("--kills and --slow-kills must be at least 1")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    out = sys.stderr if args.json == "-" else sys.stdout

    machine = common.machine_info()
    rows = build_rows(args)
    began = time.monotonic()
    with common.temp_directory(keep=args.keep) as directory:
        try:
            for index, row in enumerate(rows):
                row_dir = os.path.join(directory, f"row{index}")
                os.mkdir(row_dir)
                row.supervisor = row.start(row_dir)
                row.poller = common.NewChildPoller(row.supervisor.pid)
                row.last_spawn = time.perf_counter()
                if row.supervisor.kind == "circus":
                    row.period = float(row.supervisor.settings["check_delay"])  # type: ignore[arg-type]
                    row.label = (f"circus check_delay={row.period:g}"
                                 + (" (default)" if row.label == "circus default" else ""))
                    if row.period >= 1.0:
                        row.target = args.slow_kills
            estimate = sum(r.target * (SETTLE + 1.0 * r.period + 0.06) for r in rows)
            print(f"respawn: {' | '.join(f'{r.label}: {r.target}' for r in rows)} kills "
                  f"(+1 warm-up each); about {estimate / 60:.1f} min; seed {seed}",
                  file=sys.stderr, flush=True)
            for row in rows:     # warm-up: the first replacement is not counted
                warm = kill_once(row, args.timeout, rng)
                if warm.answer_ms is None:
                    raise RuntimeError(f"{row.label}: warm-up kill failed: {warm.note}\n"
                                       f"{row.supervisor.log_tail()}")  # type: ignore[union-attr]
            round_no = 0
            while not all(row.done for row in rows):
                round_no += 1
                order = [row for row in rows if not row.done]
                rng.shuffle(order)
                for row in order:
                    try:
                        kill = kill_once(row, args.timeout, rng)
                    except (RuntimeError, TimeoutError) as exc:
                        row.broken = str(exc)
                        print(f"respawn: {row.label}: giving up: {exc}", file=sys.stderr)
                        continue
                    row.kills.append(kill)
                    if kill.note:
                        print(f"respawn: {row.label}: kill {len(row.kills)}: {kill.note}",
                              file=sys.stderr)
                    row.consecutive_failures = (row.consecutive_failures + 1
                                                if kill.answer_ms is None else 0)
                    if row.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                        row.broken = f"{MAX_CONSECUTIVE_FAILURES} kills in a row not replaced"
                        print(f"respawn: {row.label}: giving up: {row.broken}\n"
                              f"{row.supervisor.log_tail()}", file=sys.stderr)  # type: ignore[union-attr]
                if round_no % 10 == 0:
                    print(f"respawn: round {round_no}, {time.monotonic() - began:.0f}s",
                          file=sys.stderr, flush=True)
        finally:
            logs = {}
            for row in rows:
                if row.supervisor is not None:
                    row.exit_status = row.supervisor.stop()
                    logs[row.label] = row.supervisor.log_tail(40)
            if args.keep:
                print(f"respawn: configs and logs kept in {directory}", file=sys.stderr)
    elapsed = time.monotonic() - began

    reference = rows[0] if rows[0].answer_ms() else None
    headers = ["supervisor / config", "n", "fail", "spawn med", "spawn p99",
               "answer med", "answer p99", "spawn vs sv", "answer vs sv"]
    table = common.format_table(headers, [summarise(row, reference) for row in rows])
    print("kill -9 -> replacement latency, one worker on 127.0.0.1 (ms; ratio = median / "
          "sockvisor's median)", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    print("", file=out)
    print(table, file=out)
    print("", file=out)
    print(f"spawn  = kill -> a new child of the supervisor exists (polled every "
          f"{POLL_INTERVAL * 1000:g} ms)\nanswer = kill -> first HTTP answer from the new "
          "worker (request queued on the held socket)\n"
          f"sockvisor: min_uptime = 0.05, max_restarts = 1000000, restart_window = 60, so "
          f"that each kill (after >= {SETTLE:g}s of uptime) is the healthy-worker path\n"
          "circus: no flapping plugin (0.19 loads it only from [plugin:flapping]); each kill "
          "at a random phase of check_delay\n"
          f"{elapsed:.0f}s in all; shared machine, expect noise", file=out)
    for row in rows:
        if row.broken:
            print(f"NOTE {row.label}: stopped early: {row.broken}", file=out)
        if row.exit_status not in (0, None):
            print(f"NOTE {row.label}: the supervisor exited with status {row.exit_status} "
                  "when stopped with SIGTERM (-9: it had to be killed)", file=out)

    if args.json:
        dump = {"machine": machine, "seed": seed, "elapsed_s": round(elapsed, 1),
                "poll_interval_ms": POLL_INTERVAL * 1000, "settle_s": SETTLE,
                "timeout_s": args.timeout,
                "rows": [{"label": row.label, "kind": row.supervisor.kind if row.supervisor
                          else None,
                          "settings": row.supervisor.settings if row.supervisor else {},
                          "check_delay": row.period or None, "broken": row.broken,
                          "exit_status": row.exit_status,
                          "summary": dict(zip(headers, summarise(row, reference))),
                          "kills": [vars(k) for k in row.kills],
                          "supervisor_log_tail": logs.get(row.label, "")}
                         for row in rows]}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0 if not any(row.broken for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
