"""The INI configuration: parsing, validation and the frozen dataclasses the rest uses.

Everything a user can get wrong in a config file is caught here, before a socket
is bound or a worker spawned, and reported as a `ConfigError` that names the file,
the section and the key.  Each section kind has one option table (`_SOCKET_OPTIONS`,
`_WATCHER_OPTIONS`, `_GLOBAL_OPTIONS`) that lists every key, how it is parsed and
the Circus names that mean the same thing; an unknown key is an error with a
did-you-mean, never silently kept.

Checked across sections, because each would otherwise surface only after `start`
had bound the ports: a config needs a watcher; no two sockets may share an
address; no value may be longer than 64 KiB (nothing longer can reach exec, and
the loader stays linear in the file) or hold a NUL.  Whether each worker's user can enter its
working_dir and run its program is asked as that user, by preflight.py.

Substitutions:
  * `$(sockvisor.env.X)` / `$(circus.env.X)` are resolved here, against the watcher's
    final environment (its `env` on top of sockvisor's own environment);
  * `$(sockvisor.wid)` and `$(sockvisor.sockets.NAME)` (and the `circus.` spellings)
    depend on the worker and are resolved at spawn time by `expand_worker_args`.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import enum
import grp
import ipaddress
import os
import pwd
import re
import resource
import shlex
import signal
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sockvisor import circus_plugins, logdir, wholenumber


class ConfigError(Exception):
    """A config problem, located as precisely as we know: file, section, key."""

    def __init__(self, message: str, *, path: str | None = None,
                 section: str | None = None, key: str | None = None):
        self.message = message
        self.path = path
        self.section = section
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.path or "<config>"]
        if self.section is not None:
            where.append(f"[{self.section}]")
        if self.key is not None:
            where.append(self.key)
        return f"{': '.join(where)}: {self.message}"


class OutputKind(enum.Enum):
    INHERIT = "inherit"   # the worker writes to sockvisor's own stdout/stderr
    NULL = "null"         # /dev/null
    FILE = "file"         # a file sockvisor writes, rotated by size
    PREFIX = "prefix"     # through sockvisor, each line prefixed `watcher[pid]`


class ReadyKind(enum.Enum):
    STARTED = "started"   # exec succeeded
    NOTIFY = "notify"     # the worker sent READY=1 to its NOTIFY_SOCKET
    DELAY = "delay"       # the worker stayed alive this many seconds


@dataclass(frozen=True)
class OutputConfig:
    kind: OutputKind = OutputKind.INHERIT
    path: str | None = None
    max_bytes: int = 0          # 0: never rotate
    backup_count: int = 5


@dataclass(frozen=True)
class ReadyPolicy:
    kind: ReadyKind = ReadyKind.STARTED
    delay: float = 0.0
    timeout: float = 60.0
    # How long a ready worker must then stay alive before it counts as settled
    # (a reload retires old workers only for settled new ones); None: the
    # watcher's min_uptime (`WatcherConfig.ready_settle`).
    settle: float | None = None


UNLIMITED_RESTARTS = -1   # max_restarts: retry for ever (Circus's max_retry = -1)


@dataclass(frozen=True)
class RestartPolicy:
    respawn: bool = True
    # A worker that dies before `min_uptime` seconds is a failed start: it is
    # restarted after an exponential backoff, and too many of them make the
    # watcher FATAL.  One that ran longer is replaced at once.
    min_uptime: float = 1.0
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    max_restarts: int = 5       # failed starts allowed within `window`...
    window: float = 60.0        # ...before the watcher goes FATAL
    # (max_restarts = UNLIMITED_RESTARTS: never)


@dataclass(frozen=True)
class SocketConfig:
    name: str
    family: socket.AddressFamily
    host: str | None = None
    port: int | None = None
    path: str | None = None
    backlog: int = 2048
    mode: int | None = None       # unix sockets: file mode
    owner: int | None = None      # unix sockets: uid
    group: int | None = None      # unix sockets: gid
    blocking: bool = True         # how workers get the shared file
    reuseport: bool = False

    @property
    def is_unix(self) -> bool:
        return self.family == socket.AF_UNIX

    def describe(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WatcherConfig:
    name: str
    cmd: str
    args: tuple[str, ...] = ()
    numprocesses: int = 1
    sockets: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None
    user: str | None = None        # the name of `uid`, for USER/LOGNAME/HOME
    home: str | None = None
    working_dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)   # all the worker gets
    copy_env: bool = False
    # What `env` / [env:NAME] set, apart from what copy_env copied: what `set`
    # must carry over when it rebuilds the watcher (it copies the rest anew).
    explicit_env: Mapping[str, str] = field(default_factory=dict)
    umask: int | None = None
    stop_signal: int = signal.SIGTERM
    # What endpoint_group members may signal without the `signal` grant.
    operator_signals: frozenset[int] = frozenset()
    graceful_timeout: float = 30.0
    restart: RestartPolicy = RestartPolicy()
    ready: ReadyPolicy = ReadyPolicy()
    reload_batch: int = 0          # workers replaced at a time in a reload; 0: all
    stdout: OutputConfig = OutputConfig()
    stderr: OutputConfig = OutputConfig()
    autostart: bool = True
    rlimits: Mapping[str, int] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return [self.cmd, *self.args]

    @property
    def ready_settle(self) -> float:
        """Seconds a worker must stay alive after it is ready to count as settled."""
        return self.restart.min_uptime if self.ready.settle is None else self.ready.settle


@dataclass(frozen=True)
class GlobalConfig:
    endpoint: str | None = None          # None: the default ipc path
    pubsub_endpoint: str | None = None   # None: next to the control endpoint
    endpoint_group: int | None = None
    # What endpoint_group members may do beyond operating (control/access.py),
    # and the most workers they may scale one watcher to (None: 4 per CPU).
    endpoint_group_grants: frozenset[str] = frozenset()
    endpoint_group_max_numprocesses: int | None = None
    curve_secret_key_file: str | None = None
    curve_authorized_keys_dir: str | None = None
    loglevel: str = "info"
    subreaper: bool = False
    umask: int | None = None
    notify_socket_dir: str | None = None
    # Hand the listening sockets to the service manager's fd store (FDSTORE=1).
    # None: only if $FDSTORE says the store is configured (systemd >= 254 sets
    # it); true for older managers (FileDescriptorStoreMax= set but no $FDSTORE);
    # false: never.
    fdstore: bool | None = None
    # The web console, HTTP API and /metrics (sockvisor/http/): "HOST:PORT" or
    # "unix:/PATH"; None: off.  The token file: the operator's own bearer token
    # (required for a non-loopback address); else one is made at each start.
    http: str | None = None
    http_token_file: str | None = None
    # A cgroup per worker (see cgroup.py): auto (where cgroup v2 is writable and,
    # under systemd, delegated), on (required: start fails without), off.
    cgroup: str = "auto"
    # What `start` does when an autostart watcher cannot start (goes FATAL before
    # start-up is over): "exit" fails the start (no READY=1, exit status 4) rather
    # than hold a port nobody serves; "continue" serves the other watchers.
    start_failure: str = "exit"


@dataclass(frozen=True)
class Config:
    path: str
    globals: GlobalConfig
    sockets: Mapping[str, SocketConfig]
    watchers: Mapping[str, WatcherConfig]
    warnings: tuple[str, ...] = ()   # Circus keys accepted but meaningless here
    # [plugin:NAME] sections, max_age, flapping: see circus_plugins.py.
    plugins: circus_plugins.PluginSetup = circus_plugins.PluginSetup()


# --------------------------------------------------------------------------- parsers
# Each parser takes the raw string and returns the value or raises ValueError
# with a message that reads well after "file: [section] key: ".

def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            if not raw.isascii():   # int() takes "١٢" (Arabic-Indic digits) for 12
                raise ValueError
            value = int(raw.strip(), 0)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}, got {value}")
        return value
    return parse


def _parse_max_restarts(raw: str) -> int:
    # -1: never FATAL, as Circus's `max_retry = -1` ("retry forever"); the backoff
    # still spaces the attempts out, up to backoff_max.
    if raw.strip() == "-1":
        return UNLIMITED_RESTARTS
    try:
        return _parse_int(0)(raw)
    except ValueError as exc:
        raise ValueError(f"{exc} (or -1: no limit)") from None


# The longest any duration option may be (graceful_timeout, ready_timeout,
# min_uptime, the backoff, restart_window, a ready delay).  float() takes "inf",
# "nan" and "1e308": a graceful_timeout of inf made a stop that never ends, with
# every later command queued behind it and SIGTERM to sockvisor hanging.  A day
# is far beyond any real timeout and still ends.
MAX_SECONDS = 86400.0


def _parse_float(low: float = 0.0, high: float = MAX_SECONDS) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        # `not low <= value <= high` is also true of nan.
        if not low <= value <= high:
            day = " (1 day)" if high == MAX_SECONDS else ""
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}{day}, "
                             f"got {raw.strip()!r}")
        return value
    return parse


def _parse_octal(raw: str) -> int:
    try:
        value = int(raw.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mode such as 0660, got {raw!r}") from None
    if not 0 <= value <= 0o7777:
        raise ValueError(f"mode out of range: {raw!r}")
    return value


def _parse_signal(raw: str) -> int:
    name = raw.strip().upper()
    if wholenumber.is_digits(name):
        number = int(name)
        if number in {s.value for s in signal.Signals}:
            return number
        raise ValueError(f"unknown signal number {number}")
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name].value
    except KeyError:
        raise ValueError(f"unknown signal {raw.strip()!r}") from None


def _parse_operator_signals(raw: str) -> frozenset[int]:
    """`operator_signals = HUP USR1`: signal names, no numbers (a list an
    operator's rights depend on should say what it means), no duplicates."""
    signals: set[int] = set()
    for word in _parse_list(raw):
        name = word.upper()
        if not (name.isascii() and name[:1].isalpha()):
            raise ValueError(f"expected signal names such as HUP or USR1, got {word!r}")
        name = name if name.startswith("SIG") else "SIG" + name
        if name not in signal.Signals.__members__:
            raise ValueError(f"unknown signal {word!r}")
        number = signal.Signals[name].value
        if number in signals:
            raise ValueError(f"{word!r} is listed twice")
        signals.add(number)
    return frozenset(signals)


def signal_names(signals: "frozenset[int] | set[int]") -> list[str]:
    """`operator_signals` as shown and written back: HUP, USR1 (by number)."""
    return [signal.Signals(number).name[len("SIG"):] for number in sorted(signals)]


def _parse_cgroup(raw: str) -> str:
    value = raw.strip().lower()
    if value == "auto":
        return value
    try:
        return "on" if _parse_bool(value) else "off"
    except ValueError:
        raise ValueError(f"expected auto, on or off, got {raw!r}") from None


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_nonempty(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item for item in re.split(r"[\s,]+", raw.strip()) if item)


_PLAIN = re.compile(r"[^ \t\r\n'\"\\]+")
_IN_DOUBLE_QUOTES = re.compile(r'[^"\\]+')
_BLANK = re.compile(r"[ \t\r\n]+")


def split_words(text: str) -> list[str]:
    """Split `text` into words as `shlex.split` does (POSIX rules, no comments).

    Ours because shlex builds each word a character at a time by string
    concatenation, which is quadratic: one 1 MB word took 12 s, 10 MB hours.
    This one consumes runs of plain characters with a regex: linear.  Raises
    ValueError with shlex's messages for an unclosed quote or a trailing `\\`.
    """
    words: list[str] = []
    position, end = 0, len(text)
    while True:
        blank = _BLANK.match(text, position)
        if blank:
            position = blank.end()
        if position >= end:
            return words
        parts: list[str] = []
        while position < end and text[position] not in " \t\r\n":
            char = text[position]
            if char == "'":
                close = text.find("'", position + 1)
                if close < 0:
                    raise ValueError("No closing quotation")
                parts.append(text[position + 1:close])
                position = close + 1
            elif char == '"':
                position += 1
                while True:
                    run = _IN_DOUBLE_QUOTES.match(text, position)
                    if run:
                        parts.append(run.group())
                        position = run.end()
                    if position >= end:
                        raise ValueError("No closing quotation")
                    if text[position] == '"':
                        position += 1
                        break
                    # A backslash: only \" and \\ are escapes inside double quotes.
                    if position + 1 >= end:
                        raise ValueError("No escaped character")
                    following = text[position + 1]
                    parts.append(following if following in '"\\' else "\\" + following)
                    position += 2
            elif char == "\\":
                if position + 1 >= end:
                    raise ValueError("No escaped character")
                parts.append(text[position + 1])
                position += 2
            else:
                run = _PLAIN.match(text, position)
                assert run is not None
                parts.append(run.group())
                position = run.end()
        words.append("".join(parts))


def _parse_user(raw: str) -> pwd.struct_passwd:
    name = raw.strip()
    try:
        return pwd.getpwuid(int(name)) if wholenumber.is_digits(name) else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise ValueError(f"unknown user {name!r}") from None


def _parse_group(raw: str) -> int:
    name = raw.strip()
    try:
        return grp.getgrgid(int(name)).gr_gid if wholenumber.is_digits(name) else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        raise ValueError(f"unknown group {name!r}") from None


# Words of `endpoint_group_grants`: what only the owner may do unless granted.
ENDPOINT_GROUP_GRANTS = ("stop", "signal", "quit", "rm", "secrets", "scale")


def _parse_grants(raw: str) -> frozenset[str]:
    words = _parse_list(raw.lower())
    unknown = [word for word in words if word not in ENDPOINT_GROUP_GRANTS]
    if unknown:
        raise ValueError(f"unknown grant {unknown[0]!r}; expected some of "
                         f"{', '.join(ENDPOINT_GROUP_GRANTS)}")
    return frozenset(words)


def _parse_output(raw: str) -> OutputConfig:
    value = raw.strip()
    lowered = value.lower()
    if lowered in ("inherit", ""):
        return OutputConfig(OutputKind.INHERIT)
    if lowered in ("null", "none", "/dev/null"):
        return OutputConfig(OutputKind.NULL)
    if lowered in ("prefix", "sockvisor"):
        return OutputConfig(OutputKind.PREFIX)
    if lowered.startswith("file:"):
        value = value[len("file:"):].strip()
    if value.startswith("/"):
        return OutputConfig(OutputKind.FILE, path=value)
    raise ValueError("expected inherit, null, prefix, or file:/absolute/path, "
                     f"got {raw.strip()!r}")


def _parse_ready(raw: str) -> ReadyPolicy:
    value = raw.strip().lower()
    if value in ("started", "exec"):
        return ReadyPolicy(ReadyKind.STARTED)
    if value == "notify":
        return ReadyPolicy(ReadyKind.NOTIFY)
    if value.startswith("delay:"):
        return ReadyPolicy(ReadyKind.DELAY, delay=_parse_float()(value[len("delay:"):]))
    raise ValueError(f"expected started, notify or delay:SECONDS, got {raw.strip()!r}")


def _parse_circus_stream_class(raw: str) -> OutputKind:
    # Circus's own classes, bare or as circus.stream.X; `mypkg.FileStream` is a
    # user's class that happens to share the name, not ours to imitate.
    module, _, name = raw.strip().rpartition(".")
    if module and not (module + ".").startswith("circus.stream."):
        name = ""
    kinds = {"FileStream": OutputKind.FILE, "WatchedFileStream": OutputKind.FILE,
             "NullStream": OutputKind.NULL, "StdoutStream": OutputKind.PREFIX,
             "FancyStdoutStream": OutputKind.PREFIX}
    if name not in kinds:
        raise ValueError(f"Circus stream class {raw.strip()!r} is not supported by "
                         "sockvisor (supported: FileStream, NullStream, StdoutStream)")
    return kinds[name]


def _parse_start_failure(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("exit", "continue"):
        raise ValueError(f"expected exit or continue, got {raw.strip()!r}")
    return value


@dataclass(frozen=True)
class _Option:
    parse: Callable[[str], Any]
    aliases: tuple[str, ...] = ()     # Circus's (or other) names for the same thing


@dataclass(frozen=True)
class _Unsupported:
    """A key we know (from Circus) and refuse, with the reason."""
    reason: str


@dataclass(frozen=True)
class _Ignored:
    """A Circus key that has no meaning here; accepted so Circus configs load."""
    reason: str


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
}

_GLOBAL_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "check_delay": _Ignored("sockvisor does not poll: child exits are events"),
    "warmup_delay": _Ignored("sockvisor starts workers without a fixed delay"),
    "debug": _Ignored("use loglevel = debug"),
    "debug_gc": _Ignored("not applicable"),
    "stats_endpoint": _Ignored("use the `stats` command"),
    "endpoint_owner": _Unsupported("use endpoint_group: sockvisor's endpoint is 0600 "
                                   "and a group can be given operator rights"),
    "pidfile": _Unsupported("sockvisor does not daemonize; use systemd or a container"),
    "logoutput": _Unsupported("sockvisor logs to stderr (journald under systemd)"),
    "loggerconfig": _Unsupported("sockvisor logs to stderr (journald under systemd)"),
    "papa_endpoint": _Unsupported("papa is not supported: sockvisor holds sockets itself"),
    "fqdn_prefix": _Ignored("not applicable"),
    "include": _Unsupported("sockvisor reads one config file; merge the included "
                            "files into it"),
    "include_dir": _Unsupported("sockvisor reads one config file; merge the included "
                                "files into it"),
    "statsd_close_outputs": _Ignored("circusd-stats is not run (see statsd)"),
    "httpd_close_outputs": _Ignored("the console runs inside sockvisor: nothing to close"),
    "multicast_endpoint": _Ignored("sockvisor does not announce itself for cluster "
                                   "discovery"),
    "stream_backend": _Ignored("not applicable"),
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
    "umask": _Option(_parse_octal),
    "replace": _Option(_parse_bool),
}

