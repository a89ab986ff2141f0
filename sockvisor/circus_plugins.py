"""Circus's `[plugin:NAME]` sections, its watchers' `flapping.*` and `max_age*`
keys, and `[circus] statsd`: read from the raw INI into frozen dataclasses.

Circus runs each plugin as a separate process speaking its ZeroMQ protocol.
sockvisor has the bundled ones built in (sockvisor/plugin_tasks.py runs them in
its event loop), so a Circus config keeps its meaning without circus installed:

| `use = circus.plugins.…`           | sockvisor                                             |
|------------------------------------|-------------------------------------------------------|
| `flapping.Flapping`                | the watcher's restart policy, set at load time (below) |
| `resource_watcher.ResourceWatcher` | psutil samples; a worker over a limit is *recycled*: a |
|                                    | replacement first, the old one retired once it settled |
| `http_observer.HttpObserver`       | a GET every loop_rate; on failure a rolling reload of  |
|                                    | `restart_on_error` (Circus restarts: downtime)         |
| `command_reloader.CommandReloader` | a rolling reload when a watcher's program changes      |
| `watchdog.WatchDog`                | UDP heartbeats `PID;TIMESTAMP`; a silent worker is     |
|                                    | recycled                                                |
| `statsd.StatsdEmitter`             | every event as a statsd counter, as Circus names them  |
| `statsd.FullStats`                 | CPU/memory gauges every loop_rate                      |

Every bundled plugin keeps Circus's option names and defaults.  A key no plugin
reads is an error with a did-you-mean (Circus passes it on and the plugin ignores
it, so a typo silently changed nothing).  `use` must be a full dotted name, as
Circus's `resolve_name` needs (`module.Class` or `module:Class`).  Anything else
(`use = mypkg.MyPlugin`, a `circus.plugins.CircusPlugin` subclass) is a
third-party plugin, run as Circus runs it: its own process, `python -c 'from
circus import plugins; plugins.main()' --endpoint … --pubsub … --config … FQN`,
as sockvisor's user, speaking Circus's protocol to sockvisor's control and
events endpoints (which sockvisor speaks), restarted if it exits.  That needs
the circus package and the plugin's own importable here: without either, the
section is refused, saying what to install.

**Flapping → restart policy.**  Circus's Flapping stops a watcher when `attempts`
processes die within `window` seconds, starts it again after `retry_in` seconds,
and gives up (stops it for good) after `max_retry` such retries (-1: never).
sockvisor counts *failed starts* (deaths before min_uptime) instead, with an
exponential backoff, and goes FATAL after `max_restarts` of them within
`restart_window`.  The mapping keeps Circus's budget and pace:
  * `max_restarts = attempts * (max_retry + 1)` (unlimited for max_retry = -1):
    the deaths Circus tolerates before it gives up;
  * `restart_window = (max_retry + 1) * (window + retry_in)`: the time Circus
    takes to spend that budget;
  * `backoff_max = retry_in`: never wait longer between attempts than Circus does;
  * `min_uptime = window` when window is longer than the default min_uptime:
    a worker dying within Circus's window is a failed start.
A watcher's own max_restarts, restart_window, backoff_max or min_uptime wins over
the mapped value.  `flapping.active = false` on a watcher (or `active = false`
in the section) leaves that watcher with sockvisor's own defaults.

**`[circus] statsd = true`** starts Circus's `circusd-stats`: a stats streamer on
`stats_endpoint` for circus-top and circushttpd, not a statsd client.  sockvisor
answers the same questions with the `stats` command and `/metrics`, so it is
accepted with a warning; counters to a statsd server are `[plugin:…] use =
circus.plugins.statsd.StatsdEmitter`, as in Circus.

**max_age / max_age_variance** (watcher keys): each worker is recycled after
max_age + uniform(0, max_age_variance) seconds (Circus's rule), replacement first.
"""

from __future__ import annotations

import configparser
import difflib
import re
import signal
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

# What a `use =` names, normalised to `module.Class`.
FLAPPING = "circus.plugins.flapping.Flapping"
RESOURCE_WATCHER = "circus.plugins.resource_watcher.ResourceWatcher"
HTTP_OBSERVER = "circus.plugins.http_observer.HttpObserver"
COMMAND_RELOADER = "circus.plugins.command_reloader.CommandReloader"
WATCHDOG = "circus.plugins.watchdog.WatchDog"
STATSD_EMITTER = "circus.plugins.statsd.StatsdEmitter"
FULL_STATS = "circus.plugins.statsd.FullStats"

