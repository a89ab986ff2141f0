"""Attack: an `endpoint_group` member tries everything on the group endpoint.

The member is `nobody` with the operator group as a supplementary group, running
a real client (group_member.py).  What the group may do is the README's table
(Control → "What endpoint_group members may do"), enforced by control/access.py:
operate yes; decide what runs, stop the service for everyone, or see secrets
no -- unless `endpoint_group_grants` says so.  Every refusal must change nothing
(same workers, same pids, same options, no signal delivered), and every allowed
command must work.  Before access.py, members could `quit`, `rm`, `stop`,
`signal … STOP`, `incr` to 99,998 workers and read every env value.
"""

from __future__ import annotations

import grp
import os
import textwrap
from pathlib import Path

import psutil
import pytest

from sockvisor.control.client import ControlClient
from sockvisor.control.protocol import ErrNo

from conftest import Sockvisor, wait_for
from group_member import Member, operator_group

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user")]

SECRET = "hunter2-not-for-operators"


@pytest.fixture
def group_setup(world_readable_dir, scripts):
    """(start(globals) -> (Sockvisor, group endpoint, owner endpoint), Member)."""
    group = operator_group()
    top = world_readable_dir
    member = Member(top, group)
    instances: list[Sockvisor] = []

    def start(extra_globals: str = "", name: str = "sv", watcher_extra: str = ""):
        run = top / f"{name}-run"
        run.mkdir(mode=0o710)
        os.chown(run, 0, grp.getgrnam(group).gr_gid)
        run.chmod(0o710)
        endpoint = f"ipc://{run}/ctl"
        directory = top / name
        directory.mkdir()
        text = textwrap.dedent(f"""\
            [sockvisor]
            endpoint = {endpoint}
            endpoint_group = {group}
            EXTRA

            [socket:web]
            host = 127.0.0.1
            port = 0

            [watcher:web]
            cmd = {scripts.cmd("worker.py")}
            sockets = web
            numprocesses = 1
            graceful_timeout = 1
            env = SECRET={SECRET}
            WATCHER_EXTRA
            """).replace("WATCHER_EXTRA", watcher_extra).replace("EXTRA", extra_globals)
        sv = Sockvisor(directory, text)
        instances.append(sv)
        sv.wait_ready()
        return sv, endpoint, f"{endpoint}.admin"

    yield start, member
    for sv in instances:
        sv.cleanup()


def _owner(endpoint: str, command: str, props: dict | None = None) -> dict:
    with ControlClient(endpoint, 30) as client:
        reply = client.call(command, props or {})
    assert reply.get("status") != "error", f"{command} {props}: {reply}"
    return reply


def _forbidden(reply: dict, what: str) -> None:
    assert reply.get("status") == "error" and reply.get("errno") == ErrNo.FORBIDDEN, \
        f"{what} on the group endpoint: {reply}"


def _snapshot(admin: str) -> dict:
    """Everything a refused command must leave as it was."""
    pids = _owner(admin, "list", {"name": "web"})["pids"]
    return {"watchers": _owner(admin, "list")["watchers"],
            "pids": pids,
            "stopped": [psutil.Process(pid).status() == psutil.STATUS_STOPPED
                        for pid in pids],
            "numprocesses": _owner(admin, "numprocesses", {"name": "web"})["numprocesses"],
            "options": _owner(admin, "options", {"name": "web"})["options"],
            "status": _owner(admin, "status")["statuses"]}