_SOCKET_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "interface": _Unsupported("SO_BINDTODEVICE is not supported; bind to the interface's address"),
    "proto": _Unsupported("only the default protocol is supported"),
}

_WATCHER_OPTIONS: dict[str, _Option] = {
    "cmd": _Option(_parse_nonempty),
    "args": _Option(_parse_str),
    "numprocesses": _Option(_parse_int(0, 100_000)),
    "sockets": _Option(_parse_list),
    "use_sockets": _Option(_parse_bool),
    "uid": _Option(_parse_user, aliases=("user",)),
    "gid": _Option(_parse_group, aliases=("group",)),
    "working_dir": _Option(_parse_nonempty),
    "env": _Option(_parse_str),
    "copy_env": _Option(_parse_bool),
    "copy_path": _Option(_parse_bool),
    "umask": _Option(_parse_octal),
    "stop_signal": _Option(_parse_signal),
    # Signals `endpoint_group` members may send without the `signal` grant
    # (control/access.py); none by default: HUP, USR1, USR2 kill a program that
    # does not handle them, USR1 opens Node's debugger.
    "operator_signals": _Option(_parse_operator_signals),
    "graceful_timeout": _Option(_parse_float()),
    "respawn": _Option(_parse_bool),
    "min_uptime": _Option(_parse_float()),
    "backoff_base": _Option(_parse_float(0.0)),
    "backoff_max": _Option(_parse_float(0.0)),
    "max_restarts": _Option(_parse_max_restarts, aliases=("max_retry",)),
    "restart_window": _Option(_parse_float(0.0)),
    "stdout": _Option(_parse_output),
    "stderr": _Option(_parse_output),
    "stdout_max_bytes": _Option(_parse_int(0), aliases=("stdout_stream.max_bytes",)),
    "stdout_backup_count": _Option(_parse_int(0), aliases=("stdout_stream.backup_count",)),
    "stderr_max_bytes": _Option(_parse_int(0), aliases=("stderr_stream.max_bytes",)),
    "stderr_backup_count": _Option(_parse_int(0), aliases=("stderr_stream.backup_count",)),
    "stdout_stream.class": _Option(_parse_circus_stream_class),
    "stdout_stream.filename": _Option(_parse_nonempty),
    "stderr_stream.class": _Option(_parse_circus_stream_class),
    "stderr_stream.filename": _Option(_parse_nonempty),
    "ready": _Option(_parse_ready),
    "ready_timeout": _Option(_parse_float(0.0)),
    "ready_settle": _Option(_parse_float(0.0)),
    "reload_batch": _Option(_parse_int(0)),
    "autostart": _Option(_parse_bool),
    "shell": _Option(_parse_bool),
    "priority": _Option(_parse_int()),
    # Read by circus_plugins.py: recycling by age, and the flapping plugin's
    # per-watcher overrides (mapped onto the restart policy, apply_flapping).
    "max_age": _Option(_parse_float(0.0)),
    "max_age_variance": _Option(_parse_float(0.0)),
    **{f"flapping.{key}": _Option(_parse_str)
       for key in ("attempts", "window", "retry_in", "max_retry", "active")},
}
def _parse_rlimit(raw: str) -> int:
    # As in Circus, an empty value is no limit (RLIM_INFINITY), as is -1.
    return -1 if not raw.strip() else _parse_int(-1)(raw)


