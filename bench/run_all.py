"""Every side-by-side benchmark in one run, and one table of what they found.

    python bench/run_all.py            # everything, about 20 minutes
    python bench/run_all.py --quick    # a smoke run of everything, about 5 minutes

Runs, one after the other (never two at once, so they do not load each other),
each benchmark as its own subprocess with `--json`: respawn.py (with fewer kills
than its default: `--kills 20 --slow-kills 20`), reload.py, control.py,
throughput.py, idle.py and scale.py.  A benchmark that is not there is reported as
"missing"; one that fails is reported with its exit status, and the others still
run.  Each has a time limit (`--time-limit`, scaled by `--quick`).

Then it prints one table: for every figure, sockvisor's value, Circus's (and direct
/ nginx for throughput), the ratio, the target from the issue and whether it is
met.  Each figure is a median (or a median-based ratio) measured in this run, side
by side with its comparison; see each benchmark's docstring for what exactly is
measured.  A benchmark's JSON may carry a "figures" list (see common.figure()); for
respawn.py, reload.py and control.py, which do not, the figures are taken from
their raw results here.

Every benchmark's stdout (its own, more detailed tables) and JSON are kept in
`--results DIR` (default: a new temp directory, printed at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

RESPAWN_TARGET = 20.0          # replacement at least 20x faster than Circus
CTL_TARGET = 0.5               # sockvisorctl's process time <= half circusctl's
# "No start-up latency spike": the p99 during reloads stays within noise of the
# no-reload p99: at most 2x it, or it + 10 ms, whichever is larger.  A request that
# waited for a worker's start-up (about 55 ms for a Python worker here, 1 s in
# reload.py's scenario b) is far above either.
SPIKE_FACTOR, SPIKE_SLACK_MS = 2.0, 10.0


@dataclass
class Bench:
    name: str
    script: str
    args: list[str]                      # full run
    quick: list[list[str]]               # candidates for --quick, used if in --help
    limit: float                         # seconds, full run
    extract: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    status: str = ""
    seconds: float = 0.0
    command: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- extractors

def _ms(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def respawn_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data["rows"]
    sv = next(r for r in rows if r.get("kind") == "sockvisor")
    circus = [r for r in rows if r.get("kind") == "circus"]
    # The target is against Circus as it ships (check_delay 5 s); the other
    # check_delay rows are shown beside it.
    default = next(r for r in circus if "default" in r["label"])

    def med(row: dict[str, Any], key: str) -> float:
        return common.median([k[key] for k in row["kills"] if k.get(key) is not None])
    figures = []
    for key, what in (("answer_ms", "kill -9 -> new worker answers (ms)"),
                      ("spawn_ms", "kill -9 -> replacement forked (ms)")):
        a, b = med(sv, key), med(default, key)
        ratio = b / a if a and a == a and b == b else float("nan")
        others = [f"{r['label'].replace('circus ', 'circus ')}: {_ms(med(r, key))} "
                  f"({med(r, key) / a:.1f}x)" for r in circus if r is not default and a]
        figures.append(common.figure(
            what, _ms(a), _ms(b), f"circus/sv {ratio:.1f}x",
            f"circus/sv >= {RESPAWN_TARGET:g}x",
            bool(ratio >= RESPAWN_TARGET) if ratio == ratio else None,
            other="; ".join(others)))
    return figures


def reload_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    figures = []
    rows = data["rows"]
    for scenario in sorted({r["scenario"] for r in rows}):
        mine = [r for r in rows if r["scenario"] == scenario]
        baseline = next((r for r in mine if not r.get("reloads")), None)
        base_p99 = (baseline or {}).get("wrk", {}).get("p99_ms")

        def failed(row: dict[str, Any]) -> int:
            w = row.get("wrk", {})
            return sum(int(w.get(k) or 0) for k in ("non2xx", "connect", "read", "write",
                                                     "timeout"))

        def reloads(row: dict[str, Any]) -> str:
            done = sum(1 for x in row.get("reloads", []) if x.get("ok") and x.get("in_run"))
            return f"{done}/{data.get('reloads', '?')} reloads"
        svs = [r for r in mine if r.get("kind") == "sockvisor" and r.get("reloads")]
        ccs = [r for r in mine if r.get("kind") == "circus" and r.get("reloads")]
        first = ccs[0] if ccs else None
        for sv in svs:
            figures.append(common.figure(
                f"reload ({scenario}) {sv['label']}: failed requests", str(failed(sv)),
                f"{failed(first)} ({first['label']})" if first else "", reloads(sv), "0",
                failed(sv) == 0, other="; ".join(f"{c['label']}: {failed(c)}"
                                                 for c in ccs[1:])))
            p99 = sv.get("wrk", {}).get("p99_ms")
            if p99 is not None and base_p99:
                spike = float(p99) / float(base_p99)
                limit = max(SPIKE_FACTOR * float(base_p99), float(base_p99) + SPIKE_SLACK_MS)
                p99s = [(c["label"], _ms(float(c["wrk"]["p99_ms"]))) for c in ccs
                        if c.get("wrk", {}).get("p99_ms") is not None]
                figures.append(common.figure(
                    f"reload ({scenario}) {sv['label']}: p99 ms", _ms(float(p99)),
                    f"{p99s[0][1]} ({p99s[0][0]})" if p99s else "",
                    f"sv/no-reload {spike:.2f}x",
                    f"<= {_ms(limit)} (no-reload {_ms(float(base_p99))})",
                    float(p99) <= limit,
                    other="; ".join([f"sockvisor max {_ms(float(sv['wrk'].get('max_ms') or 'nan'))}"]
                                    + [f"{label}: {value}" for label, value in p99s[1:]])))
    return figures


def control_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    figures = []
    summary = data.get("in_process_summary") or {}
    if summary:
        a, b = _cell(summary.get("sockvisor"), 2), _cell(summary.get("circus"), 2)
        try:
            ratio_a = f"sv/circus {float(a) / float(b):.2f}"
        except ValueError:
            ratio_a = ""
        figures.append(common.figure("status round trip, in-process client (µs, median)",
                                     a, b, ratio_a))
    ratio = data.get("ratio_median")
    processes = data.get("hyperfine") or {}
    sv, cc = _hyperfine_ms(processes, "sockvisorctl"), _hyperfine_ms(processes, "circusctl")
    if ratio is not None:
        figures.append(common.figure(
            "ctl status as a process (ms, median, hyperfine)", _ms(sv), _ms(cc),
            f"sv/circus {float(ratio):.2f}", f"<= {CTL_TARGET:g}",
            bool(data.get("target_met", float(ratio) <= CTL_TARGET))))
    return figures


def _cell(row: Any, index: int) -> str:
    if isinstance(row, (list, tuple)) and len(row) > index:
        return str(row[index])
    return "-"


def _hyperfine_ms(processes: Any, needle: str) -> float:
    """The median ms of the hyperfine command containing `needle`, wherever it is."""
    candidates = processes.get("results", processes) if isinstance(processes, dict) else processes
    if isinstance(candidates, dict):
        candidates = list(candidates.values())
    for entry in candidates or []:
        if isinstance(entry, dict) and needle in str(entry.get("command", "")):
            value = entry.get("median")
            if value is not None:
                return float(value) * (1000 if float(value) < 10 else 1)
    return float("nan")


# --------------------------------------------------------------------------- running

def benches(args: argparse.Namespace) -> list[Bench]:
    idle = ["--idle-seconds", f"{args.idle_seconds:g}"]
    return [
        Bench("respawn", "respawn.py", ["--kills", "20", "--slow-kills", "20"],
              [["--quick"], ["--kills", "5", "--slow-kills", "5"]], 900, respawn_figures),
        Bench("reload", "reload.py", [], [["--quick"], ["--reloads", "3"]], 1200,
              reload_figures),
        Bench("control", "control.py", [], [["--quick"], ["--calls", "100", "--runs", "10"]],
              600, control_figures),
        Bench("throughput", "throughput.py", [], [["--quick"]], 900),
        Bench("idle", "idle.py", idle, [["--quick"]], 300 + args.idle_seconds),
        Bench("scale", "scale.py", [], [["--quick"]], 1200),
    ]


def quick_args(path: str, candidates: list[list[str]]) -> list[str]:
    """The first candidate whose options the script's --help mentions."""
    try:
        text = subprocess.run([sys.executable, path, "--help"], capture_output=True,
                              text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    for candidate in candidates:
        if all(a in text for a in candidate if a.startswith("--")):
            return candidate
    return []


def run_bench(bench: Bench, args: argparse.Namespace, results: str) -> None:
    path = os.path.join(HERE, bench.script)
    if not os.path.exists(path):
        bench.status = "missing"
        return
    extra = quick_args(path, bench.quick) if args.quick else bench.args
    json_path = os.path.join(results, f"{bench.name}.json")
    argv = [sys.executable, path, *extra, "--json", json_path]
    bench.command = " ".join(shlex.quote(a) for a in
                             ["python", f"bench/{bench.script}", *extra, "--json", "PATH"])
    limit = bench.limit * (0.5 if args.quick else 1.0) * args.time_limit_factor
    print(f"run_all: {bench.name}: {bench.command} (limit {limit:.0f}s)", file=sys.stderr,
          flush=True)
    began = time.monotonic()
    with open(os.path.join(results, f"{bench.name}.out"), "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=os.path.dirname(HERE),
                                   start_new_session=True)
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            # SIGINT, not SIGTERM: KeyboardInterrupt runs the benchmark's `finally:`
            # blocks, which stop its supervisors and workers.  Then the hard way.
            os.killpg(process.pid, 2)
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                code = process.wait()
            bench.notes.append(f"stopped after its time limit of {limit:.0f}s")
    bench.seconds = time.monotonic() - began
    bench.status = "ok" if code == 0 else f"exit {code}"
    read_figures(bench, json_path)


def read_figures(bench: Bench, json_path: str) -> None:
    try:
        with open(json_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        bench.notes.append("no JSON written")
        return
    try:
        if data.get("figures"):
            bench.figures = list(data["figures"])
        elif bench.extract is not None:
            bench.figures = bench.extract(data)
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        bench.notes.append(f"could not read its figures ({type(exc).__name__}: {exc}); "
                           "see its output")


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """common.format_table, but an "also:" line does not widen the first column."""
    wide = [r for r in rows if str(r[0]).startswith("    also: ")]
    narrow = [r for r in rows if not str(r[0]).startswith("    also: ")]
    width = max(len(str(r[0])) for r in [headers] + narrow)
    marked = [["\0" * width] + list(r[1:]) if str(r[0]).startswith("    also: ") else r
              for r in rows]
    table = common.format_table(headers, marked, align="lrrllc").splitlines()
    out, wide_iter = [], iter(wide)
    for line in table:
        out.append(str(next(wide_iter)[0]) if line.startswith("\0") else line)
    return "\n".join(out)


def met_cell(met: object) -> str:
    if met is None:
        return "-"
    if isinstance(met, str):          # e.g. "noise": the run cannot tell
        return met
    return "yes" if met else "NO"


def report(meta: dict[str, Any], todo: list[Bench], results: str) -> None:
    machine = meta["machine"]
    headers = ["figure", "sockvisor", "circus", "ratio", "target", "met?"]
    rows: list[list[object]] = []
    for bench in todo:
        rows.append([f"[{bench.name}] {bench.status}"
                     + (f", {bench.seconds:.0f}s" if bench.seconds else ""),
                     "", "", "", "", ""])
        for fig in bench.figures:
            met = fig.get("met")
            rows.append(["  " + str(fig.get("figure", "")), fig.get("sockvisor", ""),
                         fig.get("circus", ""), fig.get("ratio", ""),
                         fig.get("target", ""),
                         met_cell(met)])
            if fig.get("other"):
                rows.append([f"    also: {fig['other']}", "", "", "", "", ""])
    print(f"sockvisor vs Circus {machine['circus']}: every figure measured in one run "
          f"({'--quick' if meta['quick'] else 'full'}), side by side; medians and ratios")
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, sockvisor "
          f"{machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']} at start, "
          f"{meta['load_after']} at end; {meta['started'][:16].replace('T', ' ')} UTC, "
          f"{meta['elapsed_s'] / 60:.1f} min")
    print("")
    print(format_table(headers, rows))
    print("circus = Circus 0.19 as it ships (check_delay 5 s) unless a line says otherwise; "
          "ratio: see each line")
    judged = [f for b in todo for f in b.figures if f.get("met") is not None]
    missed = [f for f in judged if f.get("met") is False]
    unclear = [f for f in judged if isinstance(f.get("met"), str)]
    met = len(judged) - len(missed) - len(unclear)
    print("")
    print(f"targets met: {met}/{len(judged)}"
          + (f"; missed: {'; '.join(str(f['figure']) for f in missed)}" if missed else "")
          + (f"; within this run's noise: {'; '.join(str(f['figure']) for f in unclear)}"
             if unclear else ""))
    for bench in todo:
        for note in bench.notes:
            print(f"NOTE {bench.name}: {note}")
        if bench.status == "missing":
            print(f"NOTE {bench.name}: bench/{bench.script} is not there")
    print(f"each benchmark's own tables and raw JSON: {results}/<name>.out, <name>.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run every sockvisor-vs-Circus benchmark and print one table.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: each benchmark's --quick (or fewest settings)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these benchmarks (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="skip these benchmarks (repeatable)")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="idle.py's window (default 60; --quick: idle.py's 10)")
    parser.add_argument("--time-limit-factor", type=float, default=1.0,
                        help="multiply every benchmark's time limit (default 1)")
    parser.add_argument("--results", metavar="DIR",
                        help="keep each benchmark's output and JSON here (default: a new "
                             "temp directory)")
    parser.add_argument("--render", metavar="DIR",
                        help="run nothing: print the table again from the results "
                             "directory of an earlier run (figures read afresh from its "
                             "JSON files; with --json, written there too)")
    parser.add_argument("--json", metavar="PATH", help="the combined figures to PATH")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(args.render, "run_all.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
        todo = []
        for saved in meta["benchmarks"]:
            bench = next(b for b in benches(args) if b.name == saved["name"])
            bench.status, bench.seconds = saved["status"], saved["seconds"]
            bench.command = saved["command"]
            bench.notes = [n for n in saved["notes"] if not n.startswith("could not read")]
            if bench.status != "missing":
                read_figures(bench, os.path.join(args.render, f"{bench.name}.json"))
            todo.append(bench)
        if args.json:
            meta["benchmarks"] = [dict(saved, figures=b.figures, notes=b.notes)
                                  for saved, b in zip(meta["benchmarks"], todo)]
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(meta, indent=2, default=str) + "\n")
        report(meta, todo, args.render)
        return 0
    results = args.results or tempfile.mkdtemp(prefix="sockvisor-bench-results-")
    os.makedirs(results, exist_ok=True)
    machine = common.machine_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    todo = [b for b in benches(args)
            if (not args.only or b.name in args.only) and b.name not in args.skip]
    for bench in todo:
        run_bench(bench, args, results)
        print(f"run_all: {bench.name}: {bench.status} in {bench.seconds:.0f}s",
              file=sys.stderr, flush=True)
    meta = {"machine": machine, "load_after": [round(x, 2) for x in os.getloadavg()],
            "started": started.isoformat(), "elapsed_s": round(time.monotonic() - began, 1),
            "quick": args.quick,
            "benchmarks": [{"name": b.name, "status": b.status,
                            "seconds": round(b.seconds, 1), "command": b.command,
                            "figures": b.figures, "notes": b.notes} for b in todo]}
    text = json.dumps(meta, indent=2, default=str) + "\n"
    with open(os.path.join(results, "run_all.json"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text)
    report(meta, todo, results)
    failed = any(b.status not in ("ok", "missing") for b in todo)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
