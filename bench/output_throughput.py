"""How fast one worker can write lines to its stdout, by where they go.

Since issue 10 every worker's stdout goes through a pipe to sockvisor, `inherit`
(the default) included: sockvisor reads the lines in its event loop and writes
them on to its own stdout (so that `logs` has them).  Before, `inherit` handed
the worker sockvisor's own fd, and the worker wrote straight to it.  This
benchmark measures what that costs, side by side:

  direct             the worker alone, its stdout the destination itself: exactly
                     what `inherit` was before (no supervisor in the path)
  sockvisor inherit  sockvisor's stdout is the destination; the worker's lines
                     go through sockvisor, unprefixed
  sockvisor prefix   the same, each line prefixed `out[pid] ` (for reference)
  circus default     circusd 0.19 with no stdout_stream: the worker inherits
                     circusd's stdout, like `direct`
  circus StdoutStream circusd with `stdout_stream.class = StdoutStream`: piped
                     through circusd, which writes each chunk to its stdout

The destination is a regular file (`--dest file`, default) or a pipe into
`cat > file` (`--dest pipe`: a reader like a terminal, a log shipper or the
journal's stream).  The worker (Python, stdout block-buffered; with `--flush`, one
write() per line, as a logger that flushes each record does; with `--rate N`,
one line each 1/N s) waits for SIGUSR1,
writes `--lines` lines of `--width` bytes and `done`, flushes, and records how
long its writes took (worker lines/s: when the writer must wait for the reader,
this drops).  The benchmark then waits until `done` is in the destination
(delivered lines/s: lines that arrived, from the first write to the last byte),
counts the lines lost (sockvisor drops, and counts in `stats`, what a reader
leaves more than 1 MiB behind, rather than block), and reads the supervisor's
CPU time spent meanwhile (µs per line).  Rows
run in interleaved rounds in a shuffled order; medians are reported.

    python bench/output_throughput.py [--lines 1000000] [--width 100] [--rounds 5]
                                      [--dest file|pipe] [--flush | --rate N] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

WRITER = r'''
import os, signal, sys, time
count, width, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
flush = len(sys.argv) > 4
rate = float(sys.argv[4]) if flush else 0.0   # lines/s, 0: flat out
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
with open(report + ".pid", "w") as f:
    f.write(str(os.getpid()))
signal.sigwait({signal.SIGUSR1})
line = b"x" * (width - 1) + b"\n"
out = os.fdopen(1, "wb", buffering=65536)
started = time.time()
for number in range(count):
    out.write(line)
    if flush:
        out.flush()   # one write() per line, as a logger that flushes each record
    if rate:
        delay = started + (number + 1) / rate - time.time()
        if delay > 0:
            time.sleep(delay)
out.write(b"done\n")
out.flush()
finished = time.time()
with open(report + ".tmp", "w") as f:
    f.write(f"{started} {finished}")
os.rename(report + ".tmp", report)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
'''

ROWS = ["direct", "sockvisor inherit", "sockvisor prefix", "circus default",
        "circus StdoutStream"]


def start_row(row: str, directory: str, argv: list[str], stdout: int) -> subprocess.Popen:
    """Start the worker (`direct`) or a supervisor running it, stdout → `stdout`."""
    log = open(os.path.join(directory, "supervisor.log"), "ab")
    if row == "direct":
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                start_new_session=True)
    if row.startswith("sockvisor"):
        path = os.path.join(directory, "sockvisor.ini")
        with open(path, "w") as handle:
            handle.write(f"[sockvisor]\nendpoint = ipc://{directory}/ctl\nloglevel = warning\n\n"
                         f"[watcher:out]\ncmd = {' '.join(argv)}\ngraceful_timeout = 1\n"
                         f"stdout = {row.split()[1]}\n")
        command = [sys.executable, "-m", "sockvisor", "start", path]
    else:
        path = os.path.join(directory, "circus.ini")
        stream = "stdout_stream.class = StdoutStream\n" if "Stdout" in row else ""
        with open(path, "w") as handle:
            handle.write(f"[circus]\nendpoint = ipc://{directory}/circus-ctl\n"
                         f"pubsub_endpoint = ipc://{directory}/circus-pub\nstatsd = False\n\n"
                         f"[watcher:out]\ncmd = {argv[0]}\nargs = {' '.join(argv[1:])}\n"
                         f"graceful_timeout = 1\n{stream}")
        command = [sys.executable, "-c", "from circus.circusd import main; main()",
                   "--log-level", "warning", "--log-output",
                   os.path.join(directory, "circus.log"), path]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                            start_new_session=True)


def ends_with_done(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() < 5:
            return False
        handle.seek(-5, os.SEEK_END)
        return handle.read() == b"done\n"


def run_once(row: str, base: str, index: int, args: argparse.Namespace) -> dict:
    directory = os.path.join(base, f"{index:03d}")
    os.mkdir(directory)
    writer = os.path.join(directory, "writer.py")
    with open(writer, "w") as handle:
        handle.write(WRITER)
    report = os.path.join(directory, "report")
    destination = os.path.join(directory, "destination")
    argv = [sys.executable, writer, str(args.lines), str(args.width), report,
            *([str(args.rate or 0)] if args.flush or args.rate else [])]
    reader = None
    with open(destination, "wb") as out:
        if args.dest == "pipe":
            reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
            sink = reader.stdin.fileno()
        else:
            sink = out.fileno()
        process = start_row(row, directory, argv, sink)
        if reader is not None:
            reader.stdin.close()   # the supervisor holds the write end now
    try:
        pid = int(common.wait_for(lambda: open(report + ".pid").read().strip(), 30,
                                  what=f"{row}: the writer"))
        time.sleep(0.2)   # let the supervisor finish its start-up work (not measured)
        cpu_before = common.proc_cpu_seconds(process.pid)
        os.kill(pid, signal.SIGUSR1)
        started, finished = map(float, common.wait_for(
            lambda: open(report).read().split(), 300, what=f"{row}: the writer's report"))
        common.wait_for(lambda: ends_with_done(destination), 300, interval=0.001,
                        what=f"{row}: done in the destination")
        delivered_at = time.time()   # (not the file's mtime: a jiffy coarse)
        cpu = common.proc_cpu_seconds(process.pid) - cpu_before
        with open(destination, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        os.unlink(destination)   # 100 MB a run
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)   # a worker left behind
        if reader is not None:
            reader.wait(10)
    return {"row": row, "worker_seconds": finished - started,
            "delivered_seconds": delivered_at - started,
            "supervisor_cpu_seconds": None if row == "direct" else cpu,
            "lines_delivered": lines - 1, "lines_written": args.lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=100, help="bytes per line, newline included")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dest", choices=("file", "pipe"), default="file")
    parser.add_argument("--flush", action="store_true",
                        help="the worker writes (flushes) each line on its own")
    parser.add_argument("--rate", type=float, default=0,
                        help="lines per second, each on its own (implies --flush); "
                             "0: as fast as it can")
    parser.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS)
    parser.add_argument("--json", help="every measurement as JSON (- for stdout)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    machine = common.machine_info()
    results: list[dict] = []
    with common.temp_directory("sockvisor-bench-output-") as base:
        index = 0
        for round_number in range(args.rounds):
            order = list(args.rows)
            rng.shuffle(order)
            for row in order:
                result = run_once(row, base, index, args)
                result["round"] = round_number
                results.append(result)
                index += 1
                print(f"round {round_number + 1}/{args.rounds} {row:20s} "
                      f"{args.lines / result['worker_seconds']:>12,.0f} lines/s written "
                      f"{result['lines_delivered'] / result['delivered_seconds']:>12,.0f} "
                      f"delivered ({result['lines_written'] - result['lines_delivered']} lost)",
                      file=sys.stderr, flush=True)
    table = []
    for row in args.rows:
        mine = [r for r in results if r["row"] == row]
        written = common.median([args.lines / r["worker_seconds"] for r in mine])
        delivered = common.median([r["lines_delivered"] / r["delivered_seconds"] for r in mine])
        cpu = [r["supervisor_cpu_seconds"] for r in mine if r["supervisor_cpu_seconds"] is not None]
        per_line = f"{common.median(cpu) / args.lines * 1e6:.2f}" if cpu else "-"
        if cpu and args.rate:   # the share of a CPU at that rate
            per_line += f" ({common.median(cpu) / (args.lines / args.rate):.1%} CPU)"
        lost = common.median([1 - r["lines_delivered"] / r["lines_written"] for r in mine])
        table.append([row, f"{written:,.0f}", f"{delivered:,.0f}",
                      f"{common.median([r['delivered_seconds'] for r in mine]):.2f}",
                      per_line, f"{lost:.1%}"])
    print(f"{args.lines:,} lines of {args.width} bytes to a {args.dest}"
          f"{', one write() each' if args.flush or args.rate else ''}"
          f"{f' at {args.rate:g}/s' if args.rate else ''}, "
          f"median of {args.rounds} rounds")
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']} "
          f"({machine.get('sockvisor_commit', '?')}), load at start {machine['loadavg']}")
    print(common.format_table(["row", "written lines/s", "delivered lines/s", "seconds",
                               "supervisor CPU µs/line", "lost"], table))
    print("lost: the median share of lines dropped because the destination's reader fell "
          "more than sockvisor's buffer (1 MiB) behind")
    if args.json:
        data = {"machine": machine, "args": vars(args), "results": results}
        text = json.dumps(data, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as handle:
                handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
