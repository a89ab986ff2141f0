"""The option registry: every key of every section, declared once.

Each section kind has one table (`_GLOBAL_OPTIONS`, `_SOCKET_OPTIONS`,
`_WATCHER_OPTIONS`) listing every key, how it is parsed and the Circus names
that mean the same thing (`aliases`), and one table of the Circus keys sockvisor
knows and refuses (`_Unsupported`) or accepts without effect (`_Ignored`: a
warning at `check` and `start`, unless the key is a knob of Circus's own
internals), each with its reason.  An unknown key is an error with a
did-you-mean, never silently kept: every key is used, refused or warned about.

A watcher option also declares what the rest of sockvisor needs to know about
it, so that no fact about an option is written anywhere else:
  * `field`: where its value lives in a `WatcherConfig` (a dotted path; the
    default is the dataclass's), or `value`, a function, where it is not one
    field; an option with neither is a spelling of another one (`ini_only`
    says which, or why it has no value of its own);
  * `change`: how a new value applies to a running watcher (`Change`): `set`'s
    "needs a reload" and reloadconfig's changed/unchanged split (`change_kind`);
  * `who`: who may change it over the control channel (`Who`):
    `OPERATOR_OPTIONS` (control/access.py) and `PRIVILEGED_WATCHER_OPTIONS`;
  * `show`: how `options` and `get` render it (JSON), when not its value;
  * `structured`: how `set`/`add` take a JSON list or object for it (env as a
    mapping, args as a list of words), so nothing is turned into INI text.
"""

from __future__ import annotations

import enum
import resource
import signal
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from sockvisor.config.hooks import (HOOK_POINTS, STATS_HOOK, describe_hook, parse_hook,
                                   parse_stats_hook)
from sockvisor.config.model import OutputConfig, OutputKind, ReadyKind, ReadyPolicy, WatcherConfig
from sockvisor.config.values import (
    _ENV_KEY, _operator_signals_of, _parse_bool, _parse_cgroup, _parse_circus_stream_class,
    _parse_float, _parse_grants, _parse_group, _parse_int, _parse_list, _parse_loggerconfig,
    _parse_max_restarts,
    _parse_nonempty, _parse_octal, _parse_operator_signals, _parse_output, _parse_ready,
    _parse_rlimit, _parse_rotate_when, _parse_signal, _parse_start_failure, _parse_str,
    _parse_user,
    signal_names)

class RunningWatcher(Protocol):
    """What `shown` reads of a running watcher: its config, and the attributes an
    option names in `live` (a count scaled at run time).  A Protocol, so that the
    config package does not import the watcher (which imports config)."""
    config: WatcherConfig


class Change(enum.Enum):
    """How a new value of a watcher option reaches a running watcher."""
    IN_PLACE = "in place"   # the watcher takes it at once; its workers are left alone
    SCALE = "scale"         # workers are started or stopped, none replaced
    RESTART = "restart"     # it is part of what a worker is: a rolling reload


class Who(enum.Enum):
    """Who may set a watcher option over the control channel (control/access.py)."""
    OPERATOR = "operator"   # endpoint_group members too: how the watcher is operated
    OWNER = "owner"         # the owner: how it restarts and stops (a tiny
    #                         ready_timeout or a huge graceful_timeout keeps it down)
    PRIVILEGED = "privileged"   # the owner: what runs, as whom, with which
    #                             environment and limits, where root writes its output


@dataclass(frozen=True)
class _Option:
    parse: Callable[[str], Any]
    aliases: tuple[str, ...] = ()     # Circus's (or other) names for the same thing
    # Watcher options only (see the module docstring):
    change: Change | None = None
    who: Who = Who.OWNER
    field: str | None = None
    value: Callable[[WatcherConfig], Any] | None = None
    show: Callable[[WatcherConfig], Any] | None = None
    live: str | None = None           # shown from the Watcher's attribute (a scaled count)
    structured: Callable[[Any], Any] | None = None
    ini_only: str = ""

    @property
    def kept(self) -> bool:
        """Whether a WatcherConfig holds this option's value (else it is a spelling)."""
        return self.field is not None or self.value is not None

    def value_in(self, config: WatcherConfig) -> Any:
        """This option's value in `config`, as its parser returns it (None: unset)."""
        if self.value is not None:
            return self.value(config)
        assert self.field is not None, "an ini_only option has no value"
        target: Any = config
        for part in self.field.split("."):
            target = target.get(part) if isinstance(target, Mapping) else getattr(target, part)
        return target

    @property
    def default(self) -> Any:
        """The value when the config does not give it: the dataclass's."""
        return self.value_in(_DEFAULTS)

    def shown(self, watcher: RunningWatcher) -> Any:
        """What `options` and `get` answer for it (JSON-friendly)."""
        if self.live is not None:
            return getattr(watcher, self.live)
        if self.show is not None:
            return self.show(watcher.config)
        return self.value_in(watcher.config)


