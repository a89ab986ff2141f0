"""Does a busy web console slow down respawns?  kill -9 → replacement latency with
200 HTTP clients hammering sockvisor's console, against the same with none.

One sockvisor, one worker (as in respawn.py: `min_uptime = 0.05`, so each kill
takes the healthy-worker path), and `http = 127.0.0.1:PORT`.  Kills run in
blocks, alternating an idle block and a loaded block (so a noisy neighbour
slows both alike); each kill is timed by respawn.py's own `kill_once`:

  * spawn:  kill → sockvisor has forked the replacement (what sockvisor itself
            does: reap, decide, fork; polled every 0.5 ms);
  * answer: kill → the replacement answers HTTP (adds the worker's own start-up,
            which competes for CPU with the load generator on a small machine).

The load is a separate process (`--loadgen`, asyncio, so it costs the benchmark's
own process nothing) with CLIENTS connections, each a kind of client the
console must survive:
  * 170 keep-alive clients looping over GET /api/watchers, /api/watchers/web,
    /api/sockets, /metrics and / as fast as answers come;
  * 20 event-stream clients (/api/events) that read;
  * 10 slow clients that send their request headers one byte at a time.
It counts the answers, so the table shows the load the console actually served.

    python bench/console_load.py [--kills 40] [--block 5] [--clients 200] [--json out.json]

Target (issue 12): the loaded median spawn latency within 1.2× the idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import respawn  # noqa: E402

TARGET = 1.2
PATHS = ("/api/watchers", "/api/watchers/web", "/api/sockets", "/metrics", "/")


# --------------------------------------------------------------------------- load generator

async def _hammer(port: int, counter: list[int], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(common.HOST, port)
    index = random.randrange(len(PATHS))
    try:
        while not stop.is_set():
            path = PATHS[index % len(PATHS)]
            index += 1
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counter[0] += 1
    finally:
        writer.close()


async def _events(port: int, counter: list[int], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(common.HOST, port)
    writer.write(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                return
            counter[1] += chunk.count(b"data:")
    finally:
        writer.close()


async def _slow(port: int, stop: asyncio.Event) -> None:
    request = f"GET /api/watchers HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(common.HOST, port)
        try:
            for byte in request:
                if stop.is_set():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(1.0)
            await reader.read(65536)
        except OSError:
            pass   # dropped by the console's header timeout: connect again
        finally:
            writer.close()


async def _loadgen(port: int, clients: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    counter = [0, 0]
    slow = min(10, clients // 20)
    events = min(20, clients // 10)
    tasks = [asyncio.ensure_future(_slow(port, stop)) for _ in range(slow)]
    tasks += [asyncio.ensure_future(_events(port, counter, stop)) for _ in range(events)]
    tasks += [asyncio.ensure_future(_hammer(port, counter, stop))
              for _ in range(clients - slow - events)]
    began = time.monotonic()
    print("ready", flush=True)
    await stop.wait()
    elapsed = time.monotonic() - began
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)
              and not isinstance(r, asyncio.CancelledError)]
    print(json.dumps({"requests": counter[0], "events": counter[1],
                      "seconds": round(elapsed, 2), "client_errors": len(errors),
                      "first_error": repr(errors[0]) if errors else None}), flush=True)


class Load:
    """The load generator as a child process: started, then stopped with SIGTERM."""

    def __init__(self, port: int, clients: int):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--loadgen", str(port),
             "--clients", str(clients)], stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")
        time.sleep(1.0)   # connections open and requests flowing before we measure

    def stop(self) -> dict[str, object]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the benchmark

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="counted kills per phase")
    parser.add_argument("--block", type=int, default=5, help="kills per block")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--loadgen", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        asyncio.run(_loadgen(args.loadgen, args.clients))
        return 0

    rng = random.Random(1)
    http_port = common.free_port()
    machine = common.machine_info()
    rows = {phase: respawn.Row(phase, lambda d: None, 0.0, args.kills)
            for phase in ("idle", "loaded")}
    served: list[dict[str, object]] = []
    with common.temp_directory() as directory:
        sup = common.start_sockvisor(directory, watcher=respawn.SOCKVISOR_WATCHER,
                                     globals_={"http": f"{common.HOST}:{http_port}"})
        try:
            poller = common.NewChildPoller(sup.pid)
            for row in rows.values():
                row.supervisor, row.poller = sup, poller
                row.last_spawn = time.perf_counter()
            respawn.kill_once(rows["idle"], args.timeout, rng)   # warm-up, not counted
            phase = "idle"
            while not all(row.done for row in rows.values()):
                row = rows[phase]
                load = Load(http_port, args.clients) if phase == "loaded" else None
                try:
                    for _ in range(args.block):
                        if row.done:
                            break
                        kill = respawn.kill_once(row, args.timeout, rng)
                        row.kills.append(kill)
                        if kill.note:
                            print(f"console_load: {phase}: {kill.note}", file=sys.stderr)
                finally:
                    if load is not None:
                        served.append(load.stop())
                print(f"console_load: {phase} {len(row.kills)}/{row.target}",
                      file=sys.stderr, flush=True)
                phase = "loaded" if phase == "idle" else "idle"
            alive = sup.process.poll() is None
        finally:
            status = sup.stop()

    def med(values: list[float]) -> float:
        return common.median(values) if values else float("nan")
    idle, loaded = rows["idle"], rows["loaded"]
    spawn_ratio = med(loaded.spawn_ms()) / med(idle.spawn_ms())
    answer_ratio = med(loaded.answer_ms()) / med(idle.answer_ms())
    seconds = sum(float(s["seconds"]) for s in served) or 1.0
    requests = sum(int(s["requests"]) for s in served)
    table = common.format_table(
        ["phase", "n", "fail", "spawn med", "spawn p90", "spawn p99", "answer med",
         "answer p99"],
        [[r.label, len(r.answer_ms()), r.failures(), f"{med(r.spawn_ms()):.2f}",
          f"{common.percentile(r.spawn_ms(), 90):.2f}",
          f"{common.percentile(r.spawn_ms(), 99):.2f}", f"{med(r.answer_ms()):.1f}",
          f"{common.percentile(r.answer_ms(), 99):.1f}"] for r in (idle, loaded)])
    print(f"kill -9 -> replacement with {args.clients} HTTP clients on the console vs "
          f"none (ms)\nmachine: nproc {machine['nproc']}, Python {machine['python']}, "
          f"load {machine['loadavg']}\n")
    print(table)
    print(f"\nconsole served {requests / seconds:.0f} requests/s during the loaded blocks "
          f"({requests} requests, "
          f"{sum(int(s['events']) for s in served)} events streamed, "
          f"{sum(int(s['client_errors']) for s in served)} client errors)")
    print(f"spawn ratio loaded/idle {spawn_ratio:.2f}x (target <= {TARGET}x: "
          f"{'met' if spawn_ratio <= TARGET else 'MISSED'}); answer ratio "
          f"{answer_ratio:.2f}x")
    if not alive or status not in (0, None):
        print(f"NOTE: sockvisor exited with status {status}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "clients": args.clients,
                       "rows": {k: [vars(x) for x in r.kills] for k, r in rows.items()},
                       "served": served, "spawn_ratio": spawn_ratio,
                       "answer_ratio": answer_ratio,
                       "figures": [common.figure(
                           f"respawn with {args.clients} console clients (spawn med)",
                           f"{med(loaded.spawn_ms()):.2f} ms vs {med(idle.spawn_ms()):.2f} idle",
                           ratio=f"{spawn_ratio:.2f}x", target=f"<= {TARGET}x",
                           met=spawn_ratio <= TARGET)]}, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