# Every limit this platform has (as Circus does): `rlimit_nofile` -> RLIMIT_NOFILE.
# process.py sets them by this table.
RLIMITS: dict[str, int] = {name[len("RLIMIT_"):].lower(): getattr(resource, name)
                           for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}
for _resource in RLIMITS:
    _WATCHER_OPTIONS[f"rlimit_{_resource}"] = _Option(_parse_rlimit)

_WATCHER_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "warmup_delay": _Unsupported("use ready = delay:SECONDS"),
    "hooks": _Unsupported("hooks are not supported"),
    "virtualenv": _Unsupported("set cmd to the virtualenv's interpreter instead"),
    "virtualenv_py_ver": _Unsupported("set cmd to the virtualenv's interpreter instead"),
    "singleton": _Unsupported("use numprocesses = 1"),
    "on_demand": _Unsupported("on-demand start is not supported"),
    "close_child_stdin": _Ignored("workers always get /dev/null as stdin"),
    "close_child_stdout": _Unsupported("use stdout = null"),
    "close_child_stderr": _Unsupported("use stderr = null"),
    "stop_children": _Ignored("sockvisor always stops a worker's whole process group"),
    "respawn_delay": _Unsupported("use backoff_base"),
    "executable": _Unsupported("put the program in cmd"),
    "send_hup": _Unsupported("use stop_signal or the signal command"),
    "use_papa": _Unsupported("papa is not supported: sockvisor holds sockets itself"),
    "stream_backend": _Ignored("not applicable"),
    "stdin_socket": _Unsupported("stdin sockets are not supported"),
    "shell_args": _Ignored("only used with shell = true, which sockvisor refuses"),
    # Read by no part of Circus 0.19; its flapping plugin is refused anyway.
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
        # TimedRotatingFileStream's options: rotating by time changes which files exist.
        f"{_stream}_stream.rotate_when": _Unsupported(
            f"time-based rotation is not supported; use {_stream}_max_bytes"),
        f"{_stream}_stream.rotate_interval": _Unsupported(
            f"time-based rotation is not supported; use {_stream}_max_bytes"),
        f"{_stream}_stream.utc": _Ignored("time-based rotation is not supported"),
    })

