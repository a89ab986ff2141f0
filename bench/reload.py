"""Reload under load: sockvisor and Circus 0.19 side by side, in one run.

Each row starts a supervisor with two workers (numprocesses = 2, the reload worker
from `common.py`: the same stdlib HTTP server on the inherited listening fd, which
finishes the request in hand before it obeys SIGTERM) on its own port on
127.0.0.1, and runs

    wrk -t2 -c32 -d<duration>s --latency -s <extra.lua> http://127.0.0.1:PORT/

against it while the benchmark triggers `--reloads` (10) reloads, one after the
other, on a fixed cadence: reload i starts `lead + i * period` seconds after wrk
started, or as soon as reload i-1 has returned if that is later (period: 1 s in
scenario a, 3 s in b; `--period-a`, `--period-b`).  The same cadence for every row
means the same number of reloads in the same window of requests.  The default run
takes about 5 minutes.

  * sockvisor: `sockvisorctl --endpoint E reload web` (replies when the reload is
    over: the new workers are ready and the old ones have exited);
  * Circus: `circusctl --endpoint E --timeout 60 reload web --waiting`; its reload is
    graceful by default (spawn numprocesses new processes, then stop the oldest
    extras); `--sequential` (one process at a time, `warmup_delay` pause after each
    spawn) is an extra row in scenario (b).

Scenarios:
  (a) the workers serve at once (start-up = the interpreter's, about 50-80 ms here):
      sockvisor with its default readiness (`ready = started`: exec succeeded), and
      an extra row with `ready = notify` (the worker sends READY=1 as soon as it
      has started; `--no-notify-row` drops it);
  (b) the workers sleep 1 s before serving, then send READY=1 to $NOTIFY_SOCKET:
      sockvisor with `ready = notify`, so the old workers serve until the new ones
      say they are ready.  Circus has no readiness notion: one row with its default
      graceful reload, one with `reload --sequential` and `warmup_delay` (its own way
      to pace restarts; Circus reads it as an integer: 2 s by default,
      `--circus-warmup`).  That row needs about 2 x (warmup + start) per reload, so
      it gets its own, longer period (2 x warmup + 1.5 s) and wrk run.
Each scenario also has a baseline row: the same wrk run on sockvisor, no reloads.
Scenario (b) also has a "no reload, same processes" row: no reload, but on the
same cadence the benchmark starts what a reload starts (a `sockvisorctl status`
and two interpreters that import the worker's modules and sleep 1 s), to show how
much of a reload row's latency is only the CPU those processes take on this
2-CPU machine, where wrk and the workers already use both CPUs.
Both supervisors hand the workers a non-blocking listening socket (Circus always
does; sockvisor with `[socket:web] blocking = false`), which is what the worker's
select() loop wants.

Per row: requests, non-2xx responses and wrk's socket errors (connect / read /
write / timeout; wrk's timeout is its default 2 s), latency p50 / p99 from
`--latency`, p99.9 and the share of the distribution at or above 100 ms from the
same histogram (a small Lua `done()` hook; no per-request Lua), wrk's Max, reloads
completed (exit status 0 and every old worker gone) and their duration: the wall
time of the ctl command, which includes the ctl process's own start-up (see
bench/control.py), and for sockvisor also the duration its reply reports.

wrk is closed-loop (at most 32 requests in flight), but the distribution it prints
is corrected for coordinated omission: at the end, for every response slower than
the mean interval between two requests on one connection, wrk adds the samples
that an open-loop client would have had waiting meanwhile (`stats_correct`).  So
a 1 s stall weighs in the percentiles as if requests had kept arriving at the
normal rate, and the histogram holds more samples than `requests`.

    python bench/reload.py [--reloads 10] [--scenarios a,b] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NUMPROCESSES = 2
WRK_THREADS, WRK_CONNECTIONS = 2, 32
SLOW_MS = 100                 # the ">= 100 ms" column
LEAD = 1.0                    # s of wrk before the first reload
TAIL = 1.5                    # s of wrk after the last reload slot
SETTLE = 1.0                  # s between "serving" and the start of wrk
GRACEFUL_TIMEOUT = 5          # both supervisors: SIGTERM, then SIGKILL after this
# Workers get a non-blocking listening socket from both supervisors (Circus's only
# kind): the reload worker waits in select() and must never block in accept().
SV_SOCKET = {"blocking": "false"}

# wrk's done() hook: what --latency does not print.  `latency(i)` is the i-th
# distinct value (microseconds) and its count.
WRK_LUA = """\
done = function(summary, latency, requests)
  local slow, recorded = 0, 0
  for i = 1, #latency do
    local value, count = latency(i)
    recorded = recorded + count
    if value >= %d then slow = slow + count end
  end
  io.write(string.format("BENCH p999_us %%d\\n", latency:percentile(99.9)))
  io.write(string.format("BENCH max_us %%d\\n", latency.max))
  io.write(string.format("BENCH slow %%d\\n", slow))
  io.write(string.format("BENCH recorded %%d\\n", recorded))
