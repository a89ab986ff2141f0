"""End to end: `reloadconfig` (and SIGHUP) re-read the INI file and apply the difference.

* A broken file changes nothing; the error names the file, the section, the key.
  Nor does a new socket that cannot be bound: sockets are bound first.
* Added watchers start, removed ones stop, unchanged ones are not touched.
* A changed watcher gets a rolling reload: under a client load, not one request
  fails while the generation changes.
* A socket whose address did not change is never touched: the same socket (the
  same inode behind the same fd of sockvisor) before and after.  A socket whose
  port changed is bound anew: the new port serves, the old one is closed once
  the reload is over.  A backlog change is applied in place (same inode).
* A socket renamed, or moved to the address another one leaves, takes over the
  listening socket already there (same inode); an overlapping address on the
  same port (127.0.0.1:P -> 0.0.0.0:P) is refused, saying what is in the way.
* A new `numprocesses` is a plain scale: the running workers stay.

The workers are the echo worker (`echo_worker_cmd`: tests/http_worker.py
--graceful), which answers with its `$VERSION`, on non-blocking sockets so that SIGTERM lets it finish the request
in hand and exit.
"""

from __future__ import annotations

import signal
import socket
import sys
import textwrap

import psutil
import pytest

from sockvisor.control.protocol import ErrNo

from conftest import free_port, is_gone, wait_for
from control_client_helpers import (Load, call, describe, echo_worker_cmd, endpoint_of,
                                    fd_link, listen_backlog, ok, pids_of, run_ctl,
                                    sockets_of, subscribed, sync_events)


def rewrite(sv, body: str) -> None:
    """Replace everything after the fixture's [sockvisor] section of sv.conf."""
    text = sv.conf.read_text()
    head = text[:text.index("\n\n") + 2]     # [sockvisor] endpoint, loglevel
    sv.conf.write_text(head + textwrap.dedent(body).strip() + "\n")


def web(cmd: str, *, version: str = "1", numprocesses: int = 2, port: int = 0,
        backlog: int | None = None, extra: str = "") -> str:
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = {port}
        blocking = false
        {f"backlog = {backlog}" if backlog else ""}

        [watcher:web]
        cmd = {cmd}
        sockets = web
        numprocesses = {numprocesses}
        graceful_timeout = 3
        env = VERSION={version}
        {extra}
    """


def tcp_listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses `pid` listens on."""
    return {tuple(c.laddr) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_broken_config_changes_nothing(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd))
    endpoint = endpoint_of(sv)
    pids = sv.wait_workers(2, "echo_worker")
    sockets = sockets_of(endpoint)
    link = fd_link(sv.pid, sockets["web"]["fd"])
    good = sv.conf.read_text()

    rewrite(sv, web(cmd, version="2").replace("numprocesses = 2", "numprocesses = many"))
    result = run_ctl("--endpoint", endpoint, "reloadconfig")
    assert result.returncode == 1, describe(result)
    assert str(sv.conf) in result.stderr
    assert "[watcher:web]" in result.stderr and "numprocesses" in result.stderr
    assert "many" in result.stderr
    reply = call(endpoint, "reloadconfig")
    assert reply["status"] == "error" and reply["errno"] == ErrNo.MESSAGE_ERROR

    # The same over SIGHUP: an error in the log, nothing else.
    # (A misspelt key: one Circus would ignore with no option close to it only
    # warns, as Circus ignores it.)
    rewrite(sv, web(cmd) + "\n[socket:api]\nport = 0\nbaklog = 1\n")
    sv.signal(signal.SIGHUP)
    sv.wait_log(r"SIGHUP: config not reloaded: .*\[socket:api\]: baklog")

    assert sv.proc.poll() is None
    assert sorted(pids_of(endpoint, "web")) == pids
    assert sockets_of(endpoint) == sockets
    assert fd_link(sv.pid, sockets["web"]["fd"]) == link
    assert {sv.http_get(sockets["web"]["port"])["version"] for _ in range(4)} == {"1"}

    # Once fixed, it applies (and nothing had been half-applied before).
    sv.conf.write_text(good)
    assert ok(endpoint, "reloadconfig")["unchanged"] == ["web"]


