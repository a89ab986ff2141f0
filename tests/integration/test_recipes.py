"""The README's recipes, run: gunicorn, uvicorn, a Go net/http server, and what a
keep-alive client sees during a reload (issue 10, section 1).

Each test runs the recipe's config (port 0, an ipc endpoint in tmp_path) with the
real server, reloads it under a bounded load and counts failed requests.  The
servers are optional tools: a test whose tool is missing skips and says which
package brings it (pip `gunicorn`, `uvicorn`; Debian `golang-go`).  The Go server
is one small file, built once per session.

gunicorn is also where the settle rule comes from: without `--preload` its
master says READY=1 before its workers import the app, so a release with a
broken app is "ready" and then halts; `ready_settle` is what keeps the old
workers.  With `--preload` the app is imported before READY=1 and the reload
fails at once.  Both are tested, with a real syntax error.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from control_helpers import Load, control, ctl, worker_pids

pytestmark = pytest.mark.timeout(90)

WSGI_APP = """
import json, os

def app(environ, start_response):
    # The gunicorn master is sockvisor's worker: answer with its pid.
    body = json.dumps({"pid": os.getppid(), "version": VERSION}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_APP = """
import json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

GO_SERVER = """
// A net/http server on the socket sockvisor passes (sd_listen_fds: fd 3), READY=1
// to $NOTIFY_SOCKET once it serves, graceful Shutdown on SIGTERM.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		fmt.Fprintln(os.Stderr, "expected one socket in LISTEN_FDS")
		os.Exit(2)
	}
	listener, err := net.FileListener(os.NewFile(3, "web"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"pid": %d}`, os.Getpid())
	})}
	go func() {
		if err := server.Serve(listener); err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}()
	if address := os.Getenv("NOTIFY_SOCKET"); address != "" {
		if conn, err := net.Dial("unixgram", address); err == nil {
			conn.Write([]byte("READY=1"))
			conn.Close()
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server.Shutdown(ctx)
}
"""


def needs_module(name: str):
    return pytest.mark.skipif(
        subprocess.run([sys.executable, "-c", f"import {name}"],
                       capture_output=True).returncode != 0,
        reason=f"{name} is not installed (pip install {name})")


@pytest.fixture(scope="session")
def go_server(tmp_path_factory) -> Path:
    """The Go server, built once per session (skips without a Go toolchain)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (apt-get install golang-go)")
    directory = tmp_path_factory.mktemp("go-server")
    source = directory / "main.go"
    source.write_text(GO_SERVER.lstrip())
    binary = directory / "server"
    # One file, no module; the toolchain's own prebuilt standard library (Debian's
    # golang-go ships it: CGO_ENABLED=0 would rebuild net/http, 30 s instead of 3).
    env = {**os.environ, "GO111MODULE": "off",
           "GOCACHE": str(tmp_path_factory.getbasetemp() / "go-cache")}
    result = subprocess.run([go, "build", "-o", str(binary), str(source)], cwd=directory,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return binary


def reload_under_load(sv, client, port: int, name: str = "web", *, expect: int = 0):
    """`sockvisorctl reload` while 3 clients send requests; the load and the result."""
    with Load(port, threads=3, max_requests=3000, pause=0.005) as load:
        result = ctl(sv, "reload", name)
        assert result.returncode == expect, (result.stdout, result.stderr,
                                             sv.describe())
    assert load.snapshot(), "the load sent nothing"
    assert load.failures() == [], load.failures()[:5]
    return load, result


# --------------------------------------------------------------------------- gunicorn

@needs_module("gunicorn")
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gunicorn_recipe(sockvisor, tmp_path, preload):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app = app_dir / "app.py"
    app.write_text("VERSION = 1\n" + WSGI_APP)
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0
        blocking = false

        [watcher:web]
        cmd = {sys.executable} -m gunicorn {"--preload" if preload else ""} --workers 2 --graceful-timeout 5 app:app
        working_dir = {app_dir}
        sockets = web
        ready = notify
        {"" if preload else "ready_settle = 3"}
        graceful_timeout = 10
        """)
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 1, timeout=30)
        sv.wait_answering(port, worker_pids(before))

        # A new release: replaced under load, no request lost.
        app.write_text("VERSION = 2\n" + WSGI_APP)
        reload_under_load(sv, client, port)
        good = client.wait_ready("web", 1, generation=before["generation"] + 1)
        sv.wait_answering(port, worker_pids(good))
        assert sv.http_get(port)["version"] == 2

        # A release with a syntax error: the reload fails and version 2 keeps serving.
        app.write_text("VERSION = 3\ndef broken(:\n" + WSGI_APP)
        _, result = reload_under_load(sv, client, port, expect=1)
        assert "aborted" in result.stderr, result.stderr
        if not preload:   # READY=1 came, then the master halted: the settle rule
            assert "ready_settle" in result.stderr, result.stderr
        after = client.status("web")
        assert worker_pids(after) == worker_pids(good), after
        assert after["state"] == "active" and after["generation"] == good["generation"]
        assert sv.http_get(port)["version"] == 2


# --------------------------------------------------------------------------- uvicorn

@needs_module("uvicorn")
def test_uvicorn_recipe(sockvisor, tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(ASGI_APP)
    sv = sockvisor(f"""
        [socket:web]
        host = 127.0.0.1
        port = 0
        blocking = false

        [watcher:web]
        cmd = {sys.executable} -m uvicorn --fd $(sockvisor.sockets.web) --log-level warning app:app
        working_dir = {app_dir}
        sockets = web
        numprocesses = 2
        ready_settle = 2
        graceful_timeout = 10
        """)
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2, timeout=30)
        sv.wait_answering(port, worker_pids(before))
        reload_under_load(sv, client, port)
        after = client.wait_ready("web", 2, generation=before["generation"] + 1)
        assert not worker_pids(after) & worker_pids(before)
        sv.wait_answering(port, worker_pids(after))


# --------------------------------------------------------------------------- Go

def go_config(binary: Path) -> str:
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = 0
        blocking = false

        [watcher:web]
        cmd = {binary}
        sockets = web
        numprocesses = 2
        ready = notify
        graceful_timeout = 10
        """


def test_go_net_http_recipe(sockvisor, go_server):
    sv = sockvisor(go_config(go_server))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        sv.wait_answering(port, worker_pids(before))
        reload_under_load(sv, client, port)
        after = client.wait_ready("web", 2, generation=before["generation"] + 1)
        assert not worker_pids(after) & worker_pids(before)
        sv.wait_answering(port, worker_pids(after))


class KeepAliveClient:
    """Requests over one persistent HTTP/1.1 connection; a request that fails
    because the server closed the connection is retried once on a new one, as
    HTTP clients do for idempotent requests (Go's Transport, urllib3's Retry)."""

    RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                 ConnectionAbortedError, http.client.BadStatusLine)

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.pids: list[int] = []
        self.retried = 0
        self.failures: list[str] = []

    def get(self) -> None:
        import json
        for attempt in (1, 2):
            try:
                self.connection.request("GET", "/")
                response = self.connection.getresponse()
                self.pids.append(json.loads(response.read())["pid"])
                return
            except self.RETRYABLE as exc:
                self.connection.close()   # the next request opens a new connection
                if attempt == 2:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.retried += 1
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.connection.close()
                return


def test_keep_alive_clients_during_a_reload(sockvisor, go_server):
    """What the README promises and no more: an old worker closes its idle
    keep-alive connections when it retires, so a client may find its connection
    closed as it sends; retried once on a new connection, every request succeeds,
    and the clients end up on the new generation."""
    sv = sockvisor(go_config(go_server))
    with control(sv) as client:
        port = client.port("web")
        before = client.wait_ready("web", 2)
        clients = [KeepAliveClient(port) for _ in range(3)]
        stop = threading.Event()
        sent = [0]

        def run(keep_alive: KeepAliveClient) -> None:
            while not stop.is_set() and len(keep_alive.pids) < 5000:
                keep_alive.get()
                sent[0] += 1
                stop.wait(0.002)
        threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        try:
            result = ctl(sv, "reload", "web")
            assert result.returncode == 0, result.stderr
            after = client.wait_ready("web", 2, generation=before["generation"] + 1)
            # Every client is answered by the new generation now.
            from conftest import wait_for
            wait_for(lambda: all(c.pids and c.pids[-1] in worker_pids(after)
                                 for c in clients), 10)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert not [f for c in clients for f in c.failures], [c.failures for c in clients]
        assert all(set(c.pids) & worker_pids(before) for c in clients)
        print(f"keep-alive: {sent[0]} requests, "
              f"{sum(c.retried for c in clients)} retried on a new connection")