_DEFAULTS = WatcherConfig(name="", cmd="")


@dataclass(frozen=True)
class _Unsupported:
    """A key we know (from Circus) and refuse, with the reason."""
    reason: str


@dataclass(frozen=True)
class _Ignored:
    """A Circus key accepted without effect, so Circus configs load.  It is
    warned about at `check` and `start` (what it asked for is not done, or done
    differently: the reason says how), unless it is `meaningless`: a knob of
    Circus's own internals whose every value means the same here."""
    reason: str
    meaningless: bool = False


_GLOBAL_OPTIONS: dict[str, _Option] = {
    "endpoint": _Option(_parse_nonempty),
    "pubsub_endpoint": _Option(_parse_nonempty),
    "endpoint_group": _Option(_parse_group),
    "endpoint_group_grants": _Option(_parse_grants),
    "endpoint_group_max_numprocesses": _Option(_parse_int(1, 100_000)),
    "curve_secret_key_file": _Option(_parse_nonempty),
    "curve_authorized_keys_dir": _Option(_parse_nonempty),
    "loglevel": _Option(_parse_str),
    "subreaper": _Option(_parse_bool),
    "umask": _Option(_parse_octal),
    "notify_socket_dir": _Option(_parse_nonempty),
    "fdstore": _Option(_parse_bool),
    "http": _Option(_parse_nonempty),
    "http_token_file": _Option(_parse_nonempty),
    # Circus's console switch and address: mapped onto `http` (_http_address).
    "httpd": _Option(_parse_bool),
    "httpd_host": _Option(_parse_nonempty),
    "httpd_port": _Option(_parse_int(0, 65535)),
    "cgroup": _Option(_parse_cgroup),
    "start_failure": _Option(_parse_start_failure),
    # Circus's circusd-stats switch: read by circus_plugins.py (a warning if true).
    "statsd": _Option(_parse_bool),
    # Circus's: a file root writes, so its folder must be root's (logdir.py).
    "pidfile": _Option(_parse_nonempty),
    "logoutput": _Option(_parse_nonempty),
    # Circus's logging configuration file: read and checked by the loader
    # (logconfig.py: root's only, applied off the event loop).
    "loggerconfig": _Option(_parse_loggerconfig),
}

_GLOBAL_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "check_delay": _Ignored("sockvisor does not poll: child exits are events"),
    "warmup_delay": _Ignored("sockvisor starts workers without a fixed delay"),
    "debug": _Ignored("use loglevel = debug"),
    # Circus's own garbage-collector debugging: nothing of it exists here.
    "debug_gc": _Ignored("Circus's own garbage-collector debugging", meaningless=True),
    "stats_endpoint": _Ignored("use the `stats` command"),
    "endpoint_owner": _Unsupported("use endpoint_group: sockvisor's endpoint is 0600 "
                                   "and a group can be given operator rights"),
    "papa_endpoint": _Unsupported("papa is not supported: sockvisor holds sockets itself"),
    "fqdn_prefix": _Ignored("not applicable"),
    "statsd_close_outputs": _Ignored("circusd-stats is not run (see statsd)"),
    "httpd_close_outputs": _Ignored("the console runs inside sockvisor: nothing to close"),
    "multicast_endpoint": _Ignored("sockvisor does not announce itself for cluster "
                                   "discovery"),
    # Which threading library Circus's own output streams use: internals only.
    "stream_backend": _Ignored("Circus's stream threading", meaningless=True),
}

_SOCKET_OPTIONS: dict[str, _Option] = {
    "host": _Option(_parse_nonempty),
    "port": _Option(_parse_int(0, 65535)),
    "path": _Option(_parse_nonempty),
    "family": _Option(_parse_str),
    "backlog": _Option(_parse_int(1, 1 << 20)),
    "mode": _Option(_parse_octal),
    "owner": _Option(_parse_user),
    "group": _Option(_parse_group),
    "blocking": _Option(_parse_bool),
    "reuseport": _Option(_parse_bool, aliases=("so_reuseport",)),
    "type": _Option(_parse_str),
    # Circus's umask at bind(): the unix socket file gets mode 0777 & ~umask.
    "umask": _Option(_parse_octal),
}

