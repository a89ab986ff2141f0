"""Deploying a new supervisor under load: sockvisor's upgrade in place vs what users do today.

Three rows, each with two workers (the plain worker of common.py) serving
127.0.0.1:PORT while `tests/http_load.Load` sends requests (3 client threads,
one request per new connection, every request recorded; bounded in count and
time), one cycle after the other:

  * sockvisor upgrade: `sockvisorctl --endpoint E --json upgrade` `--upgrades`
    times (20).  The gap is what sockvisor reports: from just before the exec
    until the resumed process serves its control channel again; the workers
    serve throughout, so clients see no gap at all;
  * sockvisor stop + start: SIGTERM, wait for the exit, start the same config
    again (`--restarts`, 5): what installing a new sockvisor means without the
    upgrade.  The gap is from the SIGTERM until a new worker answers;
  * circusd restart: the same with Circus 0.19.

Per row: cycles, gap median / p99 (ms), requests, failed requests (refused,
reset, timed out: http_load.classify), and the longest a request took.

    python bench/upgrade.py [--upgrades 20] [--restarts 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import http_load  # noqa: E402   (common.py puts tests/ on the path)


def measure(current: list[common.Supervised], cycle, count: int) -> dict[str, object]:
    """Run `cycle` `count` times under load; `current[0]` is the running supervisor
    (a restart replaces it)."""
    sup = current[0]
    gaps = []
    with http_load.Load(sup.port, threads=3, pause=0.002, max_requests=200000,
                        max_seconds=600) as load:
        common.wait_for(lambda: load.count() > 50, 10, what="load to start")
        for _ in range(count):
            sup, gap = cycle(sup)
            current[0] = sup
            gaps.append(gap)
            before = load.count()
            common.wait_for(lambda: load.count() > before + 20, 20,
                            what="requests to go on")
        samples = load.snapshot()
    failed = load.counts()
    return {"cycles": count, "gap_median": common.median(gaps),
            "gap_p99": common.percentile(gaps, 99), "requests": len(samples),
            "failed": sum(n for kind, n in failed.items() if kind != "ok"),
            "failures": dict(failed), "max_latency": max(s.latency for s in samples)}


def upgrade_cycle(sup: common.Supervised):
    deadline = time.monotonic() + 15
    while True:
        result = subprocess.run([common.console_script("sockvisorctl"), "--endpoint",
                                 sup.endpoint, "--json", "upgrade"], capture_output=True,
                                text=True, timeout=60)
        # Refused until start-up is over (every worker settled: ready_settle).
        if "still starting" not in result.stdout + result.stderr or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if result.returncode != 0:
        raise RuntimeError(f"upgrade failed: {result.stderr}\n{sup.log_tail()}")
    done = json.loads(result.stdout.strip().splitlines()[-1])
    return sup, done["gap_ms"]


def restart_cycle(sup: common.Supervised):
    argv = list(sup.process.args)
    began = time.monotonic()
    sup.stop()
    again = common._launch(sup.label, sup.kind, argv, sup.directory, sup.port,
                           sup.config_path, sup.settings, 30.0, sup.endpoint)
    return again, (time.monotonic() - began) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--no-circus", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    plans = [("sockvisor upgrade", "sockvisor", upgrade_cycle, args.upgrades),
             ("sockvisor stop + start", "sockvisor", restart_cycle, args.restarts)]
    if not args.no_circus:
        plans.append(("circusd restart", "circus", restart_cycle, args.restarts))
    for label, kind, cycle, count in plans:
        with common.temp_directory() as directory:
            start = common.start_sockvisor if kind == "sockvisor" else common.start_circus
            current = [start(directory, label=label, numprocesses=2)]
            try:
                result = measure(current, cycle, count)
            finally:
                current[0].stop()
        rows.append([label, result["cycles"], f"{result['gap_median']:.0f}",
                     f"{result['gap_p99']:.0f}", result["requests"], result["failed"],
                     f"{result['max_latency'] * 1000:.0f}"])
        print(f"{label}: {result['failures']}", file=sys.stderr)
    print(common.format_table(["how", "cycles", "gap p50 ms", "gap p99 ms", "requests",
                               "failed", "max latency ms"], rows))
    print(f"\n{common.machine_info()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
