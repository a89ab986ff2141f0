"""End to end: the web console's HTTP API, token, event stream and /metrics.

The real sockvisor with `http = 127.0.0.1:0` (or a unix socket, or a
non-loopback address with the operator's token file).  Replies are parsed
(JSON, and /metrics by prometheus_client's own parser), and compared with what
the ZeroMQ channel says for the same command: one implementation behind both.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from http_helpers import (EventStream, console_token, console_url, get, metric,
                          parse_metrics, post)
from control_helpers import control, ctl

from conftest import _clean_env, wait_for
from sockvisor import paths

pytest.importorskip("prometheus_client", reason="/metrics needs prometheus_client")


def web(scripts, *worker_args: str, numprocesses: int = 2, extra: str = "") -> str:
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py", *worker_args)}
        sockets = web
        numprocesses = {numprocesses}
        graceful_timeout = 2
        {extra}
    """


HTTP = "http = 127.0.0.1:0"


def test_reading_gives_the_control_replies(sockvisor, scripts):
    sv = sockvisor(web(scripts, "--say", "hello-from-worker", extra="stdout = prefix"),
                   globals=HTTP)
    url = console_url(sv)
    assert url.startswith("http://127.0.0.1:")
    with control(sv) as zmq_ctl:
        zmq_status = zmq_ctl.call("status", name="web")["watcher"]
        zmq_sockets = zmq_ctl.call("listsockets")["sockets"]
        zmq_unknown = zmq_ctl.raw("status", name="nope")

    reply = get(url, "/api/watchers/web")
    assert reply.status == 200, reply
    detail = reply.json()["watcher"]
    assert {w["pid"] for w in detail["workers"]} == {w["pid"] for w in zmq_status["workers"]}
    for worker in detail["workers"]:
        assert worker["generation"] == zmq_status["generation"] and worker["ready"] is True
        assert isinstance(worker["uptime"], float) and worker["restarts"] == 0
    assert detail["workers_total"] == 2 and detail["generations"] == {
        str(zmq_status["generation"]): {"workers": 2, "ready": 2}}

    everything = get(url, "/api/watchers").json()
    assert everything["statuses"] == {"web": "active"}
    assert [w["name"] for w in everything["watchers"]] == ["web"]

    sockets = get(url, "/api/sockets").json()["sockets"]
    assert [(s["name"], s["port"]) for s in sockets] == [
        (s["name"], s["port"]) for s in zmq_sockets]
    assert sockets[0]["accept_queue"] == 0 and sockets[0]["accept_queue_limit"] > 0

    # The same error, errno and reason as over ZeroMQ; the HTTP status follows it.
    unknown = get(url, "/api/watchers/nope")
    assert unknown.status == 400
    assert (unknown.json()["errno"], unknown.json()["reason"]) == (
        zmq_unknown["errno"], zmq_unknown["reason"])

    token = console_token(sv)
    logs = wait_for(lambda: (r := get(url, "/api/watchers/web/logs",
                                      token=token).json())["lines"] and r)
    assert logs["captured"] == ["stdout", "stderr"]
    assert "hello-from-worker" in {line["line"] for line in logs["lines"]}

    # Pagination keeps 1,000 workers readable: a page and the total.
    page = get(url, "/api/watchers/web?offset=1&limit=1").json()["watcher"]
    assert len(page["workers"]) == 1 and page["workers_total"] == 2
    assert get(url, "/api/watchers/web?limit=abc").status == 400
    assert get(url, "/no/such/page").status == 404


HOSTILE_READS = (
    "/api/watchers/web/logs?lines=%C2%B2",            # "²": isdigit() says yes, int() no
    "/api/watchers/web/logs?lines=" + "1" * 15000,    # past int()'s digit limit
    "/api/watchers/web?offset=%C2%B2",
    "/api/watchers/web?limit=" + "9" * 15000,
    "/api/watchers/web?offset=1_0",                   # int() would take it
    "/api/watchers/web?limit=%D9%A1",                 # Arabic-Indic one
)


