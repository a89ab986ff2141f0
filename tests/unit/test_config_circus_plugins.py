"""Circus's `[plugin:NAME]` sections, `flapping.*`, `max_age` and `[circus] statsd`
as the config loader reads them (sockvisor/circus_plugins.py): what each maps
onto, and errors that name file, section and key."""

from __future__ import annotations

import pytest

from sockvisor import circus_plugins as cp
from sockvisor.config import ConfigError, load

HEAD = "[circus]\nendpoint = ipc:///tmp/x/ctl\n\n[watcher:web]\ncmd = /bin/sleep 1\n"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "circus.ini"
    path.write_text(text)
    return str(path)


def error(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={"PATH": "/usr/bin:/bin"})
    return info.value


def test_flapping_maps_onto_the_restart_policy(tmp_path):
    """Circus's example1: the flapping plugin, retry_in 3, max_retry 2, default
    attempts 2 / window 1."""
    config = load(write(tmp_path, HEAD + "\n[watcher:own]\ncmd = /bin/sleep 1\n"
                        "max_restarts = 9\nflapping.retry_in = 1\n"
                        "\n[watcher:off]\ncmd = /bin/sleep 1\nflapping.active = False\n"
                        "\n[plugin:flapping]\nuse = circus.plugins.flapping.Flapping\n"
                        "retry_in = 3\nmax_retry = 2\n"))
    web = config.watchers["web"].restart
    assert (web.max_restarts, web.window, web.backoff_max) == (6, 12.0, 3.0)
    own = config.watchers["own"].restart   # its own max_restarts wins; its override too
    assert (own.max_restarts, own.window, own.backoff_max) == (9, 6.0, 1.0)
    off = config.watchers["off"].restart   # flapping.active = False: sockvisor's defaults
    assert (off.max_restarts, off.window, off.backoff_max) == (5, 60.0, 10.0)


def test_flapping_max_retry_minus_one_never_gives_up(tmp_path):
    config = load(write(tmp_path, HEAD + "[plugin:f]\nuse = circus.plugins.flapping:Flapping\n"
                        "max_retry = -1\nwindow = 5\n"))
    restart = config.watchers["web"].restart
    assert restart.max_restarts == -1 and restart.min_uptime == 5.0


def test_resource_watcher_options_as_circus_reads_them(tmp_path):
    config = load(write(tmp_path, HEAD + "[plugin:leak]\nuse = "
                        "circus.plugins.resource_watcher.ResourceWatcher\n"
                        "max_mem = 1\nmax_cpu = 4\nservice = web\n"
                        "\n[plugin:rss]\nuse = circus.plugins.resource_watcher.ResourceWatcher\n"
                        "watcher = web\nmax_mem = 512M\nloop_rate = 5\n"))
    percent, absolute = config.plugins.plugins
    assert (percent.watcher, percent.max_mem, percent.max_mem_bytes, percent.max_cpu) == (
        "web", 1.0, False, 4.0)
    assert (absolute.max_mem, absolute.max_mem_bytes, absolute.loop_rate) == (
        512 << 20, True, 5.0)
    assert absolute.health_threshold == 75.0 and absolute.max_count == 3


def test_max_age_and_statsd_true(tmp_path):
    config = load(write(tmp_path, HEAD.replace("[circus]\n", "[circus]\nstatsd = true\n")
                        + "max_age = 10\nmax_age_variance = 5\n"))
    assert config.plugins.max_age == {"web": cp.MaxAge(10.0, 5.0)}
    assert any("statsd: ignored" in w and "circusd-stats" in w for w in config.warnings)