def test_added_watcher_starts_and_removed_one_stops(sockvisor, tmp_path, scripts):
    cmd = echo_worker_cmd(tmp_path / "w")
    idle = scripts.cmd("worker.py", "--no-serve")
    sv = sockvisor(web(cmd) + f"""
        [watcher:old]
        cmd = {idle} --say old
        graceful_timeout = 1
    """)
    endpoint = endpoint_of(sv)
    web_pids = sorted(pids_of(endpoint, "web"))
    [old_pid] = pids_of(endpoint, "old")

    rewrite(sv, web(cmd) + f"""
        [watcher:new]
        cmd = {idle} --say new
        numprocesses = 2
        graceful_timeout = 1
    """)
    reply = ok(endpoint, "reloadconfig")
    assert reply["added"] == ["new"] and reply["removed"] == ["old"]
    assert reply["unchanged"] == ["web"] and reply["reloaded"] == []
    assert ok(endpoint, "list")["watchers"] == ["new", "web"]
    assert is_gone(old_pid)
    new_pids = pids_of(endpoint, "new")
    assert len(new_pids) == 2 and all(not is_gone(pid) for pid in new_pids)
    assert ok(endpoint, "status", {"name": "new"})["status"] == "active"
    assert sorted(pids_of(endpoint, "web")) == web_pids

    # SIGHUP does the same: remove `new` again.
    rewrite(sv, web(cmd))
    sv.signal(signal.SIGHUP)
    wait_for(lambda: ok(endpoint, "list")["watchers"] == ["web"], 10,
             message=lambda: f"`new` to be removed\n{sv.describe()}")
    wait_for(lambda: all(is_gone(pid) for pid in new_pids), 10)
    assert sorted(pids_of(endpoint, "web")) == web_pids


@pytest.mark.timeout(60)
def test_changed_watcher_rolls_without_a_failed_request(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd, version="1"))
    endpoint = endpoint_of(sv)
    with subscribed(f"{endpoint}.events") as events:
        sync_events(events, endpoint, "web")
        old_pids = set(sv.wait_workers(2, "echo_worker"))
        sockets = sockets_of(endpoint)
        port = sockets["web"]["port"]
        link = fd_link(sv.pid, sockets["web"]["fd"])
        events.drain()
        mark = len(events.seen)

        rewrite(sv, web(cmd, version="2"))
        with Load(port, threads=3) as load:
            wait_for(lambda: load.count() >= 20, 20, message="the load to get going")
            reply = ok(endpoint, "reloadconfig", timeout=60)
            during = load.count()
            wait_for(lambda: load.count() >= during + 20, 20,
                     message="requests after the reload")
        order = [(topic.rpartition(".")[2], data["pid"])
                 for topic, data in events.drain()[mark:]
                 if topic in ("watcher.web.ready", "watcher.web.exit")]

    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
    assert reply["reloaded"] == ["web"]
    versions = load.versions()
    assert versions[0] == "1" and versions[-1] == "2", versions
    # Once the reply came, only the new generation answers.  (A request per
    # client thread may have been answered before and counted after.)
    assert set(versions[during + 3:]) == {"2"}, versions[during - 5:]
    new_pids = set(pids_of(endpoint, "web"))
    assert len(new_pids) == 2 and not new_pids & old_pids
    assert all(is_gone(pid) for pid in old_pids)
    answered = {answer["pid"] for answer in load.results}
    assert answered & old_pids and answered & new_pids
    # Rolling: every new worker was ready before the first old one exited.
    exits = [i for i, (kind, pid) in enumerate(order) if kind == "exit" and pid in old_pids]
    readies = [i for i, (kind, pid) in enumerate(order) if kind == "ready" and pid in new_pids]
    assert len(exits) == 2 and len(readies) == 2, order
    assert max(readies) < min(exits), order
    # The socket itself was not touched.
    assert sockets_of(endpoint) == sockets
    assert fd_link(sv.pid, sockets["web"]["fd"]) == link