_SOCKET_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    # Circus: unlink whatever is at the path (else fail if it exists).
    "replace": _Ignored("sockvisor always replaces a stale socket file (one nobody "
                        "listens on) and never removes a socket in use or a file that "
                        "is not a socket"),
    "interface": _Unsupported("SO_BINDTODEVICE is not supported; bind to the interface's address"),
    "proto": _Unsupported("only the default protocol is supported"),
}

# ---- structured values from the control channel (`set`, `add`)

def _words(value: Any) -> tuple[str, ...]:
    """cmd or args as a JSON list: each item one word, as given (no re-splitting)."""
    if not isinstance(value, list) or not all(
            isinstance(word, (str, int, float)) and not isinstance(word, bool)
            for word in value):
        raise ValueError("expected a string or a list of strings")
    return tuple(str(word) for word in value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError("expected a string or a list of names")
    return tuple(name.strip() for name in value if name.strip())


def _env_mapping(value: Any) -> dict[str, str]:
    """env as a JSON object: NAME -> VALUE, each value exactly as given."""
    if not isinstance(value, dict):
        raise ValueError("expected NAME=VALUE pairs or an object of NAME: VALUE")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise ValueError(f"not a valid environment variable name: {str(key)[:60]!r}")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"{key}: expected a string, got {type(item).__name__}")
        env[key] = str(item)
    return env