THIRD_PARTY = ("{use} is a third-party Circus plugin: sockvisor runs it as Circus "
               "does, which needs {missing} (install it for {python}), or remove the "
               "section (Circus's bundled plugins are built in: {known})")

_COMMON = ("use", "priority", "active")
_STATSD_KEYS = ("host", "port", "sample_rate", "application_name")


class PluginConfigError(ValueError):
    """A problem in a plugin section; config.py turns it into a ConfigError."""

    def __init__(self, message: str, section: str | None, key: str | None = None):
        super().__init__(message)
        self.section = section
        self.key = key


@dataclass(frozen=True)
class Statsd:
    """Where a plugin sends its statsd lines (Circus's StatsdClient)."""
    host: str = "localhost"
    port: int = 8125
    sample_rate: float = 1.0
    prefix: str = "circus.app.watcher"   # circus.APPLICATION_NAME.watcher


@dataclass(frozen=True)
class Flapping:
    attempts: int = 2
    window: float = 1.0
    retry_in: float = 7.0
    max_retry: int = 5
    active: bool = True


@dataclass(frozen=True)
class ResourceWatcher:
    section: str
    watcher: str
    statsd: Statsd
    max_cpu: float | None = 90.0          # percent of one CPU
    max_mem: float | None = 90.0          # percent of RAM, or bytes if max_mem_bytes
    max_mem_bytes: bool = False
    min_cpu: float | None = None
    min_mem: float | None = None
    min_mem_bytes: bool = False
    health_threshold: float | None = 75.0   # (cpu% + mem%) / 2
    max_count: int = 3
    loop_rate: float = 60.0


@dataclass(frozen=True)
class HttpObserver:
    section: str
    statsd: Statsd
    check_url: str = "http://localhost/"
    timeout: float = 10.0
    restart_on_error: str | None = None
    loop_rate: float = 60.0


@dataclass(frozen=True)
class CommandReloader:
    section: str
    loop_rate: float = 1.0


@dataclass(frozen=True)
class WatchDog:
    section: str
    loop_rate: float = 60.0
    watchers_regex: str = ".*"
    msg_regex: str = "^(?P<pid>.*);(?P<timestamp>.*)$"
    max_count: int = 3
    ip: str = "127.0.0.1"
    port: int = 1664
    stop_signal: int | None = None
    graceful_timeout: float | None = None


@dataclass(frozen=True)
class StatsdEmitter:
    section: str
    statsd: Statsd


@dataclass(frozen=True)
class FullStats:
    section: str
    statsd: Statsd
    loop_rate: float = 60.0


@dataclass(frozen=True)
class ThirdParty:
    """A `circus.plugins.CircusPlugin` subclass, run as Circus's plugin runner does."""
    section: str
    use: str                               # as written: resolve_name's spelling
    options: tuple[tuple[str, str], ...]   # its --config, Circus's name included


@dataclass(frozen=True)
class MaxAge:
    seconds: float
    variance: float = 30.0   # Circus's default


@dataclass(frozen=True)
class PluginSetup:
    """Everything this module read; what sockvisor/plugin_tasks.py runs."""
    plugins: tuple[Any, ...] = ()
    max_age: Mapping[str, MaxAge] = field(default_factory=dict)   # by watcher
    flapping: Mapping[str, Flapping] = field(default_factory=dict)  # by watcher
    warnings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.plugins and not self.max_age


# --------------------------------------------------------------------------- values

def _number(raw: str, what: str = "a number", low: float = 0.0) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected {what}, got {raw.strip()!r}") from None
    if not low <= value <= 1e9:   # also refuses nan and inf
        raise ValueError(f"must be from {low:g} to 1e9, got {raw.strip()!r}")
    return value


def _whole(raw: str, low: int = 0) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw.strip()!r}") from None
    if value < low:
        raise ValueError(f"must be at least {low}, got {value}")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw.strip()!r}")


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
          "P": 1 << 50, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}