@pytest.mark.timeout(60)
def test_moved_socket_is_bound_anew_and_unchanged_socket_is_kept(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    api = f"""
        [socket:api]
        port = 0
        blocking = false

        [watcher:api]
        cmd = {cmd}
        sockets = api
        graceful_timeout = 3
    """
    sv = sockvisor(web(cmd) + api)
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)
    old_port = before["web"]["port"]
    web_link = fd_link(sv.pid, before["web"]["fd"])
    api_link = fd_link(sv.pid, before["api"]["fd"])
    api_pids = pids_of(endpoint, "api")
    web_pids = set(pids_of(endpoint, "web"))

    with socket.socket() as probe:           # a port nothing listens on now
        probe.bind(("127.0.0.1", 0))
        new_port = probe.getsockname()[1]
    rewrite(sv, web(cmd, port=new_port) + api)
    reply = ok(endpoint, "reloadconfig", timeout=60)
    assert reply["sockets_changed"] == ["web"] and reply["reloaded"] == ["web"]
    assert reply["unchanged"] == ["api"]

    after = sockets_of(endpoint)
    assert after["web"]["port"] == new_port
    assert fd_link(sv.pid, after["web"]["fd"]) != web_link
    answer = sv.http_get(new_port)
    assert answer["port"] == new_port and answer["pid"] not in web_pids
    assert refused(old_port), "the old port still accepts after the reload"
    assert web_link not in {fd_link(sv.pid, entry["fd"]) for entry in after.values()}

    # The other socket: same fd, same inode, same workers, still serving.
    assert after["api"] == before["api"]
    assert fd_link(sv.pid, after["api"]["fd"]) == api_link
    assert pids_of(endpoint, "api") == api_pids
    assert sv.http_get(after["api"]["port"])["pid"] in api_pids


def test_backlog_change_is_applied_in_place(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd, backlog=16))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)["web"]
    link = fd_link(sv.pid, before["fd"])
    pids = sorted(pids_of(endpoint, "web"))
    assert before["backlog"] == 16

    rewrite(sv, web(cmd, backlog=64))
    reply = ok(endpoint, "reloadconfig")
    assert reply["sockets_changed"] == [] and reply["unchanged"] == ["web"]
    after = sockets_of(endpoint)["web"]
    assert after["backlog"] == 64
    assert (after["fd"], after["port"]) == (before["fd"], before["port"])
    assert fd_link(sv.pid, after["fd"]) == link
    assert sorted(pids_of(endpoint, "web")) == pids
    assert sv.http_get(after["port"])["pid"] in pids

    backlog = listen_backlog(after["port"])
    if backlog is None:
        pytest.skip("`ss` is not available: the kernel's backlog was not checked "
                    "(everything else was)")
    assert backlog == 64


def test_numprocesses_change_just_scales(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd, numprocesses=2))
    endpoint = endpoint_of(sv)
    pids = set(sv.wait_workers(2, "echo_worker"))
    generation = ok(endpoint, "status", {"name": "web"})["watcher"]["generation"]

    rewrite(sv, web(cmd, numprocesses=3))
    reply = ok(endpoint, "reloadconfig")
    assert reply["scaled"] == ["web"] and reply["reloaded"] == []
    grown = set(sv.wait_workers(3, "echo_worker"))
    assert pids < grown
    assert set(pids_of(endpoint, "web")) == grown

    rewrite(sv, web(cmd, numprocesses=1))
    assert ok(endpoint, "reloadconfig")["scaled"] == ["web"]
    [left] = sv.wait_workers(1, "echo_worker")
    assert left in grown
    status = ok(endpoint, "status", {"name": "web"})["watcher"]
    assert status["generation"] == generation and status["numprocesses"] == 1