def _signal_words(value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise ValueError("expected signal names such as HUP or USR1")
    return _operator_signals_of(value)


def _show_output(output: OutputConfig) -> str:
    return f"file:{output.path}" if output.kind == OutputKind.FILE else output.kind.value


def _show_ready(config: WatcherConfig) -> str:
    if config.ready.kind == ReadyKind.DELAY:
        return f"delay:{config.ready.delay:g}"
    return config.ready.kind.value


_RESTART, _IN_PLACE, _SCALE = Change.RESTART, Change.IN_PLACE, Change.SCALE
_OPERATOR, _PRIVILEGED = Who.OPERATOR, Who.PRIVILEGED

# In the order `options` shows them.
_WATCHER_OPTIONS: dict[str, _Option] = {
    # cmd is the program and, unless args is given too, its arguments; the loader
    # splits it (after $(sockvisor.env.X)), so its value in a config is the program.
    "cmd": _Option(_parse_nonempty, change=_RESTART, who=_PRIVILEGED,
                   value=lambda c: (c.cmd,), show=lambda c: c.cmd, structured=_words),
    "args": _Option(_parse_str, change=_RESTART, who=_PRIVILEGED,
                    value=lambda c: tuple(c.args), show=lambda c: list(c.args),
                    structured=_words),
    "numprocesses": _Option(_parse_int(0, 100_000), change=_SCALE, who=_OPERATOR,
                            field="numprocesses", live="numprocesses"),
    "sockets": _Option(_parse_list, change=_RESTART, who=_PRIVILEGED,
                       value=lambda c: tuple(c.sockets), show=lambda c: list(c.sockets),
                       structured=_names),
    "use_sockets": _Option(_parse_bool, change=_RESTART, who=_PRIVILEGED,
                           ini_only="Circus's: sockets = every [socket:NAME]"),
    # Circus's pause after starting each worker, its way of letting one settle:
    # read as `ready = delay:SECONDS` when `ready` is not given (loader.py).
    "warmup_delay": _Option(_parse_float(0.0), change=_IN_PLACE,
                            ini_only="Circus's: ready = delay:SECONDS unless ready is given"),
    "uid": _Option(_parse_user, aliases=("user",), change=_RESTART, who=_PRIVILEGED,
                   field="uid"),
    "gid": _Option(_parse_group, aliases=("group",), change=_RESTART, who=_PRIVILEGED,
                   field="gid"),
    "working_dir": _Option(_parse_nonempty, change=_RESTART, who=_PRIVILEGED,
                           field="working_dir"),
    # Its value: what env and [env:NAME] set; `options` shows all the worker gets.
    "env": _Option(_parse_str, change=_RESTART, who=_PRIVILEGED,
                   value=lambda c: dict(c.explicit_env), show=lambda c: dict(c.env),
                   structured=_env_mapping),
    "copy_env": _Option(_parse_bool, change=_RESTART, who=_PRIVILEGED, field="copy_env"),
    # Circus's: sockvisor's sys.path as the worker's PYTHONPATH (under env).
    "copy_path": _Option(_parse_bool, change=_RESTART, who=_PRIVILEGED, field="copy_path"),
    # Circus's load_virtualenv: its bin first in PATH, its packages in PYTHONPATH.
    "virtualenv": _Option(_parse_nonempty, change=_RESTART, who=_PRIVILEGED,
                          field="virtualenv"),
    "virtualenv_py_ver": _Option(_parse_nonempty, change=_RESTART, who=_PRIVILEGED,
                                 field="virtualenv_py_ver"),
    "umask": _Option(_parse_octal, change=_RESTART, who=_PRIVILEGED, field="umask",
                     show=lambda c: None if c.umask is None else oct(c.umask)),
    "stop_signal": _Option(_parse_signal, change=_IN_PLACE, field="stop_signal",
                           show=lambda c: signal.Signals(c.stop_signal).name),
    # Signals `endpoint_group` members may send without the `signal` grant
    # (control/access.py); none by default: HUP, USR1, USR2 kill a program that
    # does not handle them, USR1 opens Node's debugger.
    "operator_signals": _Option(_parse_operator_signals, change=_IN_PLACE,
                                field="operator_signals",
                                show=lambda c: signal_names(c.operator_signals),
                                structured=_signal_words),
    "graceful_timeout": _Option(_parse_float(), change=_IN_PLACE, field="graceful_timeout"),
    "ready": _Option(_parse_ready, change=_IN_PLACE,
                     value=lambda c: ReadyPolicy(c.ready.kind, c.ready.delay),
                     show=_show_ready),
    "ready_timeout": _Option(_parse_float(0.0), change=_IN_PLACE, field="ready.timeout"),
    # Its value may be unset (None: min_uptime); `options` shows the one in effect.
    "ready_settle": _Option(_parse_float(0.0), change=_IN_PLACE, field="ready.settle",
                            show=lambda c: c.ready_settle),
    "reload_batch": _Option(_parse_int(0), change=_IN_PLACE, who=_OPERATOR,
                            field="reload_batch"),
    "respawn": _Option(_parse_bool, change=_IN_PLACE, field="restart.respawn"),
    "min_uptime": _Option(_parse_float(), change=_IN_PLACE, field="restart.min_uptime"),
    "backoff_base": _Option(_parse_float(0.0), change=_IN_PLACE,
                            field="restart.backoff_base"),
    "backoff_max": _Option(_parse_float(0.0), change=_IN_PLACE, field="restart.backoff_max"),
    "max_restarts": _Option(_parse_max_restarts, aliases=("max_retry",), change=_IN_PLACE,
                            field="restart.max_restarts"),
    "restart_window": _Option(_parse_float(0.0), change=_IN_PLACE, field="restart.window"),
    "autostart": _Option(_parse_bool, change=_IN_PLACE, field="autostart"),
    # What runs: /bin/sh -c with cmd and args quoted (WatcherConfig.argv).
    "shell": _Option(_parse_bool, change=_RESTART, who=_PRIVILEGED, field="shell"),
    "shell_args": _Option(_parse_str, change=_RESTART, who=_PRIVILEGED,
                          value=lambda c: tuple(c.shell_args),
                          show=lambda c: list(c.shell_args), structured=_words),
    # At most one worker: numprocesses > 1 is refused in the file, by `set`, `incr`.
    "singleton": _Option(_parse_bool, change=_IN_PLACE, field="singleton"),
    # Start-up starts watchers by priority, highest first (Circus's order), each
    # group ready before the next; shut-down stops them in reverse (supervisor.py).
    "priority": _Option(_parse_int(), change=_IN_PLACE, field="priority"),
    # Circus's: `reload` with nothing changed sends SIGHUP to the workers, which
    # keep their pids; a reload with a new config (set, reloadconfig) still rolls.
    "send_hup": _Option(_parse_bool, change=_IN_PLACE, field="send_hup"),
    # Circus's: no workers until a connection is pending on one of the watcher's
    # sockets, and a worker that exits is replaced only at the next one (WAITING).
    "on_demand": _Option(_parse_bool, change=_IN_PLACE, field="on_demand"),
    # Read from the file by circus_plugins.py: recycling by age, and the flapping
    # plugin's per-watcher overrides (mapped onto the restart policy by the loader's
    # apply_flapping).  Not kept in a WatcherConfig: `set`/`add` refuse them, and
    # reloadconfig applies them by restarting the plugins.
    "max_age": _Option(_parse_float(0.0), change=_IN_PLACE,
                       ini_only="read by circus_plugins.py; applied by reloadconfig"),
    "max_age_variance": _Option(_parse_float(0.0), change=_IN_PLACE,
                                ini_only="read by circus_plugins.py; applied by "
                                         "reloadconfig"),
    # Circus's hooks, run as commands as the watcher's user (hooks.py); what runs
    # is the config's to say: privileged.  A new one applies from the next event.
    **{f"hooks.{point}": _Option(parse_hook, change=_IN_PLACE, who=_PRIVILEGED,
                                 value=lambda c, p=point: c.hooks.get(p),
                                 show=lambda c, p=point: describe_hook(c.hooks.get(p)))
       for point in HOOK_POINTS},
    # Circus's hook for `stats --extended`: a Python callable (stats_cmd.py).
    f"hooks.{STATS_HOOK}": _Option(parse_stats_hook, change=_IN_PLACE, who=_PRIVILEGED,
                                   value=lambda c: c.hooks.get(STATS_HOOK),
                                   show=lambda c: describe_hook(c.hooks.get(STATS_HOOK))),
    # The interpreter that runs the Python hooks, as the watcher's user (None:
    # the virtualenv's python, else sockvisor's own).
    "hook_python": _Option(_parse_nonempty, change=_IN_PLACE, who=_PRIVILEGED,
                           field="hook_python"),
    # How long a hook may run before its process group is SIGKILLed (a failure).
    "hook_timeout": _Option(_parse_float(0.1), change=_IN_PLACE, field="hook_timeout"),
    **{f"flapping.{key}": _Option(_parse_str, change=_IN_PLACE,
                                  ini_only="the flapping plugin's, mapped onto the "
                                           "restart policy; applied by reloadconfig")
       for key in ("attempts", "window", "retry_in", "max_retry", "active")},
}
for _stream in ("stdout", "stderr"):
    # Where output goes is a file root opens and appends to: privileged.  Its
    # rotation applies to the running workers' sink at once (output.py).
    _WATCHER_OPTIONS.update({
        _stream: _Option(_parse_output, change=_RESTART, who=_PRIVILEGED,
                         value=lambda c, s=_stream: OutputConfig(
                             getattr(c, s).kind, getattr(c, s).path,
                             watched=getattr(c, s).watched),
                         show=lambda c, s=_stream: _show_output(getattr(c, s))),
        f"{_stream}_max_bytes": _Option(_parse_int(0),
                                        aliases=(f"{_stream}_stream.max_bytes",),
                                        change=_IN_PLACE, field=f"{_stream}.max_bytes"),
        f"{_stream}_backup_count": _Option(_parse_int(0),
                                           aliases=(f"{_stream}_stream.backup_count",),
                                           change=_IN_PLACE,
                                           field=f"{_stream}.backup_count"),
        # Rotation by time (Circus's TimedRotatingFileStream, timed_rotation.py).
        f"{_stream}_rotate_when": _Option(_parse_rotate_when,
                                          aliases=(f"{_stream}_stream.rotate_when",),
                                          change=_IN_PLACE, field=f"{_stream}.rotate_when"),
        f"{_stream}_rotate_interval": _Option(_parse_int(1, 1_000_000),
                                              aliases=(f"{_stream}_stream.rotate_interval",),
                                              change=_IN_PLACE,
                                              field=f"{_stream}.rotate_interval"),
        f"{_stream}_rotate_utc": _Option(_parse_bool, aliases=(f"{_stream}_stream.utc",),
                                         change=_IN_PLACE, field=f"{_stream}.rotate_utc"),
        f"{_stream}_stream.class": _Option(_parse_circus_stream_class, change=_RESTART,
                                           who=_PRIVILEGED,
                                           ini_only=f"Circus's spelling of {_stream}"),
        f"{_stream}_stream.filename": _Option(_parse_nonempty, change=_RESTART,
                                              who=_PRIVILEGED,
                                              ini_only=f"Circus's spelling of {_stream}"),
    })

# Every limit this platform has (as Circus does): `rlimit_nofile` -> RLIMIT_NOFILE.
# process.py sets them by this table.
RLIMITS: dict[str, int] = {name[len("RLIMIT_"):].lower(): getattr(resource, name)
                           for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}
for _resource in RLIMITS:
    # None in `options`: sockvisor's own limit is inherited.
    _WATCHER_OPTIONS[f"rlimit_{_resource}"] = _Option(
        _parse_rlimit, change=_RESTART, who=_PRIVILEGED, field=f"rlimits.{_resource}")

_WATCHER_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    # A hooks.NAME that is not a hook point (those are options above).
    "hooks": _Unsupported("unknown hook point; Circus's (and sockvisor's) are: "
                          + ", ".join((*HOOK_POINTS, STATS_HOOK))),
    "close_child_stdin": _Ignored("workers always get /dev/null as stdin"),
    "close_child_stdout": _Unsupported("use stdout = null"),
    "close_child_stderr": _Unsupported("use stderr = null"),
    "stop_children": _Ignored("sockvisor always stops a worker's whole process group"),
    "respawn_delay": _Unsupported("use backoff_base"),
    "executable": _Unsupported("put the program in cmd"),
    "use_papa": _Unsupported("papa is not supported: sockvisor holds sockets itself"),
    "stream_backend": _Ignored("Circus's stream threading", meaningless=True),
    "stdin_socket": _Unsupported("stdin sockets are not supported"),
    # Read by no part of Circus 0.19 (its flapping plugin reads flapping.*).
    "check_flapping": _Ignored("sockvisor's flapping limit is max_restarts within "
                               "restart_window"),
    # A flapping.* key the plugin does not read (the known ones are options).
    "flapping": _Unsupported("unknown flapping option; Circus's are flapping.attempts, "
                             "flapping.window, flapping.retry_in, flapping.max_retry "
                             "and flapping.active"),
}
for _stream in ("stdout", "stderr"):
    _WATCHER_CIRCUS.update({
        # Lines are written as the worker wrote them; journald stamps them itself.
        f"{_stream}_stream.time_format": _Ignored("sockvisor does not timestamp "
                                                  "output lines"),
        f"{_stream}_stream.refresh_time": _Ignored("sockvisor writes output as it "
                                                   "arrives"),
        f"{_stream}_stream.color": _Ignored("sockvisor does not colour output"),
    })