def human_bytes(raw: str) -> int:
    """Circus's human2bytes: `512M`, `1.5G`, `100K` (k too), powers of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]{0,2})\s*", raw)
    unit = match.group(2) if match else ""
    if unit.upper().endswith("B") and len(unit) == 2:
        unit = unit[0]
    if not match or unit.upper() not in _UNITS or (unit and unit[0] == "m"):
        raise ValueError(f"expected a size such as 512M or 2G, or a percentage "
                         f"such as 80, got {raw.strip()!r}")
    return int(float(match.group(1)) * _UNITS[unit.upper()])


def _percent_or_bytes(raw: str) -> tuple[float, bool]:
    """Circus's max_mem/min_mem: a bare number is a percentage of RAM, a size with
    a unit is bytes."""
    try:
        return _number(raw, "a percentage or a size"), False
    except ValueError:
        return float(human_bytes(raw)), True


def _signal(raw: str) -> int:
    name = raw.strip().upper()
    if name.isdigit():
        return int(name)
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"unknown signal {raw.strip()!r}")
    return signal.Signals[name].value


def _regex(raw: str) -> str:
    try:
        re.compile(raw)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return raw


# --------------------------------------------------------------------------- reading

def normalise_use(use: str) -> str:
    """`module:Class` → `module.Class` (Circus's resolve_name takes both)."""
    return use.strip().replace(":", ".")


def load(path: str, parser: configparser.ConfigParser, global_section: str | None,
         plugin_sections: Mapping[str, str], watcher_sections: Mapping[str, str]
         ) -> PluginSetup:
    """Read `[plugin:NAME]` sections (`plugin_sections`: name → section) and the
    watchers' `flapping.*` / `max_age*` keys.  Raises PluginConfigError."""
    warnings: list[str] = []
    if global_section is not None and parser.has_option(global_section, "statsd"):
        raw = parser.get(global_section, "statsd")
        try:
            statsd_on = _bool(raw)
        except ValueError as exc:
            raise PluginConfigError(str(exc), global_section, "statsd") from None
        if statsd_on:
            warnings.append(
                f"{path}: [{global_section}] statsd: ignored: in Circus it starts "
                "circusd-stats (process stats for circus-top on stats_endpoint); "
                "sockvisor has the `stats` command and /metrics.  For counters to a "
                "statsd server use [plugin:statsd] with use = "
                "circus.plugins.statsd.StatsdEmitter")
    plugins: list[Any] = []
    flapping_default: Flapping | None = None
    for name, section in plugin_sections.items():
        items = dict(parser.items(section))
        if "use" not in items or not items["use"].strip():
            raise PluginConfigError("a plugin needs use = module.Class (e.g. "
                                    f"{RESOURCE_WATCHER})", section, "use")
        use = normalise_use(items["use"])
        active = True
        if "active" in items:
            try:
                active = _bool(items["active"])
            except ValueError as exc:
                raise PluginConfigError(str(exc), section, "active") from None
        if "priority" in items:
            try:
                _whole(items["priority"], low=-(1 << 31))
            except ValueError as exc:
                raise PluginConfigError(str(exc), section, "priority") from None
        plugin = _build(use, section, items, watcher_sections)
        if isinstance(plugin, ThirdParty):
            plugin = replace(plugin, use=items["use"].strip())
        if isinstance(plugin, Flapping):
            if flapping_default is not None:
                raise PluginConfigError("a second flapping plugin: give one", section)
            flapping_default = replace(plugin, active=active)
        elif active:
            plugins.append(plugin)
    flapping: dict[str, Flapping] = {}
    max_age: dict[str, MaxAge] = {}
    for name, section in watcher_sections.items():
        items = dict(parser.items(section))
        overrides = {key: value for key, value in items.items()
                     if key.startswith("flapping.")}
        if flapping_default is not None or overrides:
            base = flapping_default or Flapping(active=False)
            if flapping_default is None and overrides:
                warnings.append(f"{path}: [{section}] flapping.*: ignored: there is no "
                                "[plugin:…] with use = " + FLAPPING)
            else:
                flapping[name] = _flapping_overrides(base, overrides, section)
        if "max_age" in items:
            age = _read(section, "max_age", items["max_age"], _number)
            variance = (_read(section, "max_age_variance", items["max_age_variance"],
                              _number) if "max_age_variance" in items else 30.0)
            if age > 0:
                max_age[name] = MaxAge(age, variance)
        elif "max_age_variance" in items:
            _read(section, "max_age_variance", items["max_age_variance"], _number)
    return PluginSetup(tuple(plugins), max_age, flapping, tuple(warnings))


def _read(section: str, key: str, raw: str, parse: Any) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise PluginConfigError(str(exc), section, key) from None


def _flapping_overrides(base: Flapping, overrides: Mapping[str, str],
                        section: str) -> Flapping:
    parsers = {"attempts": lambda raw: _whole(raw, 1), "window": _number,
               "retry_in": _number, "max_retry": _max_retry, "active": _bool}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        option = key[len("flapping."):]
        if option not in parsers:
            raise PluginConfigError(f"unknown flapping option{_hint(option, parsers)}; "
                                    f"known: {', '.join('flapping.' + k for k in parsers)}",
                                    section, key)
        values[option] = _read(section, key, raw, parsers[option])
    return replace(base, **values)


def _max_retry(raw: str) -> int:
    return -1 if raw.strip() == "-1" else _whole(raw)


def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(use: str, section: str, items: Mapping[str, str],
           watcher_sections: Mapping[str, str]) -> Any:
    known = {FLAPPING, RESOURCE_WATCHER, HTTP_OBSERVER, COMMAND_RELOADER, WATCHDOG,
             STATSD_EMITTER, FULL_STATS}
    if use not in known:
        short = ", ".join(sorted(k.rpartition(".")[2] for k in known))
        if use.startswith("circus.plugins."):
            raise PluginConfigError(f"{use!r} is not one of Circus's bundled plugins "
                                    f"built into sockvisor ({short}){_hint(use, known)}",
                                    section, "use")
        return _third_party(use, section, items, short)
    statsd_keys = _STATSD_KEYS if use in (RESOURCE_WATCHER, HTTP_OBSERVER,
                                          STATSD_EMITTER, FULL_STATS) else ()
    allowed: dict[str, Any] = {}
    if use == FLAPPING:
        allowed = {"attempts": lambda raw: _whole(raw, 1), "window": _number,
                   "retry_in": _number, "max_retry": _max_retry}
    elif use == RESOURCE_WATCHER:
        allowed = {"watcher": _name, "service": _name, "max_cpu": _number,
                   "max_mem": _percent_or_bytes, "min_cpu": _number,
                   "min_mem": _percent_or_bytes, "health_threshold": _number,
                   "max_count": _whole, "loop_rate": _positive,
                   "process_children": _refuse_children, "child_signal": _signal}
    elif use == HTTP_OBSERVER:
        allowed = {"check_url": _url, "timeout": _positive, "restart_on_error": _name,
                   "loop_rate": _positive}
    elif use == COMMAND_RELOADER:
        allowed = {"loop_rate": _positive}
    elif use == WATCHDOG:
        allowed = {"loop_rate": _positive, "watchers_regex": _regex,
                   "msg_regex": _msg_regex, "max_count": lambda raw: _whole(raw, 1),
                   "ip": _name, "port": lambda raw: _whole(raw, 1),
                   "watchers_stop_signal": _signal,
                   "watchers_graceful_timeout": _number}
    elif use == FULL_STATS:
        allowed = {"loop_rate": _positive}
    allowed.update({"host": _name, "port": lambda raw: _whole(raw, 1),
                    "sample_rate": _rate, "application_name": _name}
                   if statsd_keys else {})
    values: dict[str, Any] = {}
    for key, raw in items.items():
        if key in _COMMON:
            continue
        if key not in allowed:
            raise PluginConfigError(f"{use.rpartition('.')[2]} has no option {key!r}"
                                    f"{_hint(key, allowed)}; known: "
                                    f"{', '.join(sorted(allowed))}", section, key)
        values[key] = _read(section, key, raw, allowed[key])
    statsd = Statsd(
        host=values.get("host", "localhost"), port=values.get("port", 8125),
        sample_rate=values.get("sample_rate", 1.0),
        prefix="circus.%s.watcher" % values.get(
            "application_name", "http_observer" if use == HTTP_OBSERVER else "app"))
    if use == FLAPPING:
        return Flapping(**values)
    if use == RESOURCE_WATCHER:
        watcher = values.get("watcher", values.get("service"))
        if watcher is None:
            raise PluginConfigError("ResourceWatcher needs watcher = NAME", section,
                                    "watcher")
        _check_watcher(watcher, watcher_sections, section,
                       "watcher" if "watcher" in values else "service")
        max_mem, max_bytes = values.get("max_mem", (90.0, False))
        min_mem, min_bytes = values.get("min_mem", (None, False))
        return ResourceWatcher(
            section=section, watcher=watcher, statsd=statsd,
            max_cpu=values.get("max_cpu", 90.0) or None, max_mem=max_mem or None,
            max_mem_bytes=max_bytes, min_cpu=values.get("min_cpu"), min_mem=min_mem,
            min_mem_bytes=min_bytes,
            health_threshold=values.get("health_threshold", 75.0) or None,
            max_count=values.get("max_count", 3), loop_rate=values.get("loop_rate", 60.0))
    if use == HTTP_OBSERVER:
        target = values.get("restart_on_error")
        if target is not None:
            _check_watcher(target, watcher_sections, section, "restart_on_error")
        return HttpObserver(section=section, statsd=statsd,
                            check_url=values.get("check_url", "http://localhost/"),
                            timeout=values.get("timeout", 10.0), restart_on_error=target,
                            loop_rate=values.get("loop_rate", 60.0))
    if use == COMMAND_RELOADER:
        return CommandReloader(section=section, loop_rate=values.get("loop_rate", 1.0))
    if use == WATCHDOG:
        return WatchDog(section=section, loop_rate=values.get("loop_rate", 60.0),
                        watchers_regex=values.get("watchers_regex", ".*"),
                        msg_regex=values.get("msg_regex", WatchDog.msg_regex),
                        max_count=values.get("max_count", 3),
                        ip=values.get("ip", "127.0.0.1"), port=values.get("port", 1664),
                        stop_signal=values.get("watchers_stop_signal"),
                        graceful_timeout=values.get("watchers_graceful_timeout"))
    if use == FULL_STATS:
        return FullStats(section=section, statsd=statsd,
                         loop_rate=values.get("loop_rate", 60.0))
    return StatsdEmitter(section=section, statsd=statsd)


def _third_party(use: str, section: str, items: Mapping[str, str],
                 known: str) -> ThirdParty:
    """Circus's plugin runner needs circus, and imports the plugin's module: find
    both (without running the plugin's code: only the top-level package is
    looked up, as `check` must not execute what the config names)."""
    import importlib.util
    import sys
    module = use.partition(":")[0] if ":" in use else use.rpartition(".")[0]
    if not module or not re.fullmatch(r"[A-Za-z_][\w.]*", module):
        raise PluginConfigError(f"expected use = module.Class, got {use!r}", section, "use")
    for top, what in (("circus", "the circus package (`pip install circus`)"),
                      (module.partition(".")[0], f"the package that provides {module}")):
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise PluginConfigError(THIRD_PARTY.format(use=use, missing=what, known=known,
                                                       python=sys.executable),
                                    section, "use")
    options = {key: value.strip() for key, value in items.items() if key != "use"}
    options["name"] = section   # what Circus adds to a plugin's config
    return ThirdParty(section, use, tuple(sorted(options.items())))


def _check_watcher(name: str, watcher_sections: Mapping[str, str], section: str,
                   key: str) -> None:
    if name not in watcher_sections:
        raise PluginConfigError(f"no [watcher:{name}] is defined"
                                f"{_hint(name, watcher_sections)}", section, key)


def _name(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _positive(raw: str) -> float:
    value = _number(raw, "a number of seconds")
    if value <= 0:
        raise ValueError(f"must be more than 0, got {raw.strip()!r}")
    return value


def _rate(raw: str) -> float:
    value = _number(raw, "a rate from 0 to 1")
    if not 0 < value <= 1:
        raise ValueError(f"expected a rate above 0 and at most 1, got {raw.strip()!r}")
    return value


def _url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"https?://[^/\s]", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _msg_regex(raw: str) -> str:
    if "(?P<pid>" not in _regex(raw):
        raise ValueError("needs a (?P<pid>...) group: the heartbeat names its sender")
    return raw


def _refuse_children(raw: str) -> bool:
    if _bool(raw):
        raise ValueError("not supported by sockvisor: it measures and recycles the "
                         "worker; what the worker started goes with it")
    return False


# --------------------------------------------------------------------------- flapping

def flapping_restart_values(flapping: Flapping, min_uptime_default: float) -> dict[str, Any]:
    """The restart-policy values Circus's Flapping maps onto (module docstring)."""
    if not flapping.active:
        return {}
    values: dict[str, Any] = {
        "max_restarts": -1 if flapping.max_retry == -1
        else flapping.attempts * (flapping.max_retry + 1),
        "restart_window": (flapping.max_retry + 1 if flapping.max_retry >= 0 else 1)
        * (flapping.window + flapping.retry_in),
        "backoff_max": flapping.retry_in,
    }
    if flapping.window > min_uptime_default:
        values["min_uptime"] = flapping.window
    return values