# Longest value any key may have.  execve refuses a single argument or environment
# string over 128 KiB (MAX_ARG_STRLEN), so nothing longer can be meant; and the
# bound keeps the loader's work proportional to a sane file (a 10 MB `args` once
# kept it busy for hours).
MAX_VALUE_LENGTH = 64 * 1024
MAX_KEY_LENGTH = 200

_SUBSTITUTION = re.compile(r"\$\((sockvisor|circus)\.([A-Za-z0-9_.\-]+)\)")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


# --------------------------------------------------------------------------- loading

def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; raise ConfigError naming where the problem is."""
    path = os.fspath(path)  # a pathlib.Path would break ConfigError.__str__
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section="\0none")
    parser.optionxform = str  # keys are case-sensitive (env var names)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except FileNotFoundError:
        raise ConfigError("no such file", path=path) from None
    except PermissionError:
        raise ConfigError("permission denied reading the file", path=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path=path) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"section defined twice (line {exc.lineno})",
                          path=path, section=exc.section) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"key defined twice in the section (line {exc.lineno})",
                          path=path, section=exc.section, key=exc.option) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"line {exc.lineno}: a key before any [section]",
                          path=path) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        raise ConfigError(f"cannot parse line(s) {lines}", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from None
    return _Loader(os.path.abspath(path), parser, environ).build()


class _Loader:
    def __init__(self, path: str, parser: configparser.ConfigParser,
                 environ: Mapping[str, str]):
        self.path = path
        self.parser = parser
        self.environ = environ
        self.warnings: list[str] = []
        self.plugins = circus_plugins.PluginSetup()

    def error(self, message: str, section: str | None = None,
              key: str | None = None) -> ConfigError:
        return ConfigError(message, path=self.path, section=section, key=key)

    def build(self) -> Config:
        global_sections: list[str] = []
        socket_sections: dict[str, str] = {}
        watcher_sections: dict[str, str] = {}
        env_sections: dict[str, str] = {}
        plugin_sections: dict[str, str] = {}
        kinds = {"socket": socket_sections, "watcher": watcher_sections, "env": env_sections,
                 "plugin": plugin_sections}
        for section in self.parser.sections():
            self.check_lengths(section)
            if section in ("sockvisor", "circus"):
                global_sections.append(section)
                continue
            kind, sep, name = section.partition(":")
            if sep and kind.strip() == "env":
                # As in Circus, one [env:a, b] section may serve several watchers.
                names = [part.strip() for part in name.split(",")]
                if not all(_NAME.match(part) for part in names):
                    raise self.error("names may use letters, digits, '_', '.' and '-' "
                                     "only, several separated by commas", section)
                if len(set(names)) < len(names):
                    raise self.error("a watcher is named twice", section)
                name = ",".join(names)
            if sep and kind.strip() in kinds:
                name = name.strip()
                if kind.strip() != "env" and not _NAME.match(name):
                    raise self.error("names may use letters, digits, '_', '.' and '-' only",
                                     section)
                if name in kinds[kind.strip()]:
                    raise self.error(f"duplicate {kind.strip()} name {name!r} (also "
                                     f"[{kinds[kind.strip()][name]}])", section)
                kinds[kind.strip()][name] = section
                continue
            if not sep and section.strip() in kinds:
                raise self.error(f"a {section.strip()} section needs a name: "
                                 f"[{section.strip()}:NAME]", section)
            hint = _did_you_mean(kind if sep else section,
                                 ["sockvisor", "circus", "socket", "watcher", "env"])
            raise self.error("unknown section; expected [sockvisor], [socket:NAME], "
                             f"[watcher:NAME] or [env:NAME]{hint}", section)
        if len(global_sections) > 1:
            raise self.error("[sockvisor] and [circus] are the same section; use one",
                             global_sections[1])
        # Each watcher's env sections in file order: as in Circus, a later section
        # overrides a key an earlier one set ([env:a,b] then [env:a] refines a).
        envs_of: dict[str, list[str]] = {name: [] for name in watcher_sections}
        for names, section in env_sections.items():
            for name in names.split(","):
                if name not in watcher_sections:
                    raise self.error(f"no [watcher:{name}] for this environment", section)
                envs_of[name].append(section)

        globals_ = self.build_globals(global_sections[0] if global_sections else None)
        sockets = {name: self.build_socket(name, section)
                   for name, section in socket_sections.items()}
        self.check_addresses(sockets, socket_sections)
        try:
            self.plugins = circus_plugins.load(
                self.path, self.parser, global_sections[0] if global_sections else None,
                plugin_sections, watcher_sections)
        except circus_plugins.PluginConfigError as exc:
            raise self.error(str(exc), exc.section, exc.key) from None
        self.warnings.extend(self.plugins.warnings)
        watchers = {name: self.build_watcher(name, section,
                                             tuple(envs_of[name]), sockets)
                    for name, section in watcher_sections.items()}
        # Last: what is wrong in a section is more precise than "nothing to run".
        if not watcher_sections:
            # Never what a production config means: sockvisor would run for ever
            # doing nothing, holding its sockets' ports with nobody serving them,
            # and a truncated file given to reloadconfig would stop every watcher.
            held = "".join(f" [{section}]" for section in socket_sections.values())
            raise self.error(
                "no [watcher:NAME] section: nothing to run"
                + (f", and the sockets ({held.strip()}) would be held with nobody "
                   "serving them" if held else "")
                + ".  To start with nothing running and `add` or `start` watchers at "
                "run time, give a watcher with autostart = false")
        return Config(self.path, globals_, sockets, watchers, tuple(self.warnings),
                      self.plugins)

    def check_lengths(self, section: str) -> None:
        """Refuse over-long names and values before any of them is parsed."""
        if len(section) > MAX_KEY_LENGTH:
            raise self.error(f"section name too long ({len(section)} characters)",
                             section[:40] + "...")
        for key, value in self.parser.items(section):
            if len(key) > MAX_KEY_LENGTH:
                raise self.error(f"key too long ({len(key)} characters)", section,
                                 key[:40] + "...")
            if len(value) > MAX_VALUE_LENGTH:
                raise self.error(f"value too long: {len(value)} characters, at most "
                                 f"{MAX_VALUE_LENGTH // 1024} KiB (exec refuses an "
                                 "argument or environment string over 128 KiB)",
                                 section, key)
            if "\0" in value:
                # No path, address, argument or environment string can hold one.
                raise self.error("the value contains a NUL character", section, key)

    def check_addresses(self, sockets: Mapping[str, SocketConfig],
                        sections: Mapping[str, str]) -> None:
        """Two sockets that bind() would refuse together: the same unix path, or the
        same port with the same address or a wildcard covering the other ("::" takes
        IPv4 too: sockets.py clears IPV6_V6ONLY for it).  Port 0 never collides.
        Found in one pass: first socket seen per (port, address class)."""
        seen_paths: dict[str, str] = {}
        seen_ports: dict[int, dict[str, str]] = {}
        for name, config in sockets.items():
            other = None
            if config.is_unix:
                assert config.path is not None
                directory, base = os.path.split(config.path)
                where = os.path.join(os.path.realpath(directory), base)
                other = seen_paths.setdefault(where, name)
            elif config.port:
                assert config.host is not None
                taken = seen_ports.setdefault(config.port, {})
                address = ipaddress.ip_address(config.host)
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
                v4 = isinstance(address, ipaddress.IPv4Address)
                if address.is_unspecified and not v4:       # "::": everything
                    conflicts = ["any6", "any4"]
                elif address.is_unspecified:                # "0.0.0.0": all of IPv4
                    conflicts = ["wild6", "any4"]
                else:
                    conflicts = ["wild6", f"={address}"] + (["wild4"] if v4 else [])
                other = next((taken[c] for c in conflicts if c in taken), None)
                marks = ["any4" if v4 else "any6", f"={address}"]
                if address.is_unspecified:
                    marks.append("wild4" if v4 else "wild6")
                for mark in marks:
                    taken.setdefault(mark, name)
            if other is not None and other != name:
                raise self.error(
                    f"same address as [{sections[other]}] ({config.describe()} and "
                    f"{sockets[other].describe()}): only one of them could be bound.  "
                    "To serve one address from several watchers, list the one socket in "
                    "each watcher's sockets", sections[name])

    # ---- option tables

    def read_options(self, section: str, options: dict[str, _Option],
                     circus: dict[str, _Unsupported | _Ignored]) -> dict[str, Any]:
        """Parse every key of `section` by its table; canonical names in the result."""
        by_name: dict[str, str] = {}
        for canonical, option in options.items():
            by_name[canonical] = canonical
            for alias in option.aliases:
                by_name[alias] = canonical
        values: dict[str, Any] = {}
        seen_as: dict[str, str] = {}
        for key, raw in self.parser.items(section):
            # Circus spells hooks `hooks.before_start = ...`: look dotted keys up by prefix.
            circus_key = key if key in circus else key.partition(".")[0]
            if circus_key in circus and key not in by_name:
                entry = circus[circus_key]
                if isinstance(entry, _Unsupported) and _switched_off(raw):
                    # `httpd = false`, `max_age = 0`: Circus configs often spell out
                    # the default; a feature turned off is one we do not miss.
                    continue
                if isinstance(entry, _Unsupported):
                    raise self.error(f"not supported by sockvisor: {entry.reason}",
                                     section, key)
                self.warnings.append(f"{self.path}: [{section}] {key}: ignored: {entry.reason}")
                continue
            canonical = by_name.get(key)
            if canonical is None:
                # Suggest a supported key before a Circus key we would refuse.
                hint = _did_you_mean(key, list(by_name)) or _did_you_mean(key, list(circus))
                raise self.error(f"unknown key{hint}", section, key)
            if canonical in seen_as:
                raise self.error(f"same setting as {seen_as[canonical]!r}; give it once",
                                 section, key)
            seen_as[canonical] = key
            try:
                values[canonical] = options[canonical].parse(raw)
            except ValueError as exc:
                raise self.error(str(exc), section, key) from None
        values["__keys__"] = seen_as
        return values

    def build_globals(self, section: str | None) -> GlobalConfig:
        if section is None:
            return GlobalConfig()
        values = self.read_options(section, _GLOBAL_OPTIONS, _GLOBAL_CIRCUS)
        endpoint = values.get("endpoint")
        if endpoint is not None:
            self.check_endpoint(endpoint, section, "endpoint", values)
        pubsub = values.get("pubsub_endpoint")
        if pubsub is not None:
            self.check_endpoint(pubsub, section, "pubsub_endpoint", values)
        level = values.get("loglevel", "info").lower()
        if level not in ("debug", "info", "warning", "error", "critical"):
            raise self.error("expected debug, info, warning, error or critical",
                             section, "loglevel")
        for key in ("curve_secret_key_file", "curve_authorized_keys_dir"):
            if key in values and not os.path.exists(values[key]):
                raise self.error(f"no such file or directory: {values[key]}", section, key)
        if ("curve_secret_key_file" in values) != ("curve_authorized_keys_dir" in values):
            raise self.error("CURVE needs both curve_secret_key_file and "
                             "curve_authorized_keys_dir", section)
        return GlobalConfig(
            endpoint=endpoint,
            pubsub_endpoint=pubsub,
            endpoint_group=values.get("endpoint_group"),
            endpoint_group_grants=values.get("endpoint_group_grants", frozenset()),
            endpoint_group_max_numprocesses=values.get("endpoint_group_max_numprocesses"),
            curve_secret_key_file=values.get("curve_secret_key_file"),
            curve_authorized_keys_dir=values.get("curve_authorized_keys_dir"),
            loglevel=level,
            subreaper=values.get("subreaper", False),
            umask=values.get("umask"),
            notify_socket_dir=values.get("notify_socket_dir"),
            fdstore=values.get("fdstore"),
            http=self.http_address(values, section),
            http_token_file=values.get("http_token_file"),
            cgroup=values.get("cgroup", "auto"),
            start_failure=values.get("start_failure", "exit"),
        )

    def http_address(self, values: dict[str, Any], section: str) -> str | None:
        """`http`, or Circus's `httpd = true` + `httpd_host`/`httpd_port` (its
        defaults: localhost:8080), checked: a non-loopback address needs a token
        file, since anyone who can reach it could otherwise read everything."""
        keys = values["__keys__"]
        address = values.get("http")
        if values.get("httpd"):
            if address is not None:
                raise self.error("give either http or httpd (Circus's), not both",
                                 section, "httpd")
            host = values.get("httpd_host", "localhost")
            address = f"[{host}]:" if ":" in host else f"{host}:"
            address += str(values.get("httpd_port", 8080))
            key = "httpd_host" if "httpd_host" in keys else "httpd"
        else:
            for circus_key in ("httpd_host", "httpd_port"):
                if circus_key in keys:
                    self.warnings.append(f"{self.path}: [{section}] {circus_key}: ignored: "
                                         "httpd is not true")
            key = "http"
        if address is None:
            if "http_token_file" in keys:
                raise self.error("http_token_file without http (the console is off)",
                                 section, "http_token_file")
            return None
        try:
            loopback = _http_is_local(address)
        except ValueError as exc:
            raise self.error(str(exc), section, key) from None
        token_file = values.get("http_token_file")
        if not loopback and token_file is None:
            raise self.error(f"{address} is not a loopback address: set http_token_file "
                             "(every request then needs its bearer token)", section, key)
        if token_file is not None and not token_file.startswith("/"):
            raise self.error("expected an absolute path", section, "http_token_file")
        return address

    def check_endpoint(self, endpoint: str, section: str, key: str,
                       values: dict[str, Any]) -> None:
        scheme, sep, rest = endpoint.partition("://")
        if not sep or not rest:
            raise self.error(f"expected ipc://PATH or tcp://HOST:PORT, got {endpoint!r}",
                             section, key)
        if scheme == "ipc":
            if not rest.startswith("/") and not rest.startswith("@"):
                raise self.error("an ipc:// endpoint needs an absolute path", section, key)
        elif scheme == "tcp":
            if "curve_secret_key_file" not in values:
                raise self.error("a tcp:// endpoint has no access control of its own: "
                                 "configure curve_secret_key_file and "
                                 "curve_authorized_keys_dir, or use ipc://", section, key)
        else:
            raise self.error(f"unsupported transport {scheme!r}; use ipc:// or tcp://",
                             section, key)

    def build_socket(self, name: str, section: str) -> SocketConfig:
        values = self.read_options(section, _SOCKET_OPTIONS, _SOCKET_CIRCUS)
        keys = values["__keys__"]
        sock_type = values.get("type", "SOCK_STREAM").upper()
        if sock_type not in ("SOCK_STREAM", "STREAM", "TCP"):
            raise self.error("only stream sockets are supported", section, keys["type"])
        family_name = values.get("family", "").upper()
        if family_name and family_name not in ("AF_INET", "AF_INET6", "AF_UNIX"):
            raise self.error(f"expected AF_INET, AF_INET6 or AF_UNIX, got {family_name!r}",
                             section, keys["family"])
        path = values.get("path")
        if path is not None:
            for key in ("host", "port"):
                if key in values:
                    raise self.error("a unix socket (path) takes no host or port",
                                     section, keys[key])
            if family_name and family_name != "AF_UNIX":
                raise self.error("a path means AF_UNIX", section, keys["family"])
            if not os.path.isabs(path):
                raise self.error("the path must be absolute", section, keys["path"])
            if len(os.fsencode(path)) >= 108:
                raise self.error("unix socket paths are limited to 107 bytes", section,
                                 keys["path"])
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                raise self.error(f"directory {parent} does not exist", section, keys["path"])
            return SocketConfig(
                name=name, family=socket.AF_UNIX, path=path,
                backlog=values.get("backlog", 2048), mode=values.get("mode"),
                owner=values["owner"].pw_uid if "owner" in values else None,
                group=values.get("group"), blocking=values.get("blocking", True))
        for key in ("mode", "owner", "group"):
            if key in values:
                raise self.error("only unix sockets (path = ...) take mode, owner, group",
                                 section, keys[key])
        if family_name == "AF_UNIX":
            raise self.error("an AF_UNIX socket needs path", section, keys["family"])
        if "port" not in values:
            raise self.error("a socket needs port (with host) or path", section, "port")
        # The default host is the loopback address of the family asked for.
        host = values.get("host", "::1" if family_name == "AF_INET6" else "127.0.0.1")
        family = self.resolve_family(host, family_name, section, keys.get("host", "host"))
        if host == "localhost":   # a fixed address, not whatever /etc/hosts says
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        if family == socket.AF_INET6:
            host = host.strip("[]")
        return SocketConfig(
            name=name, family=family, host=host, port=values["port"],
            backlog=values.get("backlog", 2048), blocking=values.get("blocking", True),
            reuseport=values.get("reuseport", False))

    def resolve_family(self, host: str, family_name: str, section: str,
                       key: str) -> socket.AddressFamily:
        # Brackets belong to IPv6 only: "[127.0.0.1]" would pass here and fail at bind.
        for family, address in ((socket.AF_INET, host), (socket.AF_INET6, host.strip("[]"))):
            try:
                socket.inet_pton(family, address)
            except (OSError, ValueError):   # ValueError: a NUL in the address
                continue
            if family_name and family_name != family.name:
                raise self.error(f"{host!r} is not an {family_name} address", section, key)
            return family
        if host == "localhost":
            return socket.AF_INET6 if family_name == "AF_INET6" else socket.AF_INET
        raise self.error(f"expected an IPv4 or IPv6 address, got {host!r} (host names "
                         "are not resolved: the bound address must not depend on DNS)",
                         section, key)

    def build_watcher(self, name: str, section: str, env_sections: tuple[str, ...],
                      sockets: Mapping[str, SocketConfig]) -> WatcherConfig:
        values = self.read_options(section, _WATCHER_OPTIONS, _WATCHER_CIRCUS)
        keys = values["__keys__"]
        if "cmd" not in values:
            raise self.error("a watcher needs cmd", section, "cmd")
        if values.get("shell"):
            raise self.error("shell = true is not supported: sockets and signals must "
                             "reach the program itself; put the program in cmd",
                             section, keys["shell"])

        env: dict[str, str] = {}
        if "env" in values:
            for item in filter(None, (part.strip() for part in values["env"].split(","))):
                key, sep, value = item.partition("=")
                if not sep or not _ENV_KEY.match(key.strip()):
                    raise self.error(f"expected NAME=VALUE pairs separated by commas, "
                                     f"got {item!r}", section, keys["env"])
                env[key.strip()] = value.strip()
        for env_section in env_sections:
            for key, value in self.parser.items(env_section):
                if not _ENV_KEY.match(key):
                    raise self.error("not a valid environment variable name",
                                     env_section, key)
                env[key] = value.strip()
        copy_env = values.get("copy_env", False)
        # Without copy_env a worker still gets sockvisor's PATH, so `cmd = python3`
        # resolves the way it does in the shell that wrote the config.
        base_env = (dict(self.environ) if copy_env
                    else {"PATH": self.environ.get("PATH", os.defpath)})
        if "uid" in values:
            # A copied HOME, USER and LOGNAME describe sockvisor's user; a worker run
            # as another gets its own at spawn, unless the config sets them.
            for key in ("HOME", "USER", "LOGNAME"):
                base_env.pop(key, None)
        # $VAR / ${VAR} in [env:NAME] values refers to sockvisor's environment, as in Circus.
        env = {key: self.expand_env_refs(value, section, key) for key, value in env.items()}
        full_env = {**base_env, **env}
        lookup_env = {**self.environ, **env}

        # Which sockets: an explicit list, all (use_sockets), or those named in
        # $(sockvisor.sockets.NAME) substitutions.
        wanted: list[str] = []
        if values.get("use_sockets") and "sockets" not in values:
            wanted = list(sockets)
        for socket_name in values.get("sockets", ()):
            if socket_name not in sockets:
                hint = _did_you_mean(socket_name, list(sockets))
                raise self.error(f"no [socket:{socket_name}] is defined{hint}",
                                 section, keys["sockets"])
            if socket_name in wanted:
                raise self.error(f"socket {socket_name!r} listed twice", section,
                                 keys["sockets"])
            wanted.append(socket_name)

        cmd = self.expand_static(values["cmd"], lookup_env, section, keys["cmd"])
        # Split cmd and args separately so an error names the key that has it.
        cmd_parts = self.split_words(cmd, section, keys["cmd"])
        if not cmd_parts:
            raise self.error("must not be empty", section, keys["cmd"])
        extra_args = [
            self.expand_static(arg, lookup_env, section, keys["args"])
            for arg in self.split_words(values.get("args", ""), section, keys.get("args"))]
        args = tuple(cmd_parts[1:]) + tuple(extra_args)
        for text, key in ([(part, keys["cmd"]) for part in cmd_parts]
                          + [(arg, keys["args"]) for arg in extra_args]):
            for match in _SUBSTITUTION.finditer(text):
                ref = match.group(2)
                if ref.startswith("sockets."):
                    socket_name = ref[len("sockets."):]
                    if socket_name not in sockets:
                        raise self.error(f"$({match.group(1)}.{ref}): no [socket:"
                                         f"{socket_name}] is defined", section, key)
                    if socket_name not in wanted:
                        wanted.append(socket_name)
                elif ref != "wid":
                    raise self.error(f"unknown substitution $({match.group(1)}.{ref}); "
                                     "known: sockets.NAME, wid, env.NAME", section, key)

        uid = gid = None
        user = home = None
        if "uid" in values:
            entry = values["uid"]
            uid, user, home = entry.pw_uid, entry.pw_name, entry.pw_dir
            gid = entry.pw_gid
        if "gid" in values:
            gid = values["gid"]
        if (uid is not None and uid != os.geteuid()) or (gid is not None and gid != os.getegid()):
            if os.geteuid() != 0:
                raise self.error("switching user or group needs sockvisor to run as root",
                                 section, keys.get("uid", keys.get("gid")))
        working_dir = values.get("working_dir")
        if working_dir is not None and not os.path.isdir(working_dir):
            raise self.error(f"no such directory: {working_dir}", section, keys["working_dir"])
        # Whether the worker's user can run the program is asked by a child that is
        # that user (preflight.py), at check, start, reloadconfig, add and set.
        if "\0" in cmd_parts[0]:
            raise self.error("the program name contains a NUL character", section,
                             keys["cmd"])

        restart = RestartPolicy(
            respawn=values.get("respawn", True),
            min_uptime=values.get("min_uptime", RestartPolicy.min_uptime),
            backoff_base=values.get("backoff_base", RestartPolicy.backoff_base),
            backoff_max=values.get("backoff_max", RestartPolicy.backoff_max),
            max_restarts=values.get("max_restarts", RestartPolicy.max_restarts),
            window=values.get("restart_window", RestartPolicy.window),
        )
        restart = self.apply_flapping(name, restart, keys)
        if restart.backoff_max < restart.backoff_base:
            raise self.error("must not be less than backoff_base", section,
                             keys.get("backoff_max", "backoff_max"))
        ready = values.get("ready", ReadyPolicy())
        ready = ReadyPolicy(ready.kind, ready.delay,
                            values.get("ready_timeout", ReadyPolicy.timeout),
                            values.get("ready_settle"))
        if ready.kind == ReadyKind.DELAY and ready.delay >= ready.timeout:
            raise self.error("the ready delay must be shorter than ready_timeout",
                             section, keys["ready"])
        rlimits = {key[len("rlimit_"):]: value for key, value in values.items()
                   if key.startswith("rlimit_")}
        return WatcherConfig(
            name=name, cmd=cmd_parts[0], args=args,
            numprocesses=values.get("numprocesses", 1), sockets=tuple(wanted),
            uid=uid, gid=gid, user=user, home=home, working_dir=working_dir,
            env=full_env, copy_env=copy_env, explicit_env=env, umask=values.get("umask"),
            stop_signal=values.get("stop_signal", signal.SIGTERM),
            operator_signals=values.get("operator_signals", frozenset()),
            graceful_timeout=values.get("graceful_timeout", 30.0),
            restart=restart, ready=ready, reload_batch=values.get("reload_batch", 0),
            stdout=self.build_output("stdout", values, section, uid, gid),
            stderr=self.build_output("stderr", values, section, uid, gid),
            autostart=values.get("autostart", True),
            rlimits=rlimits,
        )

    def apply_flapping(self, name: str, restart: RestartPolicy,
                       keys: Mapping[str, str]) -> RestartPolicy:
        """Circus's flapping plugin as this watcher's restart policy (the mapping is
        in circus_plugins.py); what the watcher sets itself wins."""
        flapping = self.plugins.flapping.get(name)
        if flapping is None:
            return restart
        mapped = circus_plugins.flapping_restart_values(flapping, RestartPolicy.min_uptime)
        fields = {"max_restarts": "max_restarts", "restart_window": "window",
                  "backoff_max": "backoff_max", "min_uptime": "min_uptime"}
        changes = {fields[key]: value for key, value in mapped.items() if key not in keys}
        if "backoff_max" in changes:
            changes["backoff_max"] = max(changes["backoff_max"], restart.backoff_base)
        if "window" in changes:
            changes["window"] = min(changes["window"], MAX_SECONDS)
        return dataclasses.replace(restart, **changes)

    def split_words(self, text: str, section: str, key: str | None) -> list[str]:
        try:
            return split_words(text)
        except ValueError as exc:
            raise self.error(f"cannot split into words: {exc}", section, key) from None

    def build_output(self, stream: str, values: dict[str, Any], section: str,
                     uid: int | None = None, gid: int | None = None) -> OutputConfig:
        """`stream`'s output; a file is checked as sockvisor will open it (see
        logdir.py: no folder other users may write, no link, FIFO or folder at
        the name), so `check` and `start` refuse it before anything is bound."""
        keys = values["__keys__"]
        output: OutputConfig = values.get(stream, OutputConfig())
        circus_class = values.get(f"{stream}_stream.class")
        circus_key = f"{stream}_stream.class"
        if circus_class is None and f"{stream}_stream.filename" in values:
            # As in Circus, a filename without a class is a FileStream.
            circus_class, circus_key = OutputKind.FILE, f"{stream}_stream.filename"
        if circus_class is not None:
            if stream in values:
                raise self.error(f"give either {stream} or {circus_key}", section,
                                 keys[circus_key])
            output = OutputConfig(circus_class)
            if circus_class == OutputKind.FILE:
                filename = values.get(f"{stream}_stream.filename")
                if filename is None:
                    raise self.error("FileStream needs a filename", section,
                                     f"{stream}_stream.filename")
                output = OutputConfig(OutputKind.FILE, path=filename)
        if output.kind == OutputKind.FILE:
            assert output.path is not None
            parent = os.path.dirname(output.path) or "."
            key = keys.get(stream, f"{stream}_stream.filename")
            if not os.path.isdir(parent):
                raise self.error(f"directory {parent} does not exist", section, key)
            try:
                logdir.check_log_path(output.path, uid, gid)
            except OSError as exc:
                raise self.error(str(exc), section, key) from None
            output = OutputConfig(
                OutputKind.FILE, path=output.path,
                max_bytes=values.get(f"{stream}_max_bytes", 0),
                backup_count=values.get(f"{stream}_backup_count", 5))
        return output

    def expand_env_refs(self, value: str, section: str, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return self.environ.get(name, "")
        return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))",
                      replace, value)

    def expand_static(self, text: str, env: Mapping[str, str], section: str,
                      key: str) -> str:
        """Resolve $(sockvisor.env.X); leave per-worker substitutions for spawn time."""
        def replace(match: re.Match[str]) -> str:
            ref = match.group(2)
            if ref.startswith("env."):
                name = ref[len("env."):]
                if name not in env:
                    raise self.error(f"$({match.group(1)}.{ref}): {name} is not set",
                                     section, key)
                return env[name]
            return match.group(0)
        return _SUBSTITUTION.sub(replace, text)


def has_worker_substitution(text: str) -> bool:
    """`text` holds $(sockvisor.wid) or $(sockvisor.sockets.NAME): known per worker only."""
    return bool(_SUBSTITUTION.search(text))


def expand_worker_args(argv: list[str], wid: int, fds: Mapping[str, int]) -> list[str]:
    """Resolve $(sockvisor.wid) and $(sockvisor.sockets.NAME) for one worker."""
    def replace(match: re.Match[str]) -> str:
        ref = match.group(2)
        if ref == "wid":
            return str(wid)
        if ref.startswith("sockets."):
            return str(fds[ref[len("sockets."):]])
        return match.group(0)
    return [_SUBSTITUTION.sub(replace, arg) for arg in argv]


def http_host_port(address: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port); ValueError with a readable reason."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT or unix:/PATH, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
    return host, int(port)


def _http_is_local(address: str) -> bool:
    """Whether `http = address` is reachable only from this machine (loopback or a
    unix socket).  Names other than localhost count as remote: they may resolve
    to anything."""
    import ipaddress
    if address.startswith("unix:"):
        if not address[len("unix:"):].startswith("/"):
            raise ValueError("expected unix:/ABSOLUTE/PATH")
        return True
    host, _ = http_host_port(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _switched_off(raw: str) -> bool:
    return raw.strip().lower() in ("false", "no", "off", "0", "")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- runtime changes

# Options that decide what runs or as whom: only sockvisor's own user may set them.
PRIVILEGED_WATCHER_OPTIONS = frozenset({
    "cmd", "args", "uid", "gid", "user", "group", "env", "working_dir", "copy_env",
    "umask", "sockets", "use_sockets"} | {key for key in _WATCHER_OPTIONS
                                         if key.startswith("rlimit_")})


def watcher_from_options(path: str, name: str, options: Mapping[str, Any],
                         sockets: Mapping[str, SocketConfig],
                         environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """Build a watcher from control-channel options (`add`), with the INI rules."""
    if not _NAME.match(name):
        raise ConfigError("names may use letters, digits, '_', '.' and '-' only",
                          path="<control>", section=f"watcher:{name}")
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str
    section = f"watcher:{name}"
    parser.add_section(section)
    for key in options:
        # Read from the file by circus_plugins.py, not kept in WatcherConfig.
        if key in ("max_age", "max_age_variance") or str(key).startswith("flapping."):
            raise ConfigError("set in the config file and applied by reloadconfig",
                              path="<control>", section=section, key=str(key))
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            value = " ".join(shlex.quote(str(item)) for item in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, bool):
            value = "true" if value else "false"
        parser.set(section, str(key), str(value))
    loader = _Loader("<control>", parser, os.environ if environ is None else environ)
    loader.check_lengths(section)
    return loader.build_watcher(name, section, (), sockets)


def with_options(config: WatcherConfig, options: Mapping[str, Any],
                 sockets: Mapping[str, SocketConfig],
                 environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """`config` with some options changed (`set`), validated like the INI file."""
    merged = dict(_as_options(config))
    merged.update(options)
    return watcher_from_options("<control>", config.name, merged, sockets, environ)


def _as_options(config: WatcherConfig) -> dict[str, Any]:
    """The option values that rebuild `config` (the inverse of build_watcher)."""
    options: dict[str, Any] = {
        "cmd": shlex.join([config.cmd, *config.args]),
        "numprocesses": config.numprocesses,
        "stop_signal": str(int(config.stop_signal)),
        "operator_signals": " ".join(signal_names(config.operator_signals)),
        "graceful_timeout": config.graceful_timeout,
        "respawn": config.restart.respawn,
        "min_uptime": config.restart.min_uptime,
        "backoff_base": config.restart.backoff_base,
        "backoff_max": config.restart.backoff_max,
        "max_restarts": config.restart.max_restarts,
        "restart_window": config.restart.window,
        "ready_timeout": config.ready.timeout,
        "ready": (f"delay:{config.ready.delay}" if config.ready.kind == ReadyKind.DELAY
                  else config.ready.kind.value),
        "reload_batch": config.reload_batch,
        "autostart": config.autostart,
        "copy_env": config.copy_env,
    }
    if config.ready.settle is not None:
        options["ready_settle"] = config.ready.settle
    if config.sockets:
        options["sockets"] = ",".join(config.sockets)
    if config.explicit_env:
        options["env"] = ",".join(f"{k}={v}" for k, v in config.explicit_env.items())
    if config.uid is not None:
        options["uid"] = str(config.uid)
    if config.gid is not None:
        options["gid"] = str(config.gid)
    if config.working_dir is not None:
        options["working_dir"] = config.working_dir
    if config.umask is not None:
        options["umask"] = oct(config.umask)[2:]
    for stream in ("stdout", "stderr"):
        output: OutputConfig = getattr(config, stream)
        options[stream] = (f"file:{output.path}" if output.kind == OutputKind.FILE
                           else output.kind.value)
        if output.kind == OutputKind.FILE:
            options[f"{stream}_max_bytes"] = output.max_bytes
            options[f"{stream}_backup_count"] = output.backup_count
    for name, value in config.rlimits.items():
        options[f"rlimit_{name}"] = value
    return options
