"""Unit tests for `sockvisor.reconfigure.plan`: what a reloadconfig has to do, from
two configs alone (no socket, no process).

Each config is a real INI file read by `config.load`, so a plan is tested on what
the parser makes of a section, not on hand-built dataclasses.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from sockvisor.config import Change, Config, load
from sockvisor.reconfigure import plan
from sockvisor.reconfigure.plan import _watcher_change


@pytest.fixture
def conf(tmp_path: Path):
    count = iter(range(1000))

    def make(body: str) -> Config:
        path = tmp_path / f"c{next(count)}.ini"
        path.write_text("[sockvisor]\n\n" + textwrap.dedent(body))
        return load(path)
    return make


def tcp(name: str, port: int, *extra: str, host: str = "127.0.0.1") -> str:
    return "\n".join([f"[socket:{name}]", f"host = {host}", f"port = {port}", *extra,
                      "", ""])


def unix(name: str, path: str, *extra: str) -> str:
    return "\n".join([f"[socket:{name}]", f"path = {path}", *extra, "", ""])


def watcher(name: str, sockets: str = "", *extra: str) -> str:
    lines = [f"[watcher:{name}]", "cmd = /bin/true"]
    if sockets:
        lines.append(f"sockets = {sockets}")
    return "\n".join([*lines, *extra, "", ""])


def test_the_same_config_plans_nothing(conf):
    body = tcp("web", 8001) + unix("app", "/run/app.sock", "mode = 0660") + watcher(
        "web", "web, app")
    p = plan(conf(body), conf(body))
    assert p.sockets.unchanged == ("web", "app") and p.watchers.unchanged == ("web",)
    assert not (p.sockets.bind or p.sockets.take_over or p.sockets.retire
                or p.sockets.in_place)
    assert not (p.watchers.add or p.watchers.remove or p.watchers.roll
                or p.watchers.scale or p.watchers.update)


def test_added_and_removed_sockets_and_watchers(conf):
    old = conf(tcp("web", 8001) + tcp("old", 8002) + watcher("web", "web")
               + watcher("gone"))
    new = conf(tcp("web", 8001) + tcp("api", 8003) + watcher("web", "web")
               + watcher("api", "api"))
    p = plan(old, new)
    assert p.sockets.bind == ("api",) and p.sockets.retire == ("old",)
    assert p.sockets.added == ("api",) and p.sockets.removed == ("old",)
    assert p.sockets.take_over == {} and p.sockets.unchanged == ("web",)
    assert p.watchers.add == ("api",) and p.watchers.remove == ("gone",)
    assert p.watchers.unchanged == ("web",)


def test_a_moved_socket_is_bound_anew_and_its_watchers_roll(conf):
    old = conf(tcp("web", 8001) + watcher("web", "web") + watcher("idle"))
    new = conf(tcp("web", 8009) + watcher("web", "web") + watcher("idle"))
    p = plan(old, new)
    assert p.sockets.moved == ("web",) and p.sockets.bind == ("web",)
    assert p.sockets.retire == ("web",)     # the old listening socket of that name
    # Its config is the same, but its workers hold the old socket.
    assert p.watchers.roll == ("web",) and p.watchers.unchanged == ("idle",)


def test_a_renamed_socket_takes_over_the_listening_socket(conf):
    old = conf(tcp("web", 8001, "backlog = 100") + watcher("web", "web"))
    new = conf(tcp("www", 8001, "backlog = 100") + watcher("web", "www"))
    p = plan(old, new)
    assert p.sockets.take_over == {"www": "web"}
    assert p.sockets.bind == () and p.sockets.retire == ()
    assert p.sockets.in_place == {"www": "web"}   # at least its name changes
    assert p.sockets.added == ("www",) and p.sockets.removed == ("web",)
    assert p.watchers.roll == ("web",)          # LISTEN_FDNAMES changes


def test_two_sockets_swapping_addresses_take_over_each_other(conf):
    old = conf(tcp("a", 8001) + tcp("b", 8002) + watcher("w", "a, b"))
    new = conf(tcp("a", 8002) + tcp("b", 8001) + watcher("w", "a, b"))
    p = plan(old, new)
    assert p.sockets.take_over == {"a": "b", "b": "a"}
    assert p.sockets.bind == () and p.sockets.retire == ()
    assert p.watchers.roll == ("w",)


def test_a_socket_moving_onto_a_removed_ones_address_takes_it_over(conf):
    old = conf(tcp("a", 8001) + tcp("b", 8002) + watcher("w", "a"))
    new = conf(tcp("a", 8002) + watcher("w", "a"))
    p = plan(old, new)
    assert p.sockets.take_over == {"a": "b"}
    assert p.sockets.retire == ("a",)     # a's own old socket (8001) goes
    assert p.sockets.bind == ()


def test_only_one_new_socket_takes_over_an_address(conf):
    old = conf(tcp("a", 8001) + watcher("w", "a"))
    new = conf(tcp("x", 8001) + tcp("y", 8001, host="127.0.0.2") + watcher("w", "x, y"))
    p = plan(old, new)
    assert p.sockets.take_over == {"x": "a"} and p.sockets.bind == ("y",)


def test_settings_that_change_in_place(conf):
    old = conf(tcp("web", 8001, "backlog = 100")
               + unix("app", "/run/app.sock", "mode = 0660") + watcher("web", "web, app"))
    new = conf(tcp("web", 8001, "backlog = 200", "blocking = false")
               + unix("app", "/run/app.sock", "mode = 0600", "owner = nobody")
               + watcher("web", "web, app"))
    p = plan(old, new)
    assert p.sockets.in_place == {"web": "web", "app": "app"}
    assert p.sockets.bind == () and p.sockets.retire == () and p.sockets.moved == ()
    # The listening sockets stay: the workers need nothing new.
    assert p.watchers.unchanged == ("web",)


def test_a_unix_socket_at_a_new_path_is_moved(conf):
    old = conf(unix("app", "/run/a.sock") + watcher("w", "app"))
    new = conf(unix("app", "/run/b.sock") + watcher("w", "app"))
    p = plan(old, new)
    assert p.sockets.moved == ("app",) and p.sockets.bind == ("app",)


def test_a_numprocesses_change_scales_a_timeout_updates_others_roll(conf):
    old = conf(watcher("a", "", "numprocesses = 1") + watcher("b", "", "numprocesses = 1")
               + watcher("c", "", "graceful_timeout = 3"))
    new = conf(watcher("a", "", "numprocesses = 3")
               + watcher("b", "", "numprocesses = 3", "env = X=1")
               + watcher("c", "", "graceful_timeout = 9"))
    p = plan(old, new)
    assert p.watchers.scale == ("a",) and p.watchers.roll == ("b",)
    assert p.watchers.update == ("c",)


def test_a_numprocesses_change_on_a_moved_socket_rolls(conf):
    old = conf(tcp("web", 8001) + watcher("web", "web", "numprocesses = 1"))
    new = conf(tcp("web", 8002) + watcher("web", "web", "numprocesses = 2"))
    assert plan(old, new).watchers.roll == ("web",)


def test_the_running_watcher_is_compared_not_the_file(conf):
    """The applier passes the watchers as they run: a `set` or `add` since the
    last reloadconfig is what the new file is compared with."""
    file = conf(watcher("web", "", "numprocesses = 1"))
    running = dataclasses.replace(file, watchers={
        "web": dataclasses.replace(file.watchers["web"], cmd="/bin/false"),
        "added": dataclasses.replace(file.watchers["web"], name="added")})
    p = plan(running, file)
    assert p.watchers.roll == ("web",) and p.watchers.remove == ("added",)


def test_watcher_change_is_the_heaviest_the_registry_names(conf):
    config = conf(watcher("w", "", "numprocesses = 2")).watchers["w"]
    assert _watcher_change(config, config) is None
    more = dataclasses.replace(config, numprocesses=5)
    assert _watcher_change(config, more) is Change.SCALE
    assert _watcher_change(config, dataclasses.replace(more, graceful_timeout=99)) \
        is Change.SCALE
    assert _watcher_change(config, dataclasses.replace(config, graceful_timeout=99)) \
        is Change.IN_PLACE
    assert _watcher_change(config, dataclasses.replace(more, cmd="/bin/false")) \
        is Change.RESTART


def test_the_summary_keeps_the_reply_keys(conf):
    old = conf(tcp("web", 8001) + tcp("gone", 8002) + watcher("web", "web"))
    new = conf(tcp("web", 8003) + tcp("www", 8002) + watcher("web", "web"))
    assert plan(old, new).summary() == {
        "added": [], "removed": [], "reloaded": ["web"], "scaled": [], "updated": [],
        "unchanged": [],
        "sockets_added": ["www"], "sockets_removed": ["gone"], "sockets_changed": ["web"],
        "sockets_taken_over": {"www": "gone"}}