def test_a_socket_that_cannot_be_bound_changes_nothing(sockvisor, tmp_path):
    """Sockets are bound before anything else changes: all or nothing."""
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)
    listening_before = tcp_listening(sv.pid)
    assert listening_before == {("127.0.0.1", before["web"]["port"])}
    pids = sorted(pids_of(endpoint, "web"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        rewrite(sv, web(cmd, version="2").replace("sockets = web", "sockets = web, api, admin")
                + f"""
        [socket:api]
        port = 0

        [socket:admin]
        port = {busy}
        """)
        reply = call(endpoint, "reloadconfig")
    assert reply["status"] == "error" and reply["errno"] == ErrNo.OS_ERROR, reply
    assert "[socket:admin]" in reply["reason"] and str(busy) in reply["reason"]
    assert sockets_of(endpoint) == before
    assert sorted(pids_of(endpoint, "web")) == pids
    assert sv.http_get(before["web"]["port"])["version"] == "1"
    # The socket bound for [socket:api] before [socket:admin] failed was closed.
    assert tcp_listening(sv.pid) == listening_before


@pytest.mark.timeout(60)
def test_socket_kept_for_an_aborted_reload_is_closed_once_unused(sockvisor, tmp_path):
    """A moved socket whose watcher's reload aborts stays open for the old workers;
    once they are gone (the next reload succeeds), the old port is closed --
    not left listening with nobody to accept."""
    cmd = echo_worker_cmd(tmp_path / "w")
    ready = "ready = delay:0.3\nready_timeout = 5"
    sv = sockvisor(web(cmd, extra=ready))
    endpoint = endpoint_of(sv)
    old_port = sockets_of(endpoint)["web"]["port"]
    old_pids = set(pids_of(endpoint, "web"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        new_port = probe.getsockname()[1]

    crash = f"{sys.executable} -c 'raise SystemExit(4)'"
    rewrite(sv, web(crash, port=new_port, extra=ready))
    reply = call(endpoint, "reloadconfig", timeout=30)
    assert reply["status"] == "error" and reply["errno"] == ErrNo.COMMAND_ERROR, reply
    assert "aborted" in reply["reason"]
    # The old generation still serves, on the old port.
    assert set(pids_of(endpoint, "web")) == old_pids
    assert sv.http_get(old_port)["pid"] in old_pids

    rewrite(sv, web(cmd, port=new_port, version="2", extra=ready))
    assert ok(endpoint, "reloadconfig", timeout=30)["reloaded"] == ["web"]
    assert sv.http_get(new_port)["version"] == "2"
    wait_for(lambda: refused(old_port), 5,
             message=lambda: f"the old port {old_port} to be closed\n{sv.describe()}")
    assert tcp_listening(sv.pid) == {("127.0.0.1", new_port)}


def test_a_stopped_watcher_takes_the_new_config_but_stays_stopped(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    sv = sockvisor(web(cmd))
    endpoint = endpoint_of(sv)
    sv.wait_workers(2, "echo_worker")
    ok(endpoint, "stop", {"name": "web"})
    wait_for(lambda: not sv.worker_pids("echo_worker"), timeout=10)

    rewrite(sv, web(cmd, version="2"))
    ok(endpoint, "reloadconfig")
    detail = ok(endpoint, "status", {"name": "web"})["watcher"]
    assert detail["state"] == "stopped" and detail["workers"] == [], detail
    assert ok(endpoint, "get", {"name": "web", "keys": ["env"]})["options"]["env"][
        "VERSION"] == "2"
    # ...and it runs the new config once the operator starts it.
    ok(endpoint, "start", {"name": "web"})
    port = sockets_of(endpoint)["web"]["port"]
    assert sv.http_get(port)["version"] == "2"


def test_a_renamed_socket_keeps_its_listening_socket(sockvisor, tmp_path):
    """[socket:web] renamed [socket:front] on the same address: binding it anew
    would fail (the old one listens there) and drop the queue.  The renamed
    section takes over the very socket, under load, without a failed request."""
    cmd = echo_worker_cmd(tmp_path / "w")
    port = free_port()
    sv = sockvisor(web(cmd, port=port))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)["web"]
    link = fd_link(sv.pid, before["fd"])
    old_pids = set(sv.wait_workers(2, "echo_worker"))

    rewrite(sv, web(cmd, port=port, version="2")
            .replace("[socket:web]", "[socket:front]").replace("sockets = web",
                                                              "sockets = front"))
    with Load(port, threads=2) as load:
        wait_for(lambda: load.count() >= 20, 20, message="the load to get going")
        reply = ok(endpoint, "reloadconfig", timeout=60)
        during = load.count()
        wait_for(lambda: load.count() >= during + 20, 20, message="requests after it")
    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
    assert reply["sockets_taken_over"] == {"front": "web"}, reply
    assert reply["sockets_added"] == ["front"] and reply["sockets_removed"] == ["web"]
    assert reply["reloaded"] == ["web"]

    after = sockets_of(endpoint)
    assert list(after) == ["front"]
    assert after["front"]["port"] == port
    assert fd_link(sv.pid, after["front"]["fd"]) == link
    assert load.versions()[-1] == "2"
    assert not set(pids_of(endpoint, "web")) & old_pids


def test_two_sockets_swapping_addresses_keep_both_listening_sockets(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    one = free_port()
    two = wait_for(lambda: (port := free_port()) != one and port, 5,
                   message="a second free port")
    api = f"""
        [socket:api]
        host = 127.0.0.1
        port = {{port}}
        blocking = false

        [watcher:api]
        cmd = {cmd}
        sockets = api
        graceful_timeout = 3
    """
    sv = sockvisor(web(cmd, port=one) + api.format(port=two))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)
    links = {name: fd_link(sv.pid, entry["fd"]) for name, entry in before.items()}

    rewrite(sv, web(cmd, port=two) + api.format(port=one))
    reply = ok(endpoint, "reloadconfig", timeout=60)
    assert reply["sockets_taken_over"] == {"web": "api", "api": "web"}, reply
    assert sorted(reply["reloaded"]) == ["api", "web"]
    after = sockets_of(endpoint)
    assert (after["web"]["port"], after["api"]["port"]) == (two, one)
    assert fd_link(sv.pid, after["web"]["fd"]) == links["api"]
    assert fd_link(sv.pid, after["api"]["fd"]) == links["web"]
    web_pids, api_pids = set(pids_of(endpoint, "web")), set(pids_of(endpoint, "api"))
    assert sv.http_get(two)["pid"] in web_pids
    assert sv.http_get(one)["pid"] in api_pids


def test_an_overlapping_address_on_the_same_port_is_refused_clearly(sockvisor, tmp_path):
    """127.0.0.1:P -> 0.0.0.0:P cannot be bound while the old socket serves: the
    error says it is sockvisor's own socket in the way, and nothing changes."""
    cmd = echo_worker_cmd(tmp_path / "w")
    port = free_port()
    sv = sockvisor(web(cmd, port=port))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)
    pids = sorted(pids_of(endpoint, "web"))

    rewrite(sv, web(cmd, port=port, version="2").replace("host = 127.0.0.1",
                                                         "host = 0.0.0.0"))
    reply = call(endpoint, "reloadconfig")
    assert reply["status"] == "error" and reply["errno"] == ErrNo.OS_ERROR, reply
    assert "sockvisor's own [socket:web]" in reply["reason"], reply
    assert f"0.0.0.0:{port}" in reply["reason"], reply
    assert sockets_of(endpoint) == before
    assert sorted(pids_of(endpoint, "web")) == pids
    assert sv.http_get(port)["version"] == "1"


def test_a_new_socket_overlapping_one_that_stays_names_it(sockvisor, tmp_path):
    cmd = echo_worker_cmd(tmp_path / "w")
    port = free_port()
    sv = sockvisor(web(cmd, port=port))
    endpoint = endpoint_of(sv)
    before = sockets_of(endpoint)
    rewrite(sv, web(cmd, port=port) + f"""
        [socket:everywhere]
        host = 0.0.0.0
        port = {port}
    """)
    reply = call(endpoint, "reloadconfig")
    # Two sockets of one config on overlapping addresses: the config itself is
    # wrong (as `check` says), found before anything is bound.
    assert reply["status"] == "error" and reply["errno"] == ErrNo.MESSAGE_ERROR, reply
    assert "[socket:everywhere]: same address as [socket:web]" in reply["reason"], reply
    assert sockets_of(endpoint) == before