@pytest.mark.timeout(120)
def test_group_member_is_refused_what_stops_the_service_or_reveals_secrets(group_setup,
                                                                            tmp_path):
    start, member = group_setup
    sv, shared, admin = start()
    maximum = 4 * (os.cpu_count() or 1)   # the documented default
    before = _snapshot(admin)
    [pid] = before["pids"]
    marker = tmp_path / "should-not-exist"

    refused = [
        ("quit", {}),
        ("rm", {"name": "web"}),
        ("stop", {"name": "web"}),
        ("stop", {}),
        ("add", {"name": "evil", "cmd": f"/bin/touch {marker}", "start": True}),
        ("set", {"name": "web", "options": {"cmd": f"/bin/touch {marker}"}}),
        ("set", {"name": "web", "options": {"env": "LD_PRELOAD=/tmp/x.so"}}),
        ("set", {"name": "web", "options": {"uid": "0"}}),
        ("set", {"name": "web", "options": {"working_dir": "/"}}),
        ("set", {"name": "web", "options": {"args": "--marker x"}}),
        ("set", {"name": "web", "options": {"stdout_max_bytes": "1"}}),
        ("set", {"name": "web", "options": {"respawn": "false"}}),
        ("set", {"name": "web", "options": {"ready_timeout": "0.001"}}),
        ("set", {"name": "web", "options": {"graceful_timeout": 2, "CMD": "/bin/true"}}),
        # A worker that ignores TERM would never stop: restarts hang, the owner's
        # commands queue behind them, SIGTERM to sockvisor hangs.
        ("set", {"name": "web", "options": {"graceful_timeout": "inf"}}),
        ("set", {"name": "web", "options": {"graceful_timeout": 2}}),
        # What operators may signal is the owner's to decide.
        ("set", {"name": "web", "options": {"operator_signals": "HUP"}}),
        # No signal is "operating" unless the watcher's config says so: HUP,
        # USR1, USR2 kill a program that does not handle them.
        ("signal", {"name": "web", "signum": "HUP"}),
        ("signal", {"name": "web", "signum": "USR1", "pid": pid}),
        ("signal", {"name": "web", "signum": "usr2"}),
        ("signal", {"name": "web", "signum": "CONT"}),
        ("signal", {"name": "web", "signum": "KILL"}),
        ("signal", {"name": "web", "signum": "STOP"}),
        ("signal", {"name": "web", "signum": "TERM", "pid": pid}),
        ("signal", {"name": "web", "signum": 9, "children": True}),
        ("signal", {"name": "web", "signum": "19"}),
        ("incr", {"name": "web", "nb": 99_998}),
        ("incr", {"name": "web", "nb": maximum}),
        ("decr", {"name": "web", "nb": 1}),            # to 0: a stop
        ("set", {"name": "web", "options": {"numprocesses": 0}}),
        ("set", {"name": "web", "options": {"numprocesses": maximum + 1}}),
    ]
    replies = member.calls(shared, refused)
    for (command, props), reply in zip(refused, replies):
        _forbidden(reply, f"{command} {props}")
    assert _snapshot(admin) == before
    assert not marker.exists()
    assert sv.proc.poll() is None

    # Secrets: env values are redacted, names stay (they say what is configured).
    options = member.call(shared, "options", {"name": "web"})
    env = options["options"]["env"]
    assert env["SECRET"] == "<redacted>" and set(env.values()) == {"<redacted>"}, env
    got = member.call(shared, "get", {"name": "web", "keys": ["env", "cmd"]})
    assert got["options"]["env"] == env, got
    assert SECRET not in str(options) + str(got)
    # The owner still sees them.
    assert _owner(admin, "options", {"name": "web"})["options"]["env"]["SECRET"] == SECRET


@pytest.mark.timeout(120)
def test_group_member_operates(group_setup):
    start, member = group_setup
    sv, shared, admin = start("endpoint_group_max_numprocesses = 3",
                              watcher_extra="operator_signals = CONT, winch")
    [pid] = _owner(admin, "list", {"name": "web"})["pids"]
    looks = [("status", {}), ("status", {"name": "web"}), ("list", {}),
             ("list", {"name": "web"}), ("stats", {}), ("dstats", {}),
             ("listsockets", {}), ("numprocesses", {}), ("numwatchers", {}),
             ("get", {"name": "web", "keys": ["graceful_timeout"]}),
             ("signal", {"name": "web", "signum": "CONT", "pid": pid}),
             ("signal", {"name": "web", "signum": "SIGWINCH"})]
    for (command, props), reply in zip(looks, member.calls(shared, looks)):
        assert reply.get("status") != "error", f"{command} {props}: {reply}"

    assert member.call(shared, "incr", {"name": "web", "nb": 2})["numprocesses"] == 3
    sv.wait_workers(3, "worker.py")
    _forbidden(member.call(shared, "incr", {"name": "web"}), "incr past the maximum")
    assert member.call(shared, "decr", {"name": "web", "nb": 2})["numprocesses"] == 1
    reply = member.call(shared, "set", {"name": "web", "options": {"numprocesses": 2,
                                                                   "reload_batch": 1}})
    assert reply["watcher"]["numprocesses"] == 2, reply
    assert _owner(admin, "get", {"name": "web", "keys": ["reload_batch"]}
                  )["options"]["reload_batch"] == 1
    # A member's `set` rebuilds the watcher's config: the owner's choices stay.
    assert member.call(shared, "get", {"name": "web", "keys": ["operator_signals"]}
                       )["options"]["operator_signals"] == ["CONT", "WINCH"]
    sv.wait_workers(2, "worker.py")
    for command in ("reload", "restart", "start"):
        reply = member.call(shared, command, {"name": "web", "waiting": True})
        assert reply.get("status") != "error", f"{command}: {reply}"
    assert member.call(shared, "reloadconfig").get("status") == "ok"
    # Many scaling requests at once cannot add up past the maximum.
    racing = [("incr", {"name": "web", "nb": 1})] * 12
    replies = member.calls(shared, racing, pipelined=True)
    assert len(replies) == len(racing)
    assert all(r.get("status") == "ok" or r.get("errno") == ErrNo.FORBIDDEN
               for r in replies), replies
    assert _owner(admin, "numprocesses", {"name": "web"})["numprocesses"] <= 3
    assert sv.proc.poll() is None