# Longest value any key may have.  execve refuses a single argument or environment
# string over 128 KiB (MAX_ARG_STRLEN), so nothing longer can be meant; and the
# bound keeps the loader's work proportional to a sane file (a 10 MB `args` once


# --------------------------------------------------------------------------- derived

def watcher_option(key: str) -> str | None:
    """The canonical name of watcher option `key` (or an alias of one); None if unknown."""
    return _WATCHER_BY_NAME.get(key)


_WATCHER_BY_NAME: dict[str, str] = {
    name: canonical for canonical, option in _WATCHER_OPTIONS.items()
    for name in (canonical, *option.aliases)}

# What `set` may change from the group endpoint (control/access.py).
OPERATOR_OPTIONS = frozenset(name for name, option in _WATCHER_OPTIONS.items()
                             if option.who is Who.OPERATOR)

# Options that decide what runs, as whom, with what, or where root writes: only
# sockvisor's owner may set them (every spelling).
PRIVILEGED_WATCHER_OPTIONS = frozenset(
    name for canonical, option in _WATCHER_OPTIONS.items() if option.who is Who.PRIVILEGED
    for name in (canonical, *option.aliases))


def shown_options(watcher: RunningWatcher) -> dict[str, Any]:
    """Every option of `watcher` that has a value of its own, as `options` shows it."""
    return {name: option.shown(watcher) for name, option in _WATCHER_OPTIONS.items()
            if option.kept}


def changes(keys: "set[str] | frozenset[str]") -> frozenset[Change]:
    """How setting the options `keys` (canonical names) applies."""
    return frozenset(_WATCHER_OPTIONS[key].change for key in keys  # type: ignore[misc]
                     if key in _WATCHER_OPTIONS)


def change_kind(old: WatcherConfig, new: WatcherConfig) -> frozenset[Change]:
    """How a running watcher goes from `old` to `new` (reloadconfig): empty when
    nothing changed; RESTART among them when new workers are needed."""
    kinds = {option.change for option in _WATCHER_OPTIONS.values()
             if option.kept and option.value_in(old) != option.value_in(new)}
    if not kinds and old != new:
        # A difference no option declares (what is derived from them: the full env,
        # the user's name and home): new workers are the safe way to apply it.
        kinds.add(Change.RESTART)
    return frozenset(kinds)  # type: ignore[arg-type]
