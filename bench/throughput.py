"""Throughput of one worker pool under each arrangement, side by side, in one run.

The same N worker processes (default 2) serve HTTP/1.1 keep-alive on 127.0.0.1 and
`wrk` loads them, one arrangement at a time, in interleaved rounds:

  direct      the physical limit: this benchmark binds one listening socket itself
              (backlog 2048, like sockvisor's and Circus's default) and starts the N
              workers with it as an inherited fd; no supervisor.  Exactly the kernel
              path a socket-holding supervisor gives its workers.
  reuseport   each worker binds the port itself with SO_REUSEPORT (one accept queue
              per worker, the kernel hashes connections across them); shown for
              reference, the ratios are against `direct`.
  sockvisor   sockvisor holds the socket ([socket:web]) and runs the N workers
              (fd 3, LISTEN_FDS/LISTEN_PID).
  circus      circusd 0.19 holds the socket (use_sockets, `$(circus.sockets.web)`).
  nginx       the alternative users weigh: nginx (1.22, `worker_processes 1`,
              upstream keep-alive) on its own port, proxying to a second `direct`
              pool of N workers.

The worker is a ~50-line Go net/http server (GOMAXPROCS 1 per process), built with
`go build` into the temp directory at the start of each run, so that the workers
are fast enough for the arrangement to matter rather than Python's HTTP parsing.
Without Go (`apt-get install golang-go`), or with `--worker python`, it is a
stdlib-only single-threaded selectors keep-alive loop instead (much slower: the
ratios then mostly say that all arrangements saturate the CPU alike).

Each round runs `wrk` once against every arrangement, in a shuffled order, after one
uncounted warm-up run each (8 rounds of 3 s by default: many short interleaved runs
resist a neighbour's load better than a few long ones).  Reported: median requests/s
over the rounds, its ratio to `direct`'s median (target for sockvisor: >= 0.98), and
the "paired" ratio: the median over rounds of (this run / direct's run in the same
round), with its quartiles.  The verdict: met if the ratio of medians reaches 0.98,
missed if even the upper quartile of the paired ratios is below 0.98 (over at least
5 rounds), else "noise" (this run cannot tell sockvisor from direct).  All arrangements stay
up during the whole run (idle while another one is measured).

    python bench/throughput.py [--workers 2] [--rounds 8] [--duration 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TARGET_RATIO = 0.98
MIN_ROUNDS_TO_MISS = 5      # fewer paired rounds (e.g. --quick) never call it missed

GO_WORKER = r'''// Benchmark worker: a minimal net/http server (keep-alive, "ok\n" to every request).
// Its listening socket: -listen HOST:PORT binds it itself (SO_REUSEPORT), -fd N uses
// an inherited fd (Circus: $(circus.sockets.web); a parent that bound it), and
// otherwise fd 3 by the sd_listen_fds convention (LISTEN_PID must be our pid).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"syscall"
)

const soReusePort = 0xf // SO_REUSEPORT on Linux (not in package syscall)

func main() {
	fd := flag.Int("fd", -1, "inherited listening fd")
	listen := flag.String("listen", "", "bind HOST:PORT itself, with SO_REUSEPORT")
	procs := flag.Int("procs", 1, "GOMAXPROCS")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var ln net.Listener
	var err error
	if *listen != "" {
		lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(s uintptr) {
				serr = syscall.SetsockoptInt(int(s), syscall.SOL_SOCKET, soReusePort, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		ln, err = lc.Listen(context.Background(), "tcp", *listen)
	} else {
		n := *fd
		if n < 0 {
			if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
				fmt.Fprintln(os.Stderr, "worker: LISTEN_PID is not my pid; no socket was passed to me")
				os.Exit(2)
			}
			n = 3
		}
		ln, err = net.FileListener(os.NewFile(uintptr(n), "listener"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	body := []byte("ok\n")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	fmt.Fprintln(os.Stderr, http.Serve(ln, nil))
	os.Exit(1)
}
'''

# The fallback worker: same command line as the Go one (-fd N | -listen H:P | fd 3).
# Not tests/http_worker.py, the worker of every other benchmark and test: that one
# answers one request per connection (HTTP/1.0, Connection: close), and this
# benchmark measures keep-alive throughput, many connections per worker, as the
# Go worker serves them.
PYTHON_WORKER = r'''"""Benchmark worker: minimal HTTP/1.1 keep-alive server, one thread, selectors."""
import os, selectors, socket, sys

def listener():
    args = sys.argv[1:]
    if "-listen" in args:
        host, _, port = args[args.index("-listen") + 1].rpartition(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
        sock.listen(2048)
        return sock
    if "-fd" in args:
        return socket.socket(fileno=int(args[args.index("-fd") + 1]))
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("worker: LISTEN_PID is not my pid; no socket was passed to me")
    return socket.socket(fileno=3)

BODY = b"ok\n"
KEEP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
        % len(BODY)) + BODY
CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
         b"Connection: close\r\n\r\n" % len(BODY)) + BODY

def main():
    lsock = listener()
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    buffers = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(False)
                buffers[conn] = b""
                sel.register(conn, selectors.EVENT_READ, True)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn); buffers.pop(conn, None); conn.close()
                continue
            buf = buffers[conn] + data
            out = []
            close = False
            while b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                lower = head.lower()
                if head.startswith(b"GET ") and (b" http/1.0" in lower.split(b"\r\n")[0]
                                                 and b"keep-alive" not in lower
                                                 or b"connection: close" in lower):
                    close = True
                out.append(CLOSE if close else KEEP)
                if close:
                    break
            buffers[conn] = buf
            try:
                conn.sendall(b"".join(out))      # tiny answers: fits the send buffer
            except OSError:
                close = True
            if close:
                sel.unregister(conn); buffers.pop(conn, None); conn.close()

main()
'''

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream workers {{
        server 127.0.0.1:{backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- the worker

def build_worker(directory: str, kind: str) -> tuple[list[str], str]:
    """(argv prefix of a worker, description); builds the Go one with `go build`."""
    if kind == "auto":
        kind = "go" if shutil.which("go") else "python"
        if kind == "python":
            print("throughput: no `go` found (apt-get install golang-go); using the "
                  "slower stdlib Python worker", file=sys.stderr)
    if kind == "python":
        path = os.path.join(directory, "bench_worker.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(PYTHON_WORKER)
        return [sys.executable, path], f"stdlib Python selectors loop ({sys.executable})"
    source = os.path.join(directory, "worker.go")
    binary = os.path.join(directory, "bench-http-worker")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(GO_WORKER)
    env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="0")
    if not env.get("HOME") and not env.get("GOCACHE"):
        env["GOCACHE"] = os.path.join(directory, "go-cache")
    result = subprocess.run(["go", "build", "-o", binary, source], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"go build failed:\n{result.stdout}{result.stderr}")
    version = subprocess.run(["go", "version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    return [binary], f"Go net/http, GOMAXPROCS 1 ({version})"


# --------------------------------------------------------------------------- arrangements

def http_ok(port: int, timeout: float = 1.0) -> bool:
    with socket.create_connection((common.HOST, port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


@dataclass
class Arrangement:
    label: str
    note: str
    start: Callable[["Arrangement"], None]
    port: int = 0
    runs: list[dict[str, object]] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    supervisor: common.Supervised | None = None
    sockets: list[socket.socket] = field(default_factory=list)
    broken: str = ""

    def stop(self) -> None:
        if self.supervisor is not None:
            common.close_control(self.supervisor)
            self.supervisor.stop()
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for sock in self.sockets:
            sock.close()


class Bench:
    def __init__(self, args: argparse.Namespace, directory: str, worker: list[str]):
        self.args, self.directory, self.worker = args, directory, worker
        self.logs: dict[str, str] = {}

    def _log(self, name: str):
        path = os.path.join(self.directory, f"{name}.log")
        self.logs[name] = path
        return open(path, "ab")

    def _wait(self, what: str, condition: Callable[[], object], timeout: float = 20.0) -> None:
        common.wait_for(condition, timeout, interval=0.02, what=what)

    def _shared_pool(self, arr: Arrangement, name: str) -> int:
        """Bind one socket here and start the N workers on it (inherited fd)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((common.HOST, 0))
        sock.listen(2048)
        sock.set_inheritable(True)
        arr.sockets.append(sock)
        fd = sock.fileno()
        with self._log(name) as log:
            for _ in range(self.args.workers):
                arr.processes.append(subprocess.Popen(
                    self.worker + ["-fd", str(fd), "-procs", "1"], pass_fds=(fd,),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        port = sock.getsockname()[1]
        self._wait(f"{name} workers", lambda: self._alive(arr) and http_ok(port))
        return port

    def _alive(self, arr: Arrangement) -> bool:
        dead = [p for p in arr.processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{arr.label}: a worker exited with {dead[0].returncode}")
        return True

    def start_direct(self, arr: Arrangement) -> None:
        arr.port = self._shared_pool(arr, "direct")

    def start_reuseport(self, arr: Arrangement) -> None:
        arr.port = common.free_port()
        with self._log("reuseport") as log:
            for _ in range(self.args.workers):
                arr.processes.append(subprocess.Popen(
                    self.worker + ["-listen", f"{common.HOST}:{arr.port}", "-procs", "1"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))

        def listening() -> bool:
            self._alive(arr)
            for proc in arr.processes:
                conns = common.psutil.Process(proc.pid).net_connections(kind="tcp")
                if not any(c.status == "LISTEN" and c.laddr.port == arr.port for c in conns):
                    return False
            return http_ok(arr.port)
        self._wait("reuseport workers", listening)

    def _ready_pool(self, sup: common.Supervised) -> bool:
        n = self.args.workers
        if sup.kind == "sockvisor":
            reply = common.control_call(sup, "status", {"name": "web"}, timeout=2.0)
            if reply["watcher"]["ready"] != n:  # type: ignore[index]
                return False
        else:
            reply = common.control_call(sup, "list", {"name": "web"}, timeout=2.0)
            if len(reply["pids"]) != n:  # type: ignore[arg-type]
                return False
        return http_ok(sup.port)

    def start_sockvisor(self, arr: Arrangement) -> None:
        directory = os.path.join(self.directory, "sockvisor")
        os.mkdir(directory)
        arr.port = common.free_port()
        sections = {
            "sockvisor": {"loglevel": "warning",
                          "endpoint": f"ipc://{directory}/sockvisor-control",
                          "pubsub_endpoint": f"ipc://{directory}/sockvisor-events"},
            "socket:web": {"host": common.HOST, "port": arr.port},
            "watcher:web": {"cmd": " ".join(self.worker + ["-procs", "1"]),
                            "numprocesses": self.args.workers, "sockets": "web",
                            "graceful_timeout": 5}}
        arr.supervisor = common.launch_supervisor("sockvisor", directory, sections,
                                                  port=arr.port, ready=self._ready_pool)

    def start_circus(self, arr: Arrangement) -> None:
        directory = os.path.join(self.directory, "circus")
        os.mkdir(directory)
        arr.port = common.free_port()
        sections = {
            "circus": {"endpoint": f"ipc://{directory}/circus-control",
                       "pubsub_endpoint": f"ipc://{directory}/circus-pubsub",
                       "statsd": "False"},
            "socket:web": {"host": common.HOST, "port": arr.port},
            "watcher:web": {"cmd": self.worker[0],
                            "args": " ".join(self.worker[1:] + [
                                "-fd", "$(circus.sockets.web)", "-procs", "1"]),
                            "numprocesses": self.args.workers, "use_sockets": "True",
                            "graceful_timeout": 5}}
        arr.supervisor = common.launch_supervisor("circus", directory, sections,
                                                  port=arr.port, ready=self._ready_pool)

    def start_nginx(self, arr: Arrangement) -> None:
        backend = self._shared_pool(arr, "nginx-backend")
        directory = os.path.join(self.directory, "nginx")
        os.mkdir(directory)
        arr.port = common.free_port()
        conf = os.path.join(directory, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(NGINX_CONF.format(d=directory, backend=backend, port=arr.port))
        with self._log("nginx") as log:
            arr.processes.insert(0, subprocess.Popen(
                [self.args.nginx, "-p", directory, "-c", conf, "-e",
                 os.path.join(directory, "nginx-error.log")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        self._wait("nginx", lambda: self._alive(arr) and http_ok(arr.port))


# --------------------------------------------------------------------------- wrk

WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")
WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_LATENCY = re.compile(r"Latency\s+([\d.]+)(\w+)")

PROFILES = {
    # wrk's connections are opened in a burst and kept: what a load balancer or a
    # busy client pool does.  Accepting is done once; the request loop dominates.
    "keepalive": [],
    # a new connection per request: every request goes through the accept queue.
    "close": ["-H", "Connection: close"],
}


def run_wrk(args: argparse.Namespace, port: int, duration: int, profile: str = "keepalive",
            sample: Callable[[], object] | None = None) -> dict[str, object]:
    """One wrk run; `sample()` is called half-way through (its result: "sample")."""
    argv = (["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{duration}s",
             "--timeout", "2s"] + PROFILES[profile] + [f"http://{common.HOST}:{port}/"])
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = None
    try:
        if sample is not None:
            time.sleep(duration / 2)
            with contextlib.suppress(OSError):
                sampled = sample()
        out, err = wrk.communicate(timeout=duration + 30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    rate = WRK_RATE.search(out)
    if wrk.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {out}{err}")
    errors = 0
    if (match := WRK_SOCKET.search(out)):
        errors += sum(int(x) for x in match.groups())
    if (match := WRK_NON2XX.search(out)):
        errors += int(match.group(1))
    total = WRK_TOTAL.search(out)
    latency = WRK_LATENCY.search(out)
    return {"profile": profile, "rps": float(rate.group(1)), "errors": errors,
            "requests": int(total.group(1)) if total else None,
            "latency_avg": "".join(latency.groups()) if latency else None,
            "argv": " ".join(shlex_quote(a) for a in argv), "sample": sampled}


def shlex_quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


def worker_connections(arr: Arrangement) -> list[int]:
    """Sockets each worker holds (listening one included): how connections spread."""
    pids = ([p.pid for p in arr.processes] if arr.supervisor is None
            else common.children(arr.supervisor.pid))
    counts = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        count = 0
        for fd in fds:
            with contextlib.suppress(OSError):   # closed meanwhile
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        counts.append(count)
    return counts


# --------------------------------------------------------------------------- main

def summarise(arrangements: list[Arrangement], profile: str
              ) -> tuple[list[list[object]], dict[str, dict[str, float]]]:
    direct = next(a for a in arrangements if a.label == "direct")
    direct_runs = {r["round"]: float(r["rps"]) for r in direct.runs  # type: ignore[arg-type]
                   if r["profile"] == profile}
    ref = common.median(list(direct_runs.values()))
    rows, stats = [], {}
    for arr in arrangements:
        runs = [r for r in arr.runs if r["profile"] == profile]
        rates = [float(r["rps"]) for r in runs]  # type: ignore[arg-type]
        paired = [float(r["rps"]) / direct_runs[r["round"]]  # type: ignore[arg-type]
                  for r in runs if r["round"] in direct_runs]
        med = common.median(rates)
        ratio = med / ref if rates and ref == ref else float("nan")
        stats[arr.label] = {"median": med, "ratio": ratio,
                            "paired": common.median(paired),
                            "paired_q1": common.percentile(paired, 25),
                            "paired_q3": common.percentile(paired, 75),
                            "rounds": len(paired)}
        errors = sum(int(r["errors"]) for r in runs)  # type: ignore[arg-type]
        spread = [r.get("sample") for r in runs if r.get("sample")]
        rows.append([arr.label, len(rates), f"{med:,.0f}",
                     f"{min(rates):,.0f}" if rates else "-",
                     f"{max(rates):,.0f}" if rates else "-",
                     f"{ratio:.3f}",
                     f"{common.median(paired):.3f}" + (
                         f" [{common.percentile(paired, 25):.2f}-"
                         f"{common.percentile(paired, 75):.2f}]"
                         if arr.label != "direct" else ""), errors,
                     "/".join(str(c) for c in spread[-1]) if spread else "-"])
    return rows, stats


def verdict(stats: dict[str, float]) -> bool | str | None:
    """Met if the ratio of medians reaches the target; missed if even the upper
    quartile of the per-round paired ratios is below it (over at least
    MIN_ROUNDS_TO_MISS rounds); otherwise the run cannot tell the two apart from
    its own noise."""
    ratio = stats["ratio"]
    if ratio != ratio:
        return None
    if ratio >= TARGET_RATIO:
        return True
    if stats["paired_q3"] < TARGET_RATIO and stats["rounds"] >= MIN_ROUNDS_TO_MISS:
        return False
    return "noise"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Throughput of N workers: direct, SO_REUSEPORT, sockvisor, Circus, "
                    "nginx (wrk on 127.0.0.1).")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rounds", type=int, default=8, help="counted wrk runs per "
                        "arrangement and profile (default 8)")
    parser.add_argument("--duration", type=int, default=3,
                        help="whole seconds per wrk run (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="whole seconds of the uncounted first run (default 1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--profile", action="append", choices=tuple(PROFILES),
                        help="keepalive (wrk's connections kept open) and/or close (a "
                             "new connection per request); repeatable, default both")
    parser.add_argument("--worker", choices=("auto", "go", "python"), default="auto",
                        help="the worker: Go net/http (default when `go` exists) or the "
                             "stdlib Python loop")
    parser.add_argument("--only", action="append", metavar="ARRANGEMENT",
                        choices=("direct", "reuseport", "sockvisor", "circus", "nginx"),
                        help="run only these (repeatable; direct is always included)")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 2 s, keepalive only")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="raw results to PATH ('-': stdout)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 2, 1
        args.profile = args.profile or ["keepalive"]
    args.profile = args.profile or list(PROFILES)
    if min(args.workers, args.rounds, args.duration, args.warmup) < 1:
        parser.error("--workers, --rounds, --duration and --warmup must be at least 1")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    out = sys.stderr if args.json == "-" else sys.stdout
    machine = common.machine_info()
    wanted = set(args.only or ("direct", "reuseport", "sockvisor", "circus", "nginx"))
    wanted.add("direct")
    if "nginx" in wanted and not os.path.exists(args.nginx):
        print(f"throughput: no nginx at {args.nginx}; skipping that arrangement",
              file=sys.stderr)
        wanted.discard("nginx")

    began = time.monotonic()
    arrangements: list[Arrangement] = []
    worker_note = ""
    worker_prefix: list[str] = []
    with common.temp_directory(prefix="sockvisor-throughput-", keep=args.keep) as directory:
        try:
            worker_prefix, worker_note = build_worker(directory, args.worker)
            bench = Bench(args, directory, worker_prefix)
            n = args.workers
            table = [
                ("direct", f"{n} workers on one socket bound by their parent (no supervisor)",
                 bench.start_direct),
                ("reuseport", f"{n} workers, each binding the port with SO_REUSEPORT",
                 bench.start_reuseport),
                ("sockvisor", f"{n} workers on the socket sockvisor holds (fd 3)",
                 bench.start_sockvisor),
                ("circus", f"{n} workers on the socket circusd holds "
                           "($(circus.sockets.web))", bench.start_circus),
                ("nginx", f"nginx (1 worker, upstream keepalive) -> {n} direct workers",
                 bench.start_nginx),
            ]
            for label, note, start in table:
                if label not in wanted:
                    continue
                arr = Arrangement(label, note, start)
                arrangements.append(arr)
                start(arr)
            runs = len(arrangements) * len(args.profile)
            total = runs * (args.warmup + args.rounds * args.duration)
            print(f"throughput: {len(arrangements)} arrangements x {len(args.profile)} "
                  f"profiles x {args.rounds} x {args.duration}s; about {total / 60:.1f} min; "
                  f"seed {seed}", file=sys.stderr, flush=True)
            for profile in args.profile:
                for arr in arrangements:
                    run_wrk(args, arr.port, args.warmup, profile)
            for round_no in range(args.rounds):
                for profile in args.profile:
                    order = [a for a in arrangements if not a.broken]
                    rng.shuffle(order)
                    for arr in order:
                        try:
                            run = run_wrk(args, arr.port, args.duration, profile,
                                          sample=lambda: worker_connections(arr))
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            arr.broken = str(exc)
                            print(f"throughput: {arr.label}: {exc}", file=sys.stderr)
                            continue
                        run["round"] = round_no
                        arr.runs.append(run)
        finally:
            for arr in arrangements:
                arr.stop()
            if worker_prefix:
                for pid in common.processes_with_argv_prefix(worker_prefix):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if args.keep:
                print(f"throughput: configs and logs kept in {directory}", file=sys.stderr)
    elapsed = time.monotonic() - began

    headers = ["arrangement", "runs", "median req/s", "min", "max", "vs direct",
               "paired", "errors", "sockets/worker"]
    print(f"throughput: {args.workers} workers, wrk -t{args.wrk_threads} "
          f"-c{args.connections} -d{args.duration}s on 127.0.0.1, {args.rounds} "
          "interleaved rounds", file=out)
    print(f"worker: {worker_note}", file=out)
    print(f"machine: nproc {machine['nproc']}, Python {machine['python']}, circus "
          f"{machine['circus']}, sockvisor {machine['sockvisor']}"
          f"{' (' + str(machine['sockvisor_commit']) + ')' if 'sockvisor_commit' in machine else ''}"
          f", kernel {machine['kernel']}, load {machine['loadavg']}", file=out)
    figures, summaries = [], {}
    for profile in args.profile:
        rows, stats = summarise(arrangements, profile)
        summaries[profile] = stats
        print(f"\nprofile {profile}"
              f"{' (wrk -H ' + repr(PROFILES[profile][1]) + ')' if PROFILES[profile] else ''}",
              file=out)
        print(common.format_table(headers, rows), file=out)
        if "sockvisor" in stats:
            sv, ref = stats["sockvisor"], stats["direct"]
            cc, ng = stats.get("circus"), stats.get("nginx")
            others = [f"direct {ref['median']:,.0f}"]
            if ng:
                others.append(f"nginx {ng['median']:,.0f} ({ng['ratio']:.2f} of direct)")
            if "reuseport" in stats:
                others.append(f"reuseport {stats['reuseport']['median']:,.0f} "
                              f"({stats['reuseport']['ratio']:.2f})")
            ratio = sv["ratio"]
            others.insert(0, f"paired {sv['paired']:.3f} "
                             f"[{sv['paired_q1']:.2f}-{sv['paired_q3']:.2f}]")
            if cc:
                others.insert(1, f"circus/direct {cc['ratio']:.3f}")
            figures.append(common.figure(
                f"throughput {profile}, {args.workers} workers (req/s)",
                f"{sv['median']:,.0f}", f"{cc['median']:,.0f}" if cc else "",
                f"sv/direct {ratio:.3f}", f"sockvisor/direct >= {TARGET_RATIO}",
                verdict(sv),
                other="; ".join(others)))
    print("", file=out)
    print("vs direct = median / direct's median; paired = median over rounds of "
          "(this run / direct's run in the same round) [its quartiles]\nerrors = wrk socket errors + "
          "non-2xx answers; sockets/worker = sockets each worker process held half-way "
          f"through the last run (listening socket included; nginx's first)\n{elapsed:.0f}s in all; "
          "shared machine, expect noise", file=out)
    for arr in arrangements:
        if arr.broken:
            print(f"NOTE {arr.label}: stopped early: {arr.broken}", file=out)

    if args.json:
        dump = {"benchmark": "throughput", "machine": machine, "seed": seed,
                "elapsed_s": round(elapsed, 1), "worker": worker_note,
                "settings": {k: v for k, v in vars(args).items() if k != "json"},
                "figures": figures, "summary": summaries,
                "arrangements": [{"label": a.label, "what": a.note, "broken": a.broken,
                                  "runs": a.runs} for a in arrangements]}
        text = json.dumps(dump, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0 if not any(a.broken for a in arrangements) else 1


if __name__ == "__main__":
    sys.exit(main())