HUP_LOOP = 6


@pytest.mark.timeout(120)
def test_group_member_cannot_take_a_watcher_fatal_with_hup(group_setup):
    """The reviewer's attack: `signal web HUP` in a loop.  worker.py does not
    handle HUP, so each one killed the worker, each respawn died before
    min_uptime, and after max_restarts the watcher was FATAL: port open, nobody
    serving.  Without `operator_signals` no signal is the group's to send."""
    start, member = group_setup
    sv, shared, admin = start(watcher_extra="min_uptime = 1\nmax_restarts = 2\n"
                                            "restart_window = 60")
    [pid] = _owner(admin, "list", {"name": "web"})["pids"]
    for attempt in range(HUP_LOOP):
        reply = member.call(shared, "signal", {"name": "web", "signum": "HUP"})
        _forbidden(reply, f"HUP number {attempt + 1}")
        # Whatever happened, wait for a live worker before the next one (as the
        # attack does: each HUP hits the freshly respawned worker).
        sv.wait_workers(1, "worker.py")
    assert "endpoint_group_grants = signal" in reply["reason"], reply
    assert _owner(admin, "list", {"name": "web"})["pids"] == [pid]
    assert _owner(admin, "status", {"name": "web"})["status"] == "active"
    assert sv.proc.poll() is None


@pytest.mark.timeout(120)
def test_operator_signals_are_the_owners_choice(group_setup):
    start, member = group_setup
    sv, shared, admin = start(watcher_extra="operator_signals = HUP")
    [pid] = _owner(admin, "list", {"name": "web"})["pids"]
    assert member.call(shared, "get", {"name": "web", "keys": ["operator_signals"]}
                       )["options"]["operator_signals"] == ["HUP"]
    # Named: allowed (worker.py dies of it and is replaced).
    reply = member.call(shared, "signal", {"name": "web", "signum": "SIGHUP"})
    assert reply.get("status") == "ok" and reply["pids"] == [pid], reply
    [pid] = sv.wait_workers(1, "worker.py", exclude=[pid])
    # Not named: refused, nothing sent.
    for signum in ("USR1", "TERM", "1"):   # "1" is HUP by number: allowed
        reply = member.call(shared, "signal", {"name": "web", "signum": signum})
        if signum == "1":
            assert reply.get("status") == "ok", reply
            [pid] = sv.wait_workers(1, "worker.py", exclude=[pid])
        else:
            _forbidden(reply, f"signal {signum}")
            assert _owner(admin, "list", {"name": "web"})["pids"] == [pid]
    # Only the owner changes the list; then it applies at once.
    _forbidden(member.call(shared, "set", {"name": "web", "options": {
        "operator_signals": "HUP USR1"}}), "set operator_signals")
    _owner(admin, "set", {"name": "web", "options": {"operator_signals": "USR1"}})
    assert _owner(admin, "get", {"name": "web", "keys": ["operator_signals"]}
                  )["options"]["operator_signals"] == ["USR1"]
    _forbidden(member.call(shared, "signal", {"name": "web", "signum": "HUP"}), "HUP")
    reply = member.call(shared, "signal", {"name": "web", "signum": "USR1"})
    assert reply.get("status") == "ok" and reply["pids"] == [pid], reply
    # A bad list is refused with the key, and changes nothing.
    with ControlClient(admin, 30) as client:
        reply = client.call("set", {"name": "web", "options": {
            "operator_signals": "USR1 BOGUS"}})
    assert reply.get("status") == "error" and "operator_signals" in reply["reason"] \
        and "BOGUS" in reply["reason"], reply
    assert _owner(admin, "get", {"name": "web", "keys": ["operator_signals"]}
                  )["options"]["operator_signals"] == ["USR1"]
    assert sv.proc.poll() is None


