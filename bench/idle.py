"""Idle cost of a supervisor: CPU, wake-ups and memory while nothing happens.

sockvisor and Circus 0.19 (its default `check_delay`, 5 s from an ini file) each run
one watcher of N workers that only sleep (`/bin/sleep <a number unique to this run>`,
so that clean-up finds them wherever they are), for every N in `--workers` (4 and
200 by default).  All the supervisors run at the same time, so the same window of
the same (shared, noisy) machine is measured for every row.

Once every supervisor reports all its workers (sockvisor `status web`: N ready;
Circus `list web`: N pids) the benchmark waits `--settle` seconds (start-up work
is not idle cost), reads each supervisor's counters, waits `--idle-seconds` (60)
without touching any supervisor in any way, and reads them again:

  * CPU seconds: utime + stime from /proc/PID/stat (the whole process, all threads);
  * wake-ups/s: voluntary + involuntary context switches, summed over every thread
    in /proc/PID/task/*/status, per second of the window (each time a thread is
    switched out after it ran: a wake-up);
  * RSS: VmRSS from /proc/PID/status at the end of the window;
  * threads: how many the supervisor has.

Only the supervisor process is measured, never its workers.

    python bench/idle.py [--idle-seconds 60] [--workers 4 --workers 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NEAR_ZERO = 1.0     # wake-ups per second that still count as "near zero"


@dataclass
class Row:
    kind: str
    workers: int
    check_delay: str = ""          # Circus: "default" or seconds
    supervisor: common.Supervised | None = None
    settings: dict[str, object] = field(default_factory=dict)
    before: dict[str, object] = field(default_factory=dict)
    after: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.workers} workers"

    @property
    def name(self) -> str:
        if self.kind == "circus" and self.check_delay != "default":
            return f"circus check_delay={self.check_delay}"
        return self.kind


def sample(pid: int) -> dict[str, object]:
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as handle:
                name = handle.read().strip()
            switches = 0
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith(("voluntary_ctxt_switches",
                                        "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
            threads[tid] = {"name": name, "switches": switches}
    return {"time": time.monotonic(), "cpu": common.proc_cpu_seconds(pid),
            "switches": common.proc_context_switches(pid),
            "rss_kib": common.proc_rss_kib(pid), "threads": threads}


def start_row(row: Row, directory: str, sleep_argv: list[str], timeout: float) -> None:
    directory = os.path.join(directory, f"{row.kind}-{row.check_delay}-{row.workers}")
    os.mkdir(directory)
    if row.kind == "sockvisor":
        sections = {"sockvisor": {"loglevel": "warning",
                                  "endpoint": f"ipc://{directory}/sockvisor-control",
                                  "pubsub_endpoint": f"ipc://{directory}/sockvisor-events"},
                    "watcher:sleepers": {"cmd": " ".join(sleep_argv),
                                         "numprocesses": row.workers,
                                         "graceful_timeout": 5}}

        def ready(sup: common.Supervised) -> bool:
            reply = common.control_call(sup, "status", {"name": "sleepers"}, timeout=5.0)
            return reply["watcher"]["ready"] == row.workers  # type: ignore[index]
    else:
        sections = {"circus": {"endpoint": f"ipc://{directory}/circus-control",
                               "pubsub_endpoint": f"ipc://{directory}/circus-pubsub",
                               "statsd": "False",
                               **({"check_delay": row.check_delay}
                                  if row.check_delay != "default" else {})},
                    "watcher:sleepers": {"cmd": sleep_argv[0], "args": " ".join(sleep_argv[1:]),
                                         "numprocesses": row.workers,
                                         "graceful_timeout": 5}}

        def ready(sup: common.Supervised) -> bool:
            reply = common.control_call(sup, "list", {"name": "sleepers"}, timeout=5.0)
            return len(reply["pids"]) == row.workers  # type: ignore[arg-type]
    row.supervisor = common.launch_supervisor(row.kind, directory, sections, ready=ready,
                                              timeout=timeout)
    row.settings = dict(sections[next(k for k in sections if k.startswith("watcher:"))])
    if row.kind == "circus":
        row.settings["check_delay"] = common.effective_circus_check_delay(
            row.supervisor.config_path)
    common.close_control(row.supervisor)    # nothing of ours talks to it from now on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Idle cost (CPU, wake-ups, RSS) of sockvisor vs Circus 0.19.")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="length of the measured idle window (default 60)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between all workers up and the window (default 5)")
    parser.add_argument("--workers", type=int, action="append",
                        help="workers per supervisor; repeatable (default 4 and 200)")
    parser.add_argument("--circus-check-delay", action="append", metavar="SECONDS|default",
                        help="a Circus row with this check_delay; repeatable (default: "
                             "'default' (5 s) and 0.1, the setting that makes Circus "
                             "respawn in ~0.1 s, see respawn.py)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a 10 s window after 2 s")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="limit for starting each supervisor with its workers")
    parser.add_argument("--json", metavar="PATH", help="raw results to PATH ('-': stdout)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.idle_seconds, args.settle = 10.0, 2.0
    args.workers = args.workers or [4, 200]
    args.circus_check_delay = args.circus_check_delay or ["default", "0.1"]
    if "default" not in args.circus_check_delay:
        args.circus_check_delay.insert(0, "default")
    if args.idle_seconds <= 0 or min(args.workers) < 1:
        parser.error("--idle-seconds and --workers must be positive")
    out = sys.stderr if args.json == "-" else sys.stdout
    machine = common.machine_info()
    # An argv no other process has: clean-up kills exactly these.
    sleep_argv = ["/bin/sleep", str(10_000_000 + random.randrange(1_000_000))]

    rows = [Row("sockvisor", n) for n in args.workers]
    rows += [Row("circus", n, delay) for n in args.workers for delay in args.circus_check_delay]
    began = time.monotonic()
    logs: dict[str, str] = {}
    with common.temp_directory(prefix="sockvisor-idle-", keep=args.keep) as directory:
        try:
            for row in rows:
                start_row(row, directory, sleep_argv, args.timeout)
            print(f"idle: {len(rows)} supervisors up; settle {args.settle:g}s, then a "
                  f"{args.idle_seconds:g}s window", file=sys.stderr, flush=True)
            time.sleep(args.settle)
            for row in rows:
                row.before = sample(row.supervisor.pid)  # type: ignore[union-attr]
            time.sleep(args.idle_seconds)
            for row in rows:
                row.after = sample(row.supervisor.pid)  # type: ignore[union-attr]
            for row in rows:
                if row.supervisor.process.poll() is not None:  # type: ignore[union-attr]
                    raise RuntimeError(f"{row.label}: the supervisor exited during the window")
        finally:
            for row in rows:
                if row.supervisor is not None:
                    common.close_control(row.supervisor)
                    row.supervisor.stop()
                    logs[row.label] = row.supervisor.log_tail(20)
            left = common.kill_processes_with_argv(sleep_argv)
            if left:
                print(f"idle: killed {left} leftover workers", file=sys.stderr)
            if args.keep:
                print(f"idle: configs and logs kept in {directory}", file=sys.stderr)
    elapsed = time.monotonic() - began

    def derived(row: Row) -> dict[str, float]:
        seconds = float(row.after["time"]) - float(row.before["time"])  # type: ignore[arg-type]
        by_thread = {}
        for tid, after in row.after["threads"].items():  # type: ignore[union-attr]
            before = row.before["threads"].get(tid)  # type: ignore[union-attr]
            if before is not None:
                by_thread[f"{after['name']}[{tid}]"] = after["switches"] - before["switches"]
        return {"seconds": seconds,
                "cpu_s": float(row.after["cpu"]) - float(row.before["cpu"]),  # type: ignore[arg-type]
                "wakeups_per_s": (int(row.after["switches"])  # type: ignore[arg-type]
                                  - int(row.before["switches"])) / seconds,  # type: ignore[arg-type]
                "rss_mib": int(row.after["rss_kib"]) / 1024,  # type: ignore[arg-type]
                "threads": len(row.after["threads"]),  # type: ignore[arg-type]
                "switches_by_thread": by_thread}
    results = {row.label: derived(row) for row in rows}

    def fmt(value: float, digits: int = 2) -> str:
        return f"{value:.{digits}f}"
    table_rows, figures = [], []
    for n in args.workers:
        for row in rows:
            if row.workers != n:
                continue
            res = results[row.label]
            table_rows.append([row.name, n, fmt(res["cpu_s"], 3),
                               fmt(100 * res["cpu_s"] / res["seconds"], 3),
                               fmt(res["wakeups_per_s"]), fmt(res["rss_mib"], 1),
                               res["threads"]])
        sv = results[f"sockvisor {n} workers"]
        cc = results[f"circus {n} workers"]

        def ratio(a: float, b: float) -> str:
            return f"circus/sv {b / a:.1f}x" if a > 0 else ("both 0" if b == 0 else "sv 0")

        def others(key: str, digits: int) -> str:
            return "; ".join(
                f"circus check_delay={d}: {fmt(results[f'circus check_delay={d} {n} workers'][key], digits)}"
                for d in args.circus_check_delay if d != "default")
        figures.append(common.figure(
            f"idle wake-ups/s, {n} workers", fmt(sv["wakeups_per_s"]),
            fmt(cc["wakeups_per_s"]), ratio(sv["wakeups_per_s"], cc["wakeups_per_s"]),
            f"near zero (< {NEAR_ZERO:g}/s)", sv["wakeups_per_s"] < NEAR_ZERO,
            other=others("wakeups_per_s", 2)))
        figures.append(common.figure(
            f"idle CPU s in {args.idle_seconds:g}s, {n} workers", fmt(sv["cpu_s"], 2),
            fmt(cc["cpu_s"], 2), ratio(sv["cpu_s"], cc["cpu_s"]), other=others("cpu_s", 2)))
        figures.append(common.figure(
            f"supervisor RSS MiB, {n} workers", fmt(sv["rss_mib"], 1),
            fmt(cc["rss_mib"], 1), f"circus/sv {cc['rss_mib'] / sv['rss_mib']:.2f}"))
    circus_delay = next((r.settings.get("check_delay") for r in rows
                         if r.kind == "circus" and r.check_delay == "default"), "?")
    headers = ["supervisor", "workers", "CPU s", "CPU %", "wake-ups/s", "RSS MiB", "threads"]
    print(f"idle cost over {args.idle_seconds:g}s, workers = {' '.join(sleep_argv[:1])} "
          f"(sleeping), all supervisors measured in the same window", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    print("", file=out)
    print(common.format_table(headers, table_rows), file=out)
    print("", file=out)
    print("CPU = utime+stime delta (/proc/PID/stat, 10 ms ticks); wake-ups = voluntary + "
          "involuntary context switches of all threads (/proc/PID/task/*/status) / s; "
          f"RSS = VmRSS at the end\ncircus: default check_delay = {circus_delay}, "
          f"statsd off; {elapsed:.0f}s in all", file=out)
    for row in rows:
        busiest = sorted(results[row.label]["switches_by_thread"].items(),  # type: ignore[union-attr]
                         key=lambda kv: -kv[1])[:3]
        print(f"  {row.label}: switches by thread: "
              + ", ".join(f"{name} {count}" for name, count in busiest), file=out)

    if args.json:
        dump = {"benchmark": "idle", "machine": machine, "elapsed_s": round(elapsed, 1),
                "settings": {k: v for k, v in vars(args).items() if k != "json"},
                "worker_argv": sleep_argv, "figures": figures,
                "rows": [{"label": row.label, "kind": row.kind, "workers": row.workers,
                          "settings": row.settings, "result": results[row.label],
                          "before": row.before, "after": row.after,
                          "supervisor_log_tail": logs.get(row.label, "")} for row in rows]}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