end
""" % (SLOW_MS * 1000)


@dataclass
class Scenario:
    key: str
    title: str
    start_delay: float
    period: float


@dataclass
class Reload:
    started_s: float              # since wrk started
    seconds: float                # wall time of the ctl command
    returncode: int | None
    replaced: int                 # old workers gone afterwards
    new: int                      # new workers afterwards
    in_run: bool                  # returned before wrk ended
    server_seconds: float | None = None     # sockvisor's own figure, from its reply
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.replaced >= NUMPROCESSES


@dataclass
class Row:
    scenario: Scenario
    label: str
    kind: str                     # supervisor
    start: Callable[[str], common.Supervised]
    reload_argv: Callable[[common.Supervised], list[str]] | None   # None: baseline
    settings_note: str = ""
    period: float = 0.0           # s between reload starts; 0: the scenario's
    mimic: bool = False           # start a reload's processes on the cadence, no reload
    reloads: list[Reload] = field(default_factory=list)
    wrk: dict[str, object] = field(default_factory=dict)
    wrk_output: str = ""
    notes: list[str] = field(default_factory=list)
    exit_status: int | None = None
    log_tail: str = ""
    load_after: float | None = None   # 1-min load average when the row's wrk run ended


# --------------------------------------------------------------------------- wrk output

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, object]:
    """The figures of one `wrk --latency` run (plus our Lua lines)."""
    result: dict[str, object] = {"connect": 0, "read": 0, "write": 0, "timeout": 0,
                                 "non2xx": 0}
    match = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if match:
        result["mean_ms"], result["max_ms"] = _ms(match.group(1)), _ms(match.group(3))
    for pct, value in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)", output, re.M):
        result[f"p{pct}_ms"] = _ms(value)
    match = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", output, re.M)
    if match:
        result["requests"] = int(match.group(1))
        result["elapsed_s"] = _ms(match.group(2)) / 1000
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      output)
    if match:
        for key, value in zip(("connect", "read", "write", "timeout"), match.groups()):
            result[key] = int(value)
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if match:
        result["non2xx"] = int(match.group(1))
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if match:
        result["rps"] = float(match.group(1))
    for key, value in re.findall(r"^BENCH (\w+) (\d+)", output, re.M):
        result[key] = int(value)
    if "p999_us" in result:
        result["p99.9_ms"] = result.pop("p999_us") / 1000  # type: ignore[operator]
    if "max_us" in result:     # the same as wrk's Max, unrounded
        result["max_ms"] = result.pop("max_us") / 1000  # type: ignore[operator]
    result["errors"] = sum(int(result[k]) for k in  # type: ignore[call-overload]
                           ("connect", "read", "write", "timeout", "non2xx"))
    return result


# --------------------------------------------------------------------------- one row

def run_row(row: Row, directory: str, duration: int, args: argparse.Namespace,
            lua_path: str) -> None:
    sup = row.start(directory)
    try:
        # Let the start-up finish: the new interpreters' CPU, and Circus's start
        # command, which sleeps warmup_delay after its last spawn and holds the
        # arbiter's command lock meanwhile.
        time.sleep(SETTLE + float(sup.settings.get("warmup_delay", 0)))  # type: ignore[arg-type]
        _run_wrk_and_reloads(row, sup, duration, args, lua_path)
        # Still serving, with the right number of workers?
        try:
            sup.wait_serving(15)
        except (RuntimeError, TimeoutError) as exc:
            row.notes.append(f"not serving after the run: {exc}")
    finally:
        row.exit_status = sup.stop()
        row.log_tail = sup.log_tail(40)


def _run_wrk_and_reloads(row: Row, sup: common.Supervised, duration: int,
                         args: argparse.Namespace, lua_path: str) -> None:
    url = f"http://{common.HOST}:{sup.port}/"
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency",
            "-s", lua_path, url]
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=sup.directory)
    began = time.monotonic()
    try:
        if row.reload_argv is not None or row.mimic:
            for index in range(args.reloads):
                slot = began + LEAD + index * row_period(row)
                now = time.monotonic()
                if now >= began + duration - 0.2:
                    row.notes.append(f"reloads {index + 1}..{args.reloads}: not started, "
                                     "the wrk run was over")
                    break
                if slot > now:
                    time.sleep(slot - now)
                if row.mimic:
                    _mimic_once(row, sup)
                else:
                    row.reloads.append(_reload_once(row, sup, began, duration))
        output, _ = wrk.communicate(timeout=duration + 60)
    except BaseException:
        wrk.kill()
        wrk.communicate()
        raise
    row.wrk_output = output
    row.load_after = round(os.getloadavg()[0], 2)
    if wrk.returncode != 0:
        row.notes.append(f"wrk exited with status {wrk.returncode}")
    row.wrk = parse_wrk(output)


def _mimic_once(row: Row, sup: common.Supervised) -> None:
    """The processes a reload starts, without the reload: one `sockvisorctl status` and
    `numprocesses` interpreters that import what the worker imports and sleep its
    start-up delay, all at once."""
    python = sys.executable          # the workers' interpreter (see common.py)
    code = ("import os, select, signal, socket, sys, time; "
            f"time.sleep({row.scenario.start_delay!r})")
    ctl = subprocess.Popen([common.console_script("sockvisorctl"), "--endpoint", sup.endpoint,
                            "status"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = [subprocess.Popen([python, "-c", code]) for _ in range(NUMPROCESSES)]
    for process in [ctl, *workers]:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            row.notes.append("a mimic process did not end within 30 s")


def _reload_once(row: Row, sup: common.Supervised, began: float, duration: int) -> Reload:
    assert row.reload_argv is not None
    before = set(sup.workers())
    start = time.monotonic()
    remaining = began + duration - start
    try:
        done = subprocess.run(row.reload_argv(sup), capture_output=True, text=True,
                              timeout=max(remaining, 0) + 30)
        returncode, output = done.returncode, (done.stdout + done.stderr).strip()
    except subprocess.TimeoutExpired as exc:
        returncode, output = None, f"timed out after {exc.timeout:g}s"
    end = time.monotonic()
    after = set(sup.workers())
    reload = Reload(started_s=round(start - began, 3), seconds=end - start,
                    returncode=returncode, replaced=len(before - after),
                    new=len(after - before), in_run=end <= began + duration,
                    output=output[-500:])
    match = re.search(r"replaced in ([\d.]+)s", output)
    if match:
        reload.server_seconds = float(match.group(1))
    if not reload.ok:
        row.notes.append(f"reload at {reload.started_s:.1f}s: status {returncode}, "
                         f"{reload.replaced} of {len(before)} old workers gone: "
                         f"{output[-200:]!r}")
    return reload


# --------------------------------------------------------------------------- rows

def sockvisorctl_reload(sup: common.Supervised) -> list[str]:
    return [common.console_script("sockvisorctl"), "--endpoint", sup.endpoint, "reload", "web"]


def circusctl_reload(sequential: bool) -> Callable[[common.Supervised], list[str]]:
    def argv(sup: common.Supervised) -> list[str]:
        return ([common.console_script("circusctl"), "--endpoint", sup.endpoint,
                 "--timeout", "60", "reload", "web", "--waiting"]
                + (["--sequential"] if sequential else []))
    return argv


def build_rows(args: argparse.Namespace) -> list[Row]:
    scenarios = {
        "a": Scenario("a", "workers serve at once", 0.0, args.period_a),
        "b": Scenario("b", "workers take 1 s to start", 1.0, args.period_b),
    }
    rows: list[Row] = []
    base = {"graceful_timeout": GRACEFUL_TIMEOUT}
    for key in args.scenarios:
        sc = scenarios[key]
        options = common.reload_worker_options(sc.start_delay)
        sv_watcher = dict(base, **({"ready": "notify", "ready_timeout": 10}
                                   if sc.start_delay else {}))

        def sv(d: str, w: dict = sv_watcher, s: tuple = options) -> common.Supervised:
            return common.start_sockvisor(d, watcher=w, numprocesses=NUMPROCESSES,
                                          worker_options=s, timeout=30,
                                          socket_options=SV_SOCKET)

        def circus(d: str, w: dict = dict(base), s: tuple = options) -> common.Supervised:
            return common.start_circus(d, watcher=w, numprocesses=NUMPROCESSES,
                                       worker_options=s, timeout=30)
        sv_note = "ready = notify" if sc.start_delay else "ready = started (default)"
        rows.append(Row(sc, "baseline (no reloads)", "sockvisor", sv, None,
                        "sockvisor, no reloads"))
        if sc.start_delay and args.mimic_row:
            rows.append(Row(sc, "no reload, same processes", "sockvisor", sv, None,
                            "sockvisor, no reloads; on the reload cadence: sockvisorctl "
                            f"status + {NUMPROCESSES} interpreters sleeping "
                            f"{sc.start_delay:g}s", mimic=True))
        rows.append(Row(sc, f"sockvisor {'ready=notify' if sc.start_delay else ''}".strip(),
                        "sockvisor", sv, sockvisorctl_reload, sv_note))
        rows.append(Row(sc, "circus reload", "circus", circus, circusctl_reload(False),
                        "reload --waiting (graceful, all at once)"))
        if not sc.start_delay and args.notify_row:
            notify = dict(base, ready="notify", ready_timeout=10)

            def sv_notify(d: str, w: dict = notify, s: tuple = options) -> common.Supervised:
                return common.start_sockvisor(d, watcher=w, numprocesses=NUMPROCESSES,
                                              worker_options=s, timeout=30,
                                              socket_options=SV_SOCKET)
            rows.append(Row(sc, "sockvisor ready=notify", "sockvisor", sv_notify,
                            sockvisorctl_reload, "ready = notify"))
        if sc.start_delay and args.circus_warmup > 0:
            warm = dict(base, warmup_delay=args.circus_warmup)

            def circus_seq(d: str, w: dict = warm, s: tuple = options) -> common.Supervised:
                return common.start_circus(d, watcher=w, numprocesses=NUMPROCESSES,
                                           worker_options=s, timeout=30)
            rows.append(Row(sc, f"circus --sequential warmup={args.circus_warmup}",
                            "circus", circus_seq, circusctl_reload(True),
                            f"reload --waiting --sequential, warmup_delay = "
                            f"{args.circus_warmup}",
                            period=max(sc.period, 2 * args.circus_warmup + 1.5)))
    return rows


def row_period(row: Row) -> float:
    return row.period or row.scenario.period


def row_duration(row: Row, reloads: int) -> int:
    return math.ceil(LEAD + reloads * row_period(row) + TAIL)


# --------------------------------------------------------------------------- report

def summarise(row: Row, reference: Row | None, reloads_wanted: int,
              duration: int) -> list[object]:
    w = row.wrk

    def ms(key: str) -> str:
        value = w.get(key)
        if value is None:
            return "-"
        value = float(value)  # type: ignore[arg-type]
        return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"

    def ratio(key: str) -> str:
        if reference is None or row is reference:
            return "1.0x" if row is reference else "-"
        mine, theirs = w.get(key), reference.wrk.get(key)
        if not mine or not theirs:
            return "-"
        return f"{float(mine) / float(theirs):.1f}x"  # type: ignore[arg-type]

    if row.reload_argv is None:
        done, reload_s = "-", "-"
    else:
        good = [r for r in row.reloads if r.ok and r.in_run]
        done = f"{len(good)}/{reloads_wanted}"
        reload_s = (f"{sum(r.seconds for r in good) / len(good):.2f}" if good else "-")
    wrk_s = str(duration)
    errors = "/".join(str(w.get(k, "?")) for k in ("connect", "read", "write", "timeout"))
    slow = (f"{100 * int(w['slow']) / int(w['recorded']):.2f}"  # type: ignore[call-overload]
            if w.get("recorded") else "-")
    server = [r.server_seconds for r in row.reloads if r.ok and r.in_run
              and r.server_seconds is not None]
    server_s = f"{sum(server) / len(server):.2f}" if server else "-"
    every = f"{row_period(row):g}" if row.reload_argv or row.mimic else "-"
    return [row.label, wrk_s, every, done, reload_s, server_s, w.get("requests", "-"),
            w.get("non2xx", "-"), errors,
            ms("p50_ms"), ms("p99_ms"), ms("p99.9_ms"), ms("max_ms"), slow,
            ratio("p99_ms"), ratio("max_ms"),
            f"{row.load_after:.1f}" if row.load_after is not None else "-"]


HEADERS = ["row", "wrk s", "every", "reloads", "reload s", "server s", "requests", "non-2xx",
           "sock err c/r/w/t", "p50", "p99", "p99.9", "max", f">={SLOW_MS}ms %", "p99 vs sv",
           "max vs sv", "load"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Reload under wrk load, sockvisor vs Circus 0.19 (loopback).")
    parser.add_argument("--reloads", type=int, default=10,
                        help="reloads per row (default 10)")
    parser.add_argument("--scenarios", default="a,b",
                        help="comma-separated: a (workers serve at once), b (workers take "
                             "1 s to start); default a,b")
    parser.add_argument("--period-a", type=float, default=1.0,
                        help="seconds between reload starts in scenario a (default 1)")
    parser.add_argument("--period-b", type=float, default=3.0,
                        help="seconds between reload starts in scenario b (default 3)")
    parser.add_argument("--circus-warmup", type=int, default=2,
                        help="warmup_delay (whole seconds: Circus parses it as an int) of "
                             "the Circus --sequential row in scenario b; 0 drops that row "
                             "(default 2)")
    parser.add_argument("--no-notify-row", dest="notify_row", action="store_false",
                        help="drop the extra sockvisor ready=notify row of scenario a")
    parser.add_argument("--no-mimic-row", dest="mimic_row", action="store_false",
                        help="drop the 'no reload, same processes' row of scenario b")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every figure, wrk's output and each reload to PATH "
                             "('-': stdout)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, supervisor logs)")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios or any(s not in ("a", "b") for s in args.scenarios):
        parser.error("--scenarios takes a, b or a,b")
    if args.reloads < 1:
        parser.error("--reloads must be at least 1")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    out = sys.stderr if args.json == "-" else sys.stdout

    machine = common.machine_info()
    rows = build_rows(args)
    durations = {id(r): row_duration(r, args.reloads) for r in rows}
    estimate = sum(durations[id(r)] + 4 for r in rows)
    print(f"reload: {len(rows)} wrk runs, about {estimate / 60:.1f} min", file=sys.stderr,
          flush=True)
    began = time.monotonic()
    with common.temp_directory(keep=args.keep) as directory:
        lua_path = os.path.join(directory, "extra.lua")
        with open(lua_path, "w", encoding="utf-8") as handle:
            handle.write(WRK_LUA)
        for index, row in enumerate(rows):
            row_dir = os.path.join(directory, f"row{index}")
            os.mkdir(row_dir)
            print(f"reload: ({row.scenario.key}) {row.label}: wrk "
                  f"{durations[id(row)]}s", file=sys.stderr, flush=True)
            try:
                run_row(row, row_dir, durations[id(row)], args, lua_path)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                row.notes.append(f"row failed: {exc}")
                print(f"reload: {row.label}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"reload: configs and logs kept in {directory}", file=sys.stderr)
    elapsed = time.monotonic() - began

    ctl = {"sockvisorctl": common.console_script("sockvisorctl"),
           "circusctl": common.console_script("circusctl")}
    print(f"reload under load: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency on "
          f"127.0.0.1, {NUMPROCESSES} workers, {args.reloads} reloads per row "
          "(latency in ms; ratio = value / the sockvisor row's)", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    summaries: dict[str, list[object]] = {}
    for key in args.scenarios:
        mine = [r for r in rows if r.scenario.key == key]
        sc = mine[0].scenario
        reference = next((r for r in mine if r.kind == "sockvisor" and r.reload_argv), None)
        cells = [summarise(r, reference, args.reloads, durations[id(r)]) for r in mine]
        for r, c in zip(mine, cells):
            summaries[f"{key}: {r.label}"] = c
        print("", file=out)
        print(f"({key}) {sc.title}: a reload every {sc.period:g}s from t={LEAD:g}s"
              + (" (circus --sequential: see 'every')" if any(r.period for r in mine) else ""),
              file=out)
        print(common.format_table(HEADERS, cells), file=out)
    print("", file=out)
    print("wrk s = wrk's -d; every = seconds between reload starts; reloads = completed "
          "(ctl exit 0, every old worker gone) within the wrk run\n"
          "reload s = mean wall time of the ctl command (its own start-up included); "
          "server s = the reload's duration in sockvisor's reply\n"
          f"sock err = wrk's connect/read/write/timeout errors (timeout: > 2 s); "
          f">={SLOW_MS}ms % = share of wrk's latency distribution (corrected for coordinated "
          f"omission, like its percentiles) at or above {SLOW_MS} ms; load = 1-min load "
          f"average at the end of the row (above nproc = {machine['nproc']}: something else "
          "was running too)\n"
          f"sockvisor: {ctl['sockvisorctl']} --endpoint E reload web; ready = started in (a), "
          "ready = notify in (b)\n"
          f"circus: {ctl['circusctl']} --endpoint E --timeout 60 reload web --waiting "
          "[--sequential]; graceful_timeout = 5 everywhere\n"
          f"{elapsed:.0f}s in all; shared machine, expect noise", file=out)
    for row in rows:
        for note in row.notes:
            print(f"NOTE ({row.scenario.key}) {row.label}: {note}", file=out)
        if row.exit_status not in (0, None):
            print(f"NOTE ({row.scenario.key}) {row.label}: the supervisor exited with status "
                  f"{row.exit_status} when stopped with SIGTERM", file=out)

    if args.json:
        dump = {"machine": machine, "elapsed_s": round(elapsed, 1), "reloads": args.reloads,
                "numprocesses": NUMPROCESSES, "ctl": ctl,
                "wrk": f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d<duration>s --latency",
                "rows": [{"scenario": r.scenario.key, "label": r.label, "kind": r.kind,
                          "settings": r.settings_note, "start_delay": r.scenario.start_delay,
                          "duration_s": durations[id(r)], "reload_period_s": row_period(r),
                          "summary": dict(zip(HEADERS, summaries[f"{r.scenario.key}: {r.label}"])),
                          "wrk": r.wrk, "wrk_output": r.wrk_output,
                          "reloads": [dict(vars(x), ok=x.ok) for x in r.reloads],
                          "notes": r.notes, "exit_status": r.exit_status,
                          "loadavg_after": r.load_after,
                          "supervisor_log_tail": r.log_tail}
                         for r in rows]}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    failed = any(n.startswith("row failed") for r in rows for n in r.notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