@pytest.mark.timeout(60)
def test_no_endless_graceful_timeout_even_for_the_owner(group_setup):
    start, member = group_setup
    sv, shared, admin = start()
    for value in ("inf", "-inf", "nan", "1e308", "86401", 1e308):
        with ControlClient(admin, 30) as client:
            reply = client.call("set", {"name": "web",
                                        "options": {"graceful_timeout": value}})
        assert reply.get("status") == "error", (value, reply)
        assert "graceful_timeout" in reply["reason"] and "86400" in reply["reason"], \
            (value, reply)
        _forbidden(member.call(shared, "set", {"name": "web", "options": {
            "graceful_timeout": value}}), f"graceful_timeout {value}")
    assert _owner(admin, "get", {"name": "web", "keys": ["graceful_timeout"]}
                  )["options"]["graceful_timeout"] == 1.0
    # The owner still sets sane values.
    _owner(admin, "set", {"name": "web", "options": {"graceful_timeout": "86400"}})
    assert sv.proc.poll() is None


@pytest.mark.timeout(120)
def test_grants_let_the_group_do_more_but_never_decide_what_runs(group_setup, tmp_path):
    start, member = group_setup
    sv, shared, admin = start("endpoint_group_grants = stop, signal, secrets, scale, "
                              "rm, quit\nendpoint_group_max_numprocesses = 1")
    marker = tmp_path / "should-not-exist"
    options = member.call(shared, "options", {"name": "web"})["options"]
    assert options["env"]["SECRET"] == SECRET
    assert member.call(shared, "incr", {"name": "web", "nb": 2})["numprocesses"] == 3
    pids = sv.wait_workers(3, "worker.py")
    reply = member.call(shared, "signal", {"name": "web", "signum": "TERM",
                                           "pid": pids[0]})
    assert reply["pids"] == [pids[0]], reply
    assert member.call(shared, "stop", {"name": "web"})["watcher"]["state"] == "stopped"
    # Never grantable: what runs, as whom.
    for command, props in [("add", {"name": "evil", "cmd": f"/bin/touch {marker}"}),
                           ("set", {"name": "web", "options": {"cmd": "/bin/true"}}),
                           ("set", {"name": "web", "options": {"uid": "0"}})]:
        _forbidden(member.call(shared, command, props), command)
    assert member.call(shared, "rm", {"name": "web"})["removed"] == "web"
    assert member.call(shared, "quit").get("status") == "ok"
    assert sv.wait_exit(20) == 0
    assert not marker.exists()


def test_unknown_grant_is_a_config_error(tmp_path):
    from conftest import run_cli
    conf = tmp_path / "grants.ini"
    conf.write_text(f"[sockvisor]\nendpoint = ipc://{tmp_path}/ctl\nendpoint_group = "
                    f"{operator_group()}\nendpoint_group_grants = stop, add\n")
    result = run_cli("check", str(conf))
    assert result.returncode == 2, result
    assert "[sockvisor]: endpoint_group_grants: unknown grant 'add'" in result.stderr


@pytest.mark.parametrize("key, value, says", [
    ("graceful_timeout", "inf", "from 0 to 86400"),
    ("graceful_timeout", "nan", "from 0 to 86400"),
    ("graceful_timeout", "1e308", "from 0 to 86400"),
    ("ready_timeout", "infinity", "from 0 to 86400"),
    ("min_uptime", "86400.5", "from 0 to 86400"),
    ("operator_signals", "HUP NOPE", "unknown signal 'NOPE'"),
    ("operator_signals", "HUP 9", "signal names"),
])
def test_endless_durations_and_bad_operator_signals_fail_check(tmp_path, key, value,
                                                                says):
    from conftest import run_cli
    conf = tmp_path / "durations.ini"
    conf.write_text(f"[sockvisor]\nendpoint = ipc://{tmp_path}/ctl\n\n"
                    f"[watcher:web]\ncmd = /bin/sleep 100\n{key} = {value}\n")
    result = run_cli("check", str(conf))
    assert result.returncode == 2, result
    assert f"[watcher:web]: {key}: " in result.stderr and says in result.stderr, \
        result.stderr
