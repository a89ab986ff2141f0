"""Control round trip: sockvisor and Circus 0.19 side by side, in one run.

Both supervisors run one worker (the stdlib worker from `common.py`) and answer
`status` on an ipc:// endpoint in a private temp directory.

(a) In-process client, one `status` request and its reply, over a client kept open:
      sockvisor: sockvisor.control.client.ControlClient(endpoint).call("status")
      Circus:    circus.client.CircusClient(endpoint=...).call(
                     {"command": "status", "properties": {}})
    `--calls` (500) timed calls each after 20 warm-up calls, in blocks of 50 that
    alternate between the two (so that a noisy neighbour hits both alike); median,
    p99 and mean per call.

(b) A whole command-line process, by hyperfine:
      hyperfine -N --warmup 3 --runs 30 --export-json ... \\
          '<scripts>/sockvisorctl --endpoint E status' \\
          '<scripts>/circusctl --endpoint E status' \\
          '<python> -c pass' '<python> -S -c pass'
    The console scripts are called by absolute path in this interpreter's scripts
    directory (sysconfig "scripts"): PATH may hold pyenv shims, bash scripts that
    add about 100 ms.  <python> is the interpreter in the scripts' shebang.
    `python -c pass` is the interpreter's own start-up (site and the .pth files of
    site-packages included); `-S` skips site, to show what those cost.
    The issue's target: sockvisorctl's process time at most half of circusctl's.
    When it is missed (or with --profile), the benchmark profiles sockvisorctl's
    start-up: `python -X importtime` of the real script (5 runs, medians) and a
    phase-by-phase timing of what sockvisorctl's main() imports and runs.

    python bench/control.py [--calls 500] [--runs 30] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

WARMUP_CALLS = 20
BLOCK = 50
TARGET_RATIO = 0.5
IMPORTTIME_RUNS = 5
PHASE_RUNS = 7

# sockvisorctl's main(), one step at a time, in a fresh interpreter (printed as JSON).
# Mirrors sockvisor/cli/ctl.py: import the module, load the command registry (every
# command module, by importlib), build the argparse tree, import zmq and the client,
# connect, one round trip, print.
PHASE_PROBE = r'''
import json, sys, time
t0 = time.perf_counter()
before = set(sys.modules)
marks = []
def mark(name):
    marks.append((name, time.perf_counter()))
import sockvisor.cli.ctl as ctl
mark("import sockvisor.cli.ctl (argparse, json)")
from sockvisor.control.commands import load_commands
mark("import sockvisor.control.commands (protocol: dataclasses, inspect)")
after_package = set(sys.modules)
commands = load_commands()
mark("load_commands(): the 21 command modules")
by_commands = sorted(set(sys.modules) - after_package)
parser = ctl.build_parser(commands)
args = parser.parse_args(["--endpoint", sys.argv[1], "status"])
mark("build_parser() + parse_args()")
after_parse = set(sys.modules)
import zmq
mark("import zmq")
after_zmq = set(sys.modules)
from sockvisor.control.client import ControlClient
mark("import sockvisor.control.client (uuid)")
with ControlClient(args.endpoint, 10.0) as client:
    reply = client.call("status", {})
mark("connect + status round trip + close")
text = commands["status"].format(reply)
mark("format the reply")
out = {"start": t0, "marks": [], "new_by_load_commands": by_commands,
       "new_by_zmq": sorted(after_zmq - after_parse), "status": reply.get("status")}
last = t0
for name, t in marks:
    out["marks"].append([name, (t - last) * 1000])
    last = t
print(json.dumps(out))
'''


def interpreter_of(script: str) -> str:
    """The interpreter in a console script's shebang line."""
    with open(script, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().strip()
    if not first.startswith("#!"):
        raise ValueError(f"{script} has no shebang")
    interpreter = first[2:].strip().split()[0]
    if not os.path.isabs(interpreter) or not os.access(interpreter, os.X_OK):
        raise ValueError(f"{script}: unexpected shebang {first!r}")
    return interpreter


# --------------------------------------------------------------------------- (a) in process

def in_process(sv: common.Supervised, circus: common.Supervised, calls: int) -> dict:
    from circus.client import CircusClient
    from sockvisor.control.client import ControlClient

    sv_client = ControlClient(sv.endpoint, timeout=10.0)
    circus_client = CircusClient(endpoint=circus.endpoint, timeout=10.0)

    def sv_call() -> None:
        reply = sv_client.call("status")
        if reply.get("status") != "ok":
            raise RuntimeError(f"sockvisor status: {reply}")

    def circus_call() -> None:
        reply = circus_client.call({"command": "status", "properties": {}})
        if reply.get("status") != "ok":
            raise RuntimeError(f"circus status: {reply}")

    clients = {"sockvisor": sv_call, "circus": circus_call}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for call in clients.values():
            for _ in range(WARMUP_CALLS):
                call()
        order = list(clients)
        while any(len(s) < calls for s in samples.values()):
            for name in order:
                call, times = clients[name], samples[name]
                for _ in range(min(BLOCK, calls - len(times))):
                    start = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - start) * 1e6)
            order.reverse()
    finally:
        sv_client.close()
        circus_client.stop()
    return samples


