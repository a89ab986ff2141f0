"""The configuration's data: the frozen dataclasses the rest of sockvisor reads,
and `ConfigError`, which names the file, section and key of a problem.

Nothing here parses or checks: loader.py builds these from an INI file,
runtime.py from control-channel options; options.py says what each option is.
"""

from __future__ import annotations

import enum
import shlex
import signal
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, TypeVar

_T = TypeVar("_T")

from sockvisor import circus_plugins


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
    # Rotation by time (Circus's TimedRotatingFileStream; timed_rotation.py):
    rotate_when: str | None = None   # S, M, H, D, MIDNIGHT, W0-W6; None: by size only
    rotate_interval: int = 1
    rotate_utc: bool = False
    # Circus's WatchedFileStream: look whether the file was moved before every
    # write, not once a second (output.py's LogFile).
    watched: bool = False


@dataclass(frozen=True)
class ReadyPolicy:
    kind: ReadyKind = ReadyKind.STARTED
    delay: float = 0.0
    timeout: float = 60.0
    # How long a ready worker must then stay alive before it counts as settled
    # (a reload retires old workers only for settled new ones); None: the
    # watcher's min_uptime (`WatcherConfig.ready_settle`).
    settle: float | None = None


@dataclass(frozen=True)
class HookCommand:
    """A Circus hook point's command (config/hooks.py says how it is read, hooks.py
    how it runs): exit status 0 is Circus's True.  `ignore_failure` (Circus's
    `hooks.NAME = ..., true`): a hook that cannot run or overruns its timeout
    counts as True; a non-zero exit still counts as False, as a Circus hook
    returning False does."""
    argv: tuple[str, ...]
    ignore_failure: bool = False


@dataclass(frozen=True)
class HookPython:
    """A Circus hook point's Python callable, `module.function` (or
    `module:function`) as Circus writes it: called in a process of its own as the
    watcher's user, with stand-ins for circusd's watcher and arbiter
    (circus_hook_shim.py); its return value is the answer.  `ignore_failure` as
    for HookCommand: a hook that raises, cannot run or overruns counts as True."""
    target: str
    ignore_failure: bool = False


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
    # Circus's options, used as Circus uses them (options.py says how):
    copy_path: bool = False        # sockvisor's sys.path in PYTHONPATH (in `env`)
    virtualenv: str | None = None  # its bin in PATH, its packages in PYTHONPATH
    virtualenv_py_ver: str | None = None
    shell: bool = False            # cmd + args run by /bin/sh -c, as Circus builds it
    shell_args: tuple[str, ...] = ()
    singleton: bool = False        # at most one worker: incr and scaling refused
    priority: int = 0              # start order: higher first; stop in reverse
    # Circus's hooks, as commands (hooks.py): hook point -> command, and how long
    # one may run before its process group is killed (and it counts as failed).
    hooks: Mapping[str, HookCommand | HookPython] = field(default_factory=dict)
    hook_timeout: float = 30.0
    # The interpreter of the Python hooks (None: the virtualenv's, else sockvisor's).
    hook_python: str | None = None
    # Keys of the section that are no option, for the Python hooks (Circus's
    # watcher._options; config/loader.py says which keys get here).
    hook_options: Mapping[str, str] = field(default_factory=dict)
    send_hup: bool = False         # a reload is SIGHUP to the workers (watcher.py)
    on_demand: bool = False        # no workers until a connection is pending (WAITING)

    def argv(self) -> list[str]:
        """What the worker is exec'ed with (before $(sockvisor.wid) and
        $(sockvisor.sockets.NAME) are resolved, which give digits only, so
        resolving them inside the shell's quoted words is safe).

        With `shell`, as Circus 0.19 builds it (circus/process.py): every word of
        cmd and args quoted and joined into the one script `/bin/sh -c` runs,
        `shell_args` after it (the script's $0, $1...).  Quoted: shell syntax in
        cmd (`|`, `&&`, `$VAR`) is passed literally, in Circus as here."""
        if self.shell:
            script = " ".join(shlex.quote(word) for word in (self.cmd, *self.args))
            return ["/bin/sh", "-c", script, *self.shell_args]
        return [self.cmd, *self.args]

    @property
    def ready_settle(self) -> float:
        """Seconds a worker must stay alive after it is ready to count as settled."""
        return self.restart.min_uptime if self.ready.settle is None else self.ready.settle


def priority_groups(items: Iterable[_T],
                    config_of: Callable[[_T], WatcherConfig]) -> list[list[_T]]:
    """`items` (watchers, or their configs) in Circus's start order: by
    `priority`, highest first; equal priorities together, in config order.
    Shut-down goes through the groups in reverse."""
    groups: dict[int, list[_T]] = {}
    for item in items:
        groups.setdefault(config_of(item).priority, []).append(item)
    return [groups[priority] for priority in sorted(groups, reverse=True)]


@dataclass(frozen=True)
class LoggingFile:
    """Circus's `loggerconfig`: a Python logging configuration (INI for
    fileConfig, JSON or YAML for dictConfig), as read once at load after the
    checks of logconfig.py.  The text is what start (and an upgrade's resume)
    applies: the file is not read again by its path."""
    path: str
    text: str = field(repr=False)


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
    # Circus's: sockvisor's pid, written (atomically) once the sockets are bound
    # and removed at exit; and where sockvisor's own log goes ("-": stdout; a
    # file, reopened on SIGUSR1; None: stderr).
    pidfile: str | None = None
    logoutput: str | None = None
    # Circus's `loggerconfig`: when set, it decides where the log goes and at
    # which level (loglevel and logoutput are ignored, with a warning, as in
    # Circus); None: Circus's "default", sockvisor's own set-up (log.py).
    loggerconfig: LoggingFile | None = None


@dataclass(frozen=True)
class Config:
    path: str
    globals: GlobalConfig
    sockets: Mapping[str, SocketConfig]
    watchers: Mapping[str, WatcherConfig]
    warnings: tuple[str, ...] = ()   # Circus keys accepted but meaningless here
    # [plugin:NAME] sections, max_age, flapping: see circus_plugins.py.
    plugins: circus_plugins.PluginSetup = circus_plugins.PluginSetup()