def test_odd_numbers_are_a_400_and_clients_cannot_flood_the_log(sockvisor, scripts):
    """Finding 3: a number in a query is parsed strictly (a 400 naming it, never a
    500), and what any local user can send -- odd numbers, invalid UTF-8 in a
    path, a broken multipart body -- adds at most a few lines to the log,
    none holding the URL."""
    # At info, the default: debug adds one access line per request by design.
    sv = sockvisor(web(scripts, numprocesses=1, extra="stdout = prefix"), globals=HTTP,
                   loglevel="info")
    url = console_url(sv)
    token = console_token(sv)
    for path in HOSTILE_READS:
        reply = get(url, path, token=token)
        assert reply.status == 400, (path[:60], reply)
        reason = reply.json()["reason"]
        assert ("'lines'" in reason or "'offset'" in reason or "'limit'" in reason), reason
        assert len(reason) < 200, reason
    assert get(url, "/api/watchers/web?offset=0&limit=1000", token=token).status == 200
    assert get(url, "/api/watchers/web?limit=1001", token=token).status == 400
    # Numbers in a body: the command's own strict check, a 400 as well.
    for action, body in (("incr", b'{"nb": ' + b"1" * 15000 + b"}"),
                         ("incr", {"nb": "1" * 15000}), ("incr", {"nb": "\u00b2"}),
                         ("decr", {"nb": 1e308}), ("signal", {"signum": "HUP", "pid": "\u00b2"}),
                         ("signal", {"signum": "1" * 5000})):
        reply = post(url, f"/api/watchers/web/{action}", token=token, body=body)
        assert reply.status == 400, (action, reply)
    assert len(sv.worker_pids()) == 1

    broken_multipart = {"Content-Type": "multipart/form-data; boundary=zz",
                        "Authorization": f"Bearer {token}"}
    before = sv.log()
    for round_ in range(100):
        kind = round_ % 4
        if kind == 0:
            get(url, HOSTILE_READS[round_ % len(HOSTILE_READS)])
        elif kind == 1:
            get(url, HOSTILE_READS[round_ % len(HOSTILE_READS)], token=token)
        elif kind == 2:
            get(url, "/api/watchers/%FF%FE" + "x" * 2000)
        else:
            post(url, "/api/watchers/web/restart?" + "q" * 2000,
                 body=b"--zz\r\nnonsense" + b"y" * 2000, headers=broken_multipart)
    # Anything logged for these requests has been written by now: a status
    # request is answered after them on the same loop.
    assert get(url, "/api/watchers").status == 200
    log = sv.log()
    grown = log[len(before):]
    assert log.startswith(before)
    assert grown.count("\n") <= 5 and len(grown) <= 1000, \
        f"{grown.count(chr(10))} log lines, {len(grown)} bytes for 100 hostile requests:\n" \
        f"{grown[-3000:]}"
    assert "1" * 100 not in log and "x" * 100 not in log and "q" * 100 not in log
    assert "lines=" not in log and "Traceback" not in log


def test_worker_output_needs_the_token_state_does_not(sockvisor, scripts):
    """Finding 4: what workers write is as private as the control channel's
    `logs` (endpoint_group only): over HTTP it needs the token, while state,
    sockets, events and /metrics stay open on loopback (issue 12)."""
    secret = "worker-output-4f1c"
    sv = sockvisor(web(scripts, "--say", secret, numprocesses=1, extra="stdout = prefix"),
                   globals=HTTP)
    url = console_url(sv)
    token = console_token(sv)
    with_token = wait_for(lambda: (r := get(url, "/api/watchers/web/logs?lines=50",
                                            token=token)).status == 200
                          and r.json()["lines"] and r)
    assert secret in {line["line"] for line in with_token.json()["lines"]}

    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        refused = get(url, "/api/watchers/web/logs?lines=50", headers=headers)
        assert refused.status == 401, refused
        assert secret.encode() not in refused.body
        assert refused.json()["errno"] == 7
    # Refused before the number is even looked at.
    assert get(url, "/api/watchers/web/logs?lines=%C2%B2").status == 401

    # State stays open, and carries none of the output.
    for path in ("/api/watchers", "/api/watchers/web", "/api/sockets", "/metrics"):
        reply = get(url, path)
        assert reply.status == 200, (path, reply)
        assert secret.encode() not in reply.body, path
    assert get(url, "/api/").json()["read_needs_token"] is False
    stream = EventStream(url)
    try:
        assert stream.status == 200
    finally:
        stream.close()