# --------------------------------------------------------------------------- (b) processes

def hyperfine(commands: dict[str, list[str]], runs: int, warmup: int,
              export: str) -> dict[str, dict]:
    argv = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs),
            "--export-json", export, "--style", "basic"]
    for name, command in commands.items():
        argv += ["-n", name, " ".join(command)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"hyperfine failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    with open(export, encoding="utf-8") as handle:
        results = json.load(handle)["results"]
    return {name: result for name, result in zip(commands, results)}


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """(depth, self µs, cumulative µs, module) per line of -X importtime output."""
    entries = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            depth = (len(match.group(3)) - 1) // 2
            entries.append((depth, int(match.group(1)), int(match.group(2)), match.group(4)))
    return entries


def importtime_profile(python: str, script: str, endpoint: str) -> dict:
    """Medians over IMPORTTIME_RUNS of `python -X importtime script --endpoint E status`."""
    runs = []
    for _ in range(IMPORTTIME_RUNS):
        done = subprocess.run([python, "-X", "importtime", script, "--endpoint", endpoint,
                               "status"], capture_output=True, text=True, timeout=60)
        runs.append(parse_importtime(done.stderr))
    keys = {(d, name) for run in runs for d, _, _, name in run}
    table = []
    for depth, name in keys:
        selfs = [s for run in runs for d, s, _, n in run if n == name and d == depth]
        cums = [c for run in runs for d, _, c, n in run if n == name and d == depth]
        table.append({"module": name, "depth": depth, "self_ms": common.median(selfs) / 1000,
                      "cumulative_ms": common.median(cums) / 1000})
    top_level = sorted((e for e in table if e["depth"] == 0),
                       key=lambda e: -e["cumulative_ms"])
    by_self = sorted(table, key=lambda e: -e["self_ms"])
    total = sum(e["cumulative_ms"] for e in top_level)
    return {"top_level": top_level, "by_self": by_self[:15], "total_ms": total,
            "raw_first_run": runs[0]}


def phase_profile(python: str, endpoint: str) -> dict:
    runs = []
    for _ in range(PHASE_RUNS):
        done = subprocess.run([python, "-c", PHASE_PROBE, endpoint], capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"phase probe failed: {done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout))
    names = [name for name, _ in runs[0]["marks"]]
    phases = [{"phase": name, "ms": common.median([r["marks"][i][1] for r in runs])}
              for i, name in enumerate(names)]
    return {"phases": phases, "new_by_load_commands": runs[0]["new_by_load_commands"],
            "new_by_zmq": runs[0]["new_by_zmq"]}


# --------------------------------------------------------------------------- main

def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Control round trip, sockvisor vs Circus 0.19: in-process client and "
                    "the whole ctl process (hyperfine).")
    parser.add_argument("--calls", type=int, default=500,
                        help="timed in-process calls per client (default 500)")
    parser.add_argument("--runs", type=int, default=30, help="hyperfine --runs (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="hyperfine --warmup (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="profile sockvisorctl's start-up even if the target is met")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every measurement to PATH ('-': stdout)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, supervisor logs)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.runs < 2:
        parser.error("--calls must be >= 1 and --runs >= 2")
    if shutil.which("hyperfine") is None:
        parser.error("hyperfine is not installed (apt-get install hyperfine)")
    out = sys.stderr if args.json == "-" else sys.stdout

    import sysconfig
    scripts_dir = sysconfig.get_path("scripts")
    sockvisorctl = common.console_script("sockvisorctl")
    circusctl = common.console_script("circusctl")
    python = interpreter_of(sockvisorctl)
    machine = common.machine_info()
    began = time.monotonic()
    profile: dict = {}
    with common.temp_directory(keep=args.keep) as directory:
        os.mkdir(os.path.join(directory, "sv"))
        os.mkdir(os.path.join(directory, "circus"))
        sv = common.start_sockvisor(os.path.join(directory, "sv"))
        try:
            circus = common.start_circus(os.path.join(directory, "circus"))
            try:
                print("control: (a) in-process clients", file=sys.stderr, flush=True)
                samples = in_process(sv, circus, args.calls)
                commands = {
                    "sockvisorctl status": [sockvisorctl, "--endpoint", sv.endpoint, "status"],
                    "circusctl status": [circusctl, "--endpoint", circus.endpoint, "status"],
                    "python -c pass": [python, "-c", "pass"],
                    "python -S -c pass": [python, "-S", "-c", "pass"],
                }
                for name, command in commands.items():   # each must work before timing
                    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
                    if done.returncode != 0:
                        raise RuntimeError(f"{name} failed ({done.returncode}): "
                                           f"{done.stdout}{done.stderr}")
                print("control: (b) hyperfine", file=sys.stderr, flush=True)
                with tempfile.NamedTemporaryFile(suffix=".json", dir=directory) as export:
                    processes = hyperfine(commands, args.runs, args.warmup, export.name)
                sv_median = processes["sockvisorctl status"]["median"]
                circus_median = processes["circusctl status"]["median"]
                target_met = sv_median <= TARGET_RATIO * circus_median
                if args.profile or not target_met:
                    print("control: profiling sockvisorctl's start-up", file=sys.stderr,
                          flush=True)
                    profile["importtime"] = importtime_profile(python, sockvisorctl,
                                                               sv.endpoint)
                    profile["importtime_circusctl"] = importtime_profile(
                        python, circusctl, circus.endpoint)
                    profile["phases"] = phase_profile(python, sv.endpoint)
            finally:
                circus_exit = circus.stop()
        finally:
            sv_exit = sv.stop()
    elapsed = time.monotonic() - began

    # ---------------------------------------------------------------- report
    print("control round trip, sockvisor vs Circus 0.19, ipc:// on this machine "
          "(ratio = median / sockvisor's median)", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    print("", file=out)
    print(f"(a) in-process client, `status` round trip ({args.calls} calls each after "
          f"{WARMUP_CALLS} warm-up, alternating blocks of {BLOCK}; µs)", file=out)
    ref = common.median(samples["sockvisor"])
    rows_a = []
    for name, label in (("sockvisor", "sockvisor ControlClient.call('status')"),
                        ("circus", "circus CircusClient.call({'command': 'status'})")):
        values = samples[name]
        rows_a.append([label, len(values), f"{common.median(values):.0f}",
                       f"{common.percentile(values, 99):.0f}",
                       f"{sum(values) / len(values):.0f}",
                       ratio(common.median(values), ref)])
    print(common.format_table(["client", "calls", "median", "p99", "mean", "vs sv"], rows_a),
          file=out)
    print("", file=out)
    print(f"(b) whole process: hyperfine -N --warmup {args.warmup} --runs {args.runs} (ms); "
          f"scripts from {scripts_dir}, python = {python}", file=out)
    py = processes["python -c pass"]["median"]
    rows_b = []
    for name, result in processes.items():
        rows_b.append([name, len(result["times"]), f"{result['mean'] * 1000:.1f}",
                       f"{result['median'] * 1000:.1f}", f"{result['min'] * 1000:.1f}",
                       f"{result['stddev'] * 1000:.1f}",
                       f"{(result['median'] - py) * 1000:.1f}" if name.endswith("status")
                       else "-",
                       ratio(result["median"], sv_median)])
    print(common.format_table(["command", "runs", "mean", "median", "min", "stddev",
                               "median - python", "vs sockvisorctl"], rows_b), file=out)
    print("", file=out)
    sv_net, circus_net = sv_median - py, circus_median - py
    net_ratio = f" ({sv_net / circus_net:.2f})" if circus_net > 0 else ""
    print(f"target (the issue): sockvisorctl <= {TARGET_RATIO:g} x circusctl (process "
          f"time, medians): sockvisorctl / circusctl = {sv_median / circus_median:.2f} -> "
          f"{'met' if target_met else 'NOT met'}\nbeyond `python -c pass`: "
          f"sockvisorctl {sv_net * 1000:.1f} ms, circusctl {circus_net * 1000:.1f} ms"
          f"{net_ratio}", file=out)
    if profile:
        print_profile(profile, out)
    print(f"{elapsed:.0f}s in all; shared machine, expect noise", file=out)
    for label, status in (("sockvisor", sv_exit), ("circus", circus_exit)):
        if status not in (0, None):
            print(f"NOTE {label}: exited with status {status} when stopped with SIGTERM",
                  file=out)

    if args.json:
        dump = {"machine": machine, "elapsed_s": round(elapsed, 1),
                "scripts_dir": scripts_dir, "python": python,
                "in_process_us": samples,
                "in_process_summary": dict(zip(("sockvisor", "circus"), rows_a)),
                "hyperfine": processes, "target_ratio": TARGET_RATIO,
                "ratio_median": sv_median / circus_median, "target_met": target_met,
                "profile": profile}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0


def print_profile(profile: dict, out) -> None:
    imp, imp_c = profile["importtime"], profile["importtime_circusctl"]
    print("", file=out)
    print(f"sockvisorctl start-up profile: python -X importtime (medians of "
          f"{IMPORTTIME_RUNS} runs; -X importtime adds overhead, so read the shares): "
          f"top-level imports {imp['total_ms']:.1f} ms (circusctl: {imp_c['total_ms']:.1f} ms)",
          file=out)
    rows = [[e["module"], f"{e['cumulative_ms']:.1f}", f"{e['self_ms']:.1f}"]
            for e in imp["top_level"] if e["cumulative_ms"] >= 1.0]
    print(common.format_table(["top-level import (depth 0)", "cumulative ms", "self ms"], rows),
          file=out)
    print("(importlib.import_module() is not timed by -X importtime: what the command "
          "modules import, which load_commands() loads that way, shows up at depth 0)",
          file=out)
    print("", file=out)
    rows = [[e["module"], str(e["depth"]), f"{e['self_ms']:.1f}", f"{e['cumulative_ms']:.1f}"]
            for e in imp["by_self"][:12]]
    print(common.format_table(["module (largest self time)", "depth", "self ms",
                               "cumulative ms"], rows), file=out)
    phases = profile["phases"]
    print("", file=out)
    print(f"sockvisorctl's main(), step by step in a fresh interpreter (medians of "
          f"{PHASE_RUNS} runs; time after the interpreter's own start-up)", file=out)
    rows = [[p["phase"], f"{p['ms']:.1f}"] for p in phases["phases"]]
    rows.append(["total", f"{sum(p['ms'] for p in phases['phases']):.1f}"])
    print(common.format_table(["step", "ms"], rows), file=out)
    new = phases["new_by_load_commands"]
    heavy = [m for m in new if "." not in m and not m.startswith("_")]
    print(f"load_commands() imports {len(new)} modules, top-level packages: "
          f"{', '.join(heavy) or '-'}", file=out)
    print(f"import zmq then adds {len(phases['new_by_zmq'])} modules", file=out)


if __name__ == "__main__":
    sys.exit(main())
