"""The upgrade state format (handover.py) and the resume dry run (upgrade.check).

Pure: no process is started.  The fixture was written by upgrade.capture on a
running Supervisor (fixtures/make_upgrade_state.py): this version must resume
what the previous one wrote (N-1 -> N).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sockvisor import config as config_module
from sockvisor import handover, upgrade

FIXTURE = Path(__file__).with_name("fixtures") / "upgrade_state_format1.json"

CONFIG = """\
[sockvisor]
endpoint = ipc:///nonexistent/ctl
umask = 022

[socket:web]
host = 127.0.0.1
port = 8080
backlog = 100

[socket:admin]
path = {dir}/admin.sock
mode = 0660

[watcher:web]
cmd = /usr/bin/python3 -m app --workers 2
sockets = web admin
numprocesses = 3
env = A=1,JAVA_OPTS=-Xmx1g
stop_signal = INT
stdout = prefix
stderr = file:{dir}/web.err
stderr_max_bytes = 1000
ready = delay:1.5
ready_timeout = 20
rlimit_nofile = 4096
max_restarts = 7
"""


def memfd(state) -> int:
    return handover.write(state)


def test_config_round_trips_through_the_state(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(CONFIG.format(dir=tmp_path))
    config = config_module.load(str(path))
    state = {"config": {
        "path": config.path, "globals": handover.encode(config.globals),
        "sockets": {n: handover.encode(s) for n, s in config.sockets.items()},
        "plugins": handover.encode(config.plugins), "warnings": [],
        "watchers": {n: handover.encode(config_module.current_values(w, f"watcher:{n}"))
                     for n, w in config.watchers.items()}}}
    # Through JSON text, as the memfd carries it.
    again = upgrade.decode_config(json.loads(json.dumps(state)))
    assert again.globals == config.globals
    assert again.sockets == config.sockets
    assert again.watchers == config.watchers
    assert again.plugins == config.plugins


def test_a_runtime_change_is_what_resumes_not_the_file(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(CONFIG.format(dir=tmp_path))
    config = config_module.load(str(path))
    changed = config_module.with_options(config.watchers["web"],
                                         {"env": {"A": "2,3", "B": "x"}}, config.sockets)
    values = handover.encode(config_module.current_values(changed, "watcher:web"))
    state = {"config": {"path": config.path, "globals": handover.encode(config.globals),
                        "sockets": {n: handover.encode(s) for n, s in config.sockets.items()},
                        "plugins": handover.encode(config.plugins),
                        "watchers": {"web": values}}}
    again = upgrade.decode_config(json.loads(json.dumps(state)))
    assert {"A": "2,3", "B": "x"}.items() <= again.watchers["web"].env.items()
    assert again.watchers["web"] == changed


def test_fixture_of_the_previous_format_resumes():
    state = json.loads(FIXTURE.read_text())
    fd = memfd(state)
    try:
        read = handover.read(fd)
    finally:
        os.close(fd)
    summary = upgrade.check(read)
    assert "1 sockets, 2 watchers, 2 workers" in summary
    config = upgrade.decode_config(read)
    assert config.watchers["web"].numprocesses == 1   # the file's ...
    [web] = [w for w in read["watchers"] if w["name"] == "web"]
    assert web["numprocesses"] == 2                    # ... and the running count
    assert dict(config.watchers["web"].env)["GREETING"] == "hello"
    assert {w["wid"] for w in web["workers"]} == {1, 2}
    assert all(w["stdout"]["fd"] > 2 for w in web["workers"])
    assert set(handover.named_fds(read)) >= {read["sockets"][0]["fd"],
                                             read["readiness"]["fd"]}
    # Written before the shared sockets' inodes were carried: none to take over.
    assert "shared_inodes" not in read and upgrade.shared_inodes_of(read) == []


@pytest.mark.parametrize("inodes", [{"1": 2}, [1, "2"], [-1], [1 << 32], [True], None])
def test_shared_inodes_that_are_no_inodes_refuse_the_upgrade(inodes):
    state = json.loads(FIXTURE.read_text())
    state["shared_inodes"] = inodes
    with pytest.raises(handover.StateError, match="shared_inodes"):
        upgrade.check(state)
    state["shared_inodes"] = [7, 0xFFFFFFFF]
    assert "can resume it" in upgrade.check(state)


def test_an_unknown_format_is_refused_with_the_writer_named():
    fd = memfd({"format": 99, "version": "7.0"})
    try:
        with pytest.raises(handover.StateError, match=r"format 99 \(written by sockvisor "
                                                      r"7.0\) is not one this version reads"):
            handover.read(fd)
    finally:
        os.close(fd)


def test_a_field_this_version_lacks_is_refused_not_dropped():
    data = handover.encode(config_module.OutputConfig())
    data["fields"]["compress"] = True
    with pytest.raises(handover.StateError, match="compress"):
        handover.decode(data)


def test_a_new_field_missing_from_an_old_state_takes_its_default():
    data = handover.encode(config_module.ReadyPolicy())
    del data["fields"]["settle"]
    assert handover.decode(data) == config_module.ReadyPolicy()


def test_only_sockvisor_classes_are_ever_resolved():
    with pytest.raises(handover.StateError, match="outside sockvisor"):
        handover.decode({"$dc": "os:system", "fields": {}})
    with pytest.raises(handover.StateError, match="outside sockvisor"):
        handover.decode({"$enum": "subprocess:Popen", "value": "x"})


def test_the_state_memfd_is_close_on_exec_and_read_without_moving():
    fd = memfd({"format": 1, "x": "y" * 100000})
    try:
        assert not os.get_inheritable(fd)
        assert handover.read(fd)["x"] == "y" * 100000
        assert handover.read(fd)["x"] == "y" * 100000
    finally:
        os.close(fd)


def test_upgrade_markers_only_in_a_directory_nobody_else_can_write(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = tmp_path / "link"
    link.symlink_to(ours)
    paths = [str(ours / "ctl"), str(shared / "ctl"), str(link / "ctl")]
    (ours / "ctl.upgrading").symlink_to(tmp_path / "target")   # planted: replaced
    upgrade.mark_endpoints(paths)
    try:
        assert (ours / "ctl.upgrading").read_text() == f"{os.getpid()}\n"
        assert not (ours / "ctl.upgrading").is_symlink()
        assert not (tmp_path / "target").exists()
        assert not (shared / "ctl.upgrading").exists()
        assert [p.name for p in ours.iterdir()] == ["ctl.upgrading"]   # not via the link
    finally:
        upgrade.unmark_endpoints(paths)
    assert not (ours / "ctl.upgrading").exists()


def test_capture_hands_over_each_workers_own_pipes_never_by_pid(tmp_path, monkeypatch):
    """An exited worker's pipe still held by a grandchild, and a new worker that
    got the same pid: the new worker resumes with its own pipe, not the old one."""
    from types import SimpleNamespace

    from sockvisor import output
    path = tmp_path / "c.ini"
    path.write_text(CONFIG.format(dir=tmp_path))
    config = config_module.load(str(path))
    pid = 4242
    worker = SimpleNamespace(pid=pid, config=config.watchers["web"], pipes={})
    watcher = SimpleNamespace(name="web", config=worker.config, workers={pid: worker},
                              snapshot=lambda: {"name": "web", "workers": [{"pid": pid}]})
    supervisor = SimpleNamespace(config=config, watchers={"web": watcher}, control=None,
                                 sockets={}, readiness=None, cgroups=None,
                                 adopts_orphans=False, _ready_reported=False,
                                 started_at=0.0, upgrades=0)
    own_r, own_w = os.pipe()
    old_r, old_w = os.pipe()
    try:
        own, old = bytearray(b"new worker"), bytearray(b"old worker")
        worker.pipes = {"stdout": (own_r, own)}
        # The old pipe's entry is the later one, as a dict keeps them.
        monkeypatch.setattr(output, "attached", {own_r: (pid, "stdout", own),
                                                 old_r: (pid, "stdout", old)})
        [item] = upgrade.capture(supervisor)["watchers"][0]["workers"]
        assert item["stdout"] == {"fd": own_r, "partial": handover.b64(b"new worker")}
        assert "stderr" not in item
        # Its pipe read to its end, and the fd number reused for another pipe of
        # the same pid: nothing is handed over as this worker's.
        monkeypatch.setattr(output, "attached", {own_r: (pid, "stdout", old)})
        [item] = upgrade.capture(supervisor)["watchers"][0]["workers"]
        assert "stdout" not in item
    finally:
        for fd in (own_r, own_w, old_r, old_w):
            os.close(fd)