def test_worker_figures_include_its_children(sockvisor, scripts):
    sv = sockvisor(web(scripts, "--fork-child", numprocesses=1), globals=HTTP)
    url = console_url(sv)
    [pid] = sv.wait_workers(1, "worker.py")

    def sampled() -> dict | None:
        [worker] = get(url, "/api/watchers/web").json()["watcher"]["workers"]
        return worker if worker["processes"] == 2 else None
    worker = wait_for(sampled, 10)
    assert worker["pid"] == pid
    assert worker["rss_bytes"] > 2 * 1024 * 1024 and worker["cpu_seconds"] >= 0


def test_actions_need_the_bearer_token(sockvisor, scripts):
    sv = sockvisor(web(scripts), globals=HTTP)
    url = console_url(sv)
    token = console_token(sv)
    with control(sv) as zmq_ctl:
        generation = zmq_ctl.status("web")["generation"]

    # The token file: 0600 in sockvisor's own 0700 runtime directory, same token.
    directory = paths.runtime_dir(str(sv.conf))
    token_path = os.path.join(directory, "console-token")
    st = os.lstat(token_path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    with open(token_path) as handle:
        assert handle.read().strip() == token
    assert len(token) >= 32

    refused = [post(url, "/api/watchers/web/reload"),
               post(url, "/api/watchers/web/reload", token="x" * len(token)),
               post(url, "/api/watchers/web/reload", headers={"Authorization": token}),
               post(url, f"/api/watchers/web/reload?token={token}"),
               post(url, "/api/watchers/web/reload",
                    headers={"Cookie": f"token={token}"}),
               post(url, "/api/watchers/web/incr", body={"nb": 1})]
    for reply in refused:
        assert reply.status == 401, reply
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.json()["status"] == "error"
    with control(sv) as zmq_ctl:
        assert zmq_ctl.status("web")["generation"] == generation
        assert zmq_ctl.status("web")["numprocesses"] == 2

    done = post(url, "/api/watchers/web/reload", token=token)
    assert done.status == 200, done
    assert done.json()["watcher"]["generation"] == generation + 1
    assert post(url, "/api/watchers/web/incr", token=token, body={"nb": 1}).json()[
        "numprocesses"] == 3
    # Bad properties: the command's own error, as over ZeroMQ.
    bad = post(url, "/api/watchers/web/incr", token=token, body={"nb": "many"})
    assert bad.status == 400 and bad.json()["reason"].startswith(
        "'nb' (the number of workers to add) must be a whole number")

    # Nothing over HTTP decides what runs or as whom.
    for action, body in (("add", {"cmd": "/bin/sh"}), ("set", {"cmd": "/bin/sh"}),
                         ("rm", {}), ("quit", {}), ("reloadconfig", {})):
        reply = post(url, f"/api/watchers/web/{action}", token=token, body=body)
        assert reply.status == 404, (action, reply)
    # Extra properties in an allowed action's body are dropped, not passed on.
    post(url, "/api/watchers/web/restart", token=token,
         body={"cmd": "/bin/false", "uid": 0, "env": {"X": "1"}})
    with control(sv) as zmq_ctl:
        options = zmq_ctl.call("options", name="web")["options"]
        assert "worker.py" in " ".join([options["cmd"], *options["args"]])
        assert "X" not in options["env"]

    # sockvisorctl prints both; the token goes nowhere else.
    assert ctl(sv, "console-token").stdout.strip() == token
    assert ctl(sv, "console").stdout.strip() == url
    assert token not in sv.log() and token not in sv.stdout()


def test_console_token_is_only_for_the_owner_endpoint(sockvisor, scripts, tmp_path):
    """With endpoint_group, the group endpoint may not read the token."""
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    sv = sockvisor(web(scripts, numprocesses=1), globals=f"{HTTP}\nendpoint_group = {group}")
    with control(sv) as group_ctl:   # the shared endpoint (…/ctl)
        reply = group_ctl.raw("console-token")
    assert reply["status"] == "error" and reply["errno"] == 7, reply


def test_a_rebound_host_name_cannot_read(sockvisor, scripts):
    """DNS rebinding: a page at evil.example resolved to 127.0.0.1 sends its own Host."""
    sv = sockvisor(web(scripts, numprocesses=1), globals=HTTP)
    url = console_url(sv)
    assert get(url, "/api/watchers", headers={"Host": "evil.example"}).status == 403
    assert get(url, "/metrics", headers={"Host": "evil.example:80"}).status == 403
    port = url.rstrip("/").rpartition(":")[2]
    assert get(url, "/api/watchers", headers={"Host": f"localhost:{port}"}).status == 200


def test_events_stream_what_the_pub_endpoint_publishes(sockvisor, scripts):
    sv = sockvisor(web(scripts, numprocesses=1), globals=HTTP)
    url = console_url(sv)
    [first] = sv.wait_workers(1, "worker.py")
    stream = EventStream(url)
    try:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type") == "text/event-stream"
        stream.read_event()   # the opening comment: subscribed from here on
        os.kill(first, signal.SIGKILL)
        exited = stream.wait("watcher.web.exit", pid=first)
        assert exited["expected"] is False
        [second] = sv.wait_workers(1, "worker.py", exclude=[first])
        spawned = stream.wait("watcher.web.spawn", pid=second)
        assert spawned["wid"] == 1
    finally:
        stream.close()


def test_metrics_parse_and_count(sockvisor, scripts):
    sv = sockvisor(web(scripts, "--fork-child", numprocesses=2), globals=HTTP)
    url = console_url(sv)
    token = console_token(sv)
    reply = get(url, "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(reply.body.decode())
    assert metric(samples, "sockvisor_watcher_desired_workers", watcher="web") == 2
    assert metric(samples, "sockvisor_watcher_ready_workers", watcher="web") == 2
    assert metric(samples, "sockvisor_watcher_state", watcher="web", state="active") == 1
    assert metric(samples, "sockvisor_watcher_state", watcher="web", state="fatal") == 0
    assert metric(samples, "sockvisor_build_info", version="0.1.0",
                  python=".".join(map(str, sys.version_info[:3]))) == 1
    assert metric(samples, "sockvisor_open_fds") > 3
    assert metric(samples, "sockvisor_resident_memory_bytes") > 1 << 20
    assert metric(samples, "sockvisor_socket_accept_queue", socket="web") == 0

    # A crash is counted as one; a reload as finished, with its duration.
    [victim, _] = sv.wait_workers(2, "worker.py")
    os.kill(victim, signal.SIGKILL)
    sv.wait_workers(2, "worker.py", exclude=[victim])
    assert post(url, "/api/watchers/web/reload", token=token).status == 200

    def counted() -> dict | None:
        # /metrics may be up to a second old (rendered once a second): wait for
        # a page that has seen the reload, and the new workers' children.
        samples = parse_metrics(get(url, "/metrics").body.decode())
        processes = samples.get("sockvisor_worker_processes", {})
        reloads = samples.get("sockvisor_watcher_reloads_total", {}).get(
            (("result", "finished"), ("watcher", "web")))
        return samples if reloads == 1 and len(processes) == 2 and all(
            v == 2 for v in processes.values()) else None
    samples = wait_for(counted, 10)
    assert metric(samples, "sockvisor_watcher_restarts_total", watcher="web",
                  reason="crash") == 1
    assert metric(samples, "sockvisor_watcher_restarts_total", watcher="web",
                  reason="failed_start") == 0
    assert metric(samples, "sockvisor_watcher_reloads_total", watcher="web",
                  result="finished") == 1
    assert metric(samples, "sockvisor_watcher_reload_duration_seconds_count",
                  watcher="web") == 1
    assert 0 < metric(samples, "sockvisor_watcher_reload_duration_seconds_sum",
                      watcher="web") < 30
    # Per worker by wid (bounded), the worker's child included.
    wids = {dict(key)["wid"] for key in samples["sockvisor_worker_resident_memory_bytes"]}
    assert wids <= {"1", "2", "3", "4"} and len(wids) == 2
    total = metric(samples, "sockvisor_watcher_resident_memory_bytes", watcher="web")
    assert total == sum(samples["sockvisor_worker_resident_memory_bytes"].values())


def test_accept_queue_is_seen_in_metrics_and_listsockets(sockvisor, scripts):
    """Workers that never accept: the queue grows with each connection."""
    sv = sockvisor(web(scripts, "--no-serve", numprocesses=1), globals=HTTP)
    url = console_url(sv)
    with control(sv) as zmq_ctl:
        port = zmq_ctl.port("web")
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        samples = parse_metrics(get(url, "/metrics").body.decode())
        assert metric(samples, "sockvisor_socket_accept_queue", socket="web") == 5
        assert metric(samples, "sockvisor_socket_accept_queue_limit", socket="web") >= 5
        listed = ctl(sv, "listsockets")
        assert listed.returncode == 0 and "QUEUED" in listed.stdout
        assert " 5/" in listed.stdout, listed.stdout
    finally:
        for client in clients:
            client.close()


def test_unix_socket_console(sockvisor, scripts, tmp_path):
    path = tmp_path / "console.sock"
    sv = sockvisor(web(scripts, numprocesses=1), globals=f"http = unix:{path}")
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == os.getegid()
    url = f"unix:{path}"
    assert console_url(sv) == url
    assert get(url, "/api/watchers").json()["statuses"] == {"web": "active"}
    assert post(url, "/api/watchers/web/reload").status == 401
    assert post(url, "/api/watchers/web/reload", token=console_token(sv)).status == 200
    sv.stop()
    assert not path.exists()


def test_non_loopback_needs_the_operators_token_for_everything(sockvisor, scripts, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-the-operator\n")
    token_file.chmod(0o600)
    sv = sockvisor(web(scripts, numprocesses=1),
                   globals=f"http = 0.0.0.0:0\nhttp_token_file = {token_file}")
    port = console_url(sv).rstrip("/").rpartition(":")[2]
    url = f"http://127.0.0.1:{port}/"
    for path in ("/api/watchers", "/metrics", "/api/events", "/api/sockets"):
        assert get(url, path).status == 401, path
    assert get(url, "/metrics", token="s3cret-token-of-the-operator").status == 200
    assert get(url, "/api/").json()["read_needs_token"] is True
    assert console_token(sv) == "s3cret-token-of-the-operator"


def test_circus_httpd_on_every_address_needs_the_token_of_each_start(sockvisor, scripts):
    """Circus's `httpd = true` + `httpd_host = 0.0.0.0`: served there, and every
    request needs the bearer token sockvisor made at start (console-token)."""
    sv = sockvisor(web(scripts, numprocesses=1),
                   globals="httpd = true\nhttpd_host = 0.0.0.0\nhttpd_port = 0")
    sv.wait_log(r"httpd_host: 0.0.0.0:0 is not a loopback address: every request")
    port = console_url(sv).rstrip("/").rpartition(":")[2]
    url = f"http://127.0.0.1:{port}/"
    token = console_token(sv)
    assert len(token) >= 32
    for path in ("/api/watchers", "/metrics", "/api/events", "/api/sockets"):
        assert get(url, path).status == 401, path
    assert get(url, "/api/watchers", token=token).status == 200
    assert get(url, "/api/").json()["read_needs_token"] is True


def test_token_file_readable_by_others_stops_start_up(sockvisor, scripts, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-the-operator\n")
    token_file.chmod(0o644)
    sv = sockvisor(web(scripts, numprocesses=1), ready=False,
                   globals=f"http = 127.0.0.1:0\nhttp_token_file = {token_file}")
    assert sv.wait_exit(15) == 3
    assert "http_token_file" in sv.log() and "chmod 600" in sv.log()
    assert sv.worker_pids() == []


def test_console_port_in_use_stops_start_up(sockvisor, scripts):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        sv = sockvisor(web(scripts, numprocesses=1), ready=False,
                       globals=f"http = 127.0.0.1:{busy.getsockname()[1]}")
        assert sv.wait_exit(15) == 3
        assert "cannot serve the web console" in sv.log()
    finally:
        busy.close()


@pytest.mark.timeout(120)
def test_hostile_clients_do_not_stop_control_or_respawn(sockvisor, scripts):
    """Connections that never send a request, an event stream that never reads,
    more connections than the console takes: the ZeroMQ channel still answers
    and a killed worker is still replaced."""
    sv = sockvisor(web(scripts, numprocesses=1, extra="min_uptime = 0\nbackoff_base = 0"),
                   globals=HTTP)
    url = console_url(sv)
    port = int(url.rstrip("/").rpartition(":")[2])
    idle = []
    try:
        for _ in range(300):   # past MAX_CONNECTIONS (256): the rest are closed
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.append(stalled)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        [pid] = sv.wait_workers(1, "worker.py")
        with control(sv) as zmq_ctl:
            for _ in range(20):
                os.kill(pid, signal.SIGKILL)
                [pid] = sv.wait_workers(1, "worker.py", exclude=[pid])
                zmq_ctl.call("status", name="web")
            assert zmq_ctl.status("web")["restarts"] == 20
    finally:
        for client in idle:
            client.close()
    # And the console serves again once they are gone (until it has noticed,
    # a new connection past the limit is closed at once: a reset here).
    def answers() -> bool:
        try:
            return get(url, "/api/watchers", timeout=5).status == 200
        except OSError:
            return False
    wait_for(answers, 10)


MEMBER_CLIENT = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno)
    sys.exit(0)
sock.sendall(f"GET {sys.argv[2]} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.split(b" ", 2)[1].decode())
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: connects as nobody")
def test_unix_socket_console_is_the_endpoint_groups(sockvisor, scripts, world_readable_dir):
    """Finding 4: `http = unix:PATH` with endpoint_group is 0660 with that group
    (set through the O_PATH fd of the file we bound, as sockets.py does): a
    member reads state, another local user cannot even connect."""
    import grp
    import pwd
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs /usr/bin/python3 to run a client as nobody")
    group = next((g for g in ("www-data", "daemon", "bin", "adm") if _has_group(g)), None)
    if group is None:
        pytest.skip("no system group to act as the operator group")
    gid = grp.getgrnam(group).gr_gid
    path = world_readable_dir / "console.sock"
    sv = sockvisor(web(scripts, numprocesses=1),
                   globals=f"http = unix:{path}\nendpoint_group = {group}")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0 and st.st_gid == gid

    nobody = pwd.getpwnam("nobody")

    def as_nobody(extra_groups: list[int], request_path: str) -> str:
        result = subprocess.run(["/usr/bin/python3", "-c", MEMBER_CLIENT, str(path),
                                 request_path], user=nobody.pw_uid, group=nobody.pw_gid,
                                extra_groups=extra_groups, cwd="/", capture_output=True,
                                text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
    assert as_nobody([gid], "/api/watchers") == "200"
    assert as_nobody([gid], "/api/watchers/web/logs") == "401"   # output: the token's
    assert as_nobody([], "/api/watchers") == "refused 13"        # EACCES
    sv.stop()
    assert not path.exists()


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