@pytest.mark.parametrize("plugin, section, key, says", [
    ("use = circus.plugins.resource_watcher.ResourceWatcher\nwatcher = web\nmax_memory = 1",
     "plugin:p", "max_memory", "did you mean 'max_mem'"),
    ("use = circus.plugins.resource_watcher.ResourceWatcher\nwatcher = nope",
     "plugin:p", "watcher", "no [watcher:nope]"),
    ("use = circus.plugins.resource_watcher.ResourceWatcher\nmax_cpu = 3",
     "plugin:p", "watcher", "needs watcher"),
    ("use = circus.plugins.resource_watcher.ResourceWatcher\nwatcher = web\nmax_mem = 3X",
     "plugin:p", "max_mem", "512M"),
    ("use = circus.plugins.http_observer.HttpObserver\ncheck_url = localhost",
     "plugin:p", "check_url", "http://"),
    ("use = circus.plugins.redis_observer.RedisObserver", "plugin:p", "use",
     "not one of Circus's bundled plugins built into sockvisor"),
    ("use = mypkg.MyPlugin", "plugin:p", "use", "third-party"),
    ("retry_in = 3", "plugin:p", "use", "needs use"),
    ("use = circus.plugins.watchdog.WatchDog\nmsg_regex = ^(.*)$", "plugin:p",
     "msg_regex", "(?P<pid>"),
    ("use = circus.plugins.flapping.Flapping\nmax_retry = many", "plugin:p",
     "max_retry", "whole number"),
])
def test_plugin_errors_name_section_and_key(tmp_path, plugin, section, key, says):
    exc = error(tmp_path, HEAD + f"[{section}]\n{plugin}\n")
    assert (exc.section, exc.key) == (section, key), str(exc)
    assert says in exc.message, exc.message
    assert exc.path and exc.path.endswith("circus.ini")


def test_bad_flapping_override_names_the_watcher(tmp_path):
    exc = error(tmp_path, HEAD + "flapping.window = soon\n"
                "[plugin:f]\nuse = circus.plugins.flapping.Flapping\n")
    assert (exc.section, exc.key) == ("watcher:web", "flapping.window")


def test_human_bytes_is_circus_human2bytes():
    assert cp.human_bytes("100K") == 100 << 10
    assert cp.human_bytes("1.5G") == int(1.5 * (1 << 30))
    assert cp.human_bytes("2MB") == 2 << 20
    with pytest.raises(ValueError):
        cp.human_bytes("12 parsecs")


@pytest.mark.parametrize("topic, data, expected", [
    ("watcher.web.spawn", {"pid": 1}, ("web", ["spawn"])),
    ("watcher.my.app.exit", {"expected": False}, ("my.app", ["reap"])),
    ("watcher.web.exit", {"expected": True}, ("web", ["kill", "reap"])),
    ("watcher.web.state", {"from": "active", "to": "stopped"}, ("web", ["stop"])),
    ("watcher.web.state", {"from": "starting", "to": "active"}, ("web", ["start"])),
    ("watcher.web.state", {"from": "reloading", "to": "active"}, ("", [])),
    ("watcher.web.reload.finished", {}, ("web", ["reload"])),
    ("watcher.web.ready", {}, ("", [])),
    ("socket.web.relisten", {}, ("", [])),
])
def test_events_become_circus_statsd_actions(topic, data, expected):
    from sockvisor.plugin_tasks import circus_actions
    assert circus_actions(topic, data) == expected


def test_statsd_lines_and_sampling():
    """Circus's line format; a sample rate below 1 marks the line and sends about
    that share of them (Circus marks every line and sends them all)."""
    import asyncio
    import random
    import socket
    from sockvisor.plugin_tasks import StatsdClient

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.5)

    async def send() -> None:
        client = StatsdClient(cp.Statsd("127.0.0.1", server.getsockname()[1], 1.0,
                                        "circus.app.watcher"))
        await client.open()
        client.increment("web.spawn")
        client.timed("http_stats.request_time", 12)
        sampled = StatsdClient(cp.Statsd("127.0.0.1", server.getsockname()[1], 0.5,
                                         "circus.app.watcher"))
        await sampled.open()
        random.seed(1)
        for _ in range(200):
            sampled.increment("web.reap")
        client.close()
        sampled.close()
    try:
        asyncio.run(send())
        lines = []
        while True:
            try:
                lines.append(server.recv(1000).decode())
            except socket.timeout:
                break
    finally:
        server.close()
    assert lines[:2] == ["circus.app.watcher.web.spawn:1|c",
                         "circus.app.watcher.http_stats.request_time:12|ms"]
    reaps = lines[2:]
    assert set(reaps) == {"circus.app.watcher.web.reap:1|c|@0.5"}
    assert 60 < len(reaps) < 140
