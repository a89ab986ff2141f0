"""The option registry: every key of every section, declared once.

Each section kind has one table (`_GLOBAL_OPTIONS`, `_SOCKET_OPTIONS`,
`_WATCHER_OPTIONS`) listing every key, how it is parsed and the Circus names
that mean the same thing, and one table of the Circus keys sockvisor knows and
refuses or ignores (with the reason).  An unknown key is an error with a
did-you-mean, never silently kept.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any, Callable

from sockvisor.config.values import (
    _parse_bool, _parse_cgroup, _parse_circus_stream_class, _parse_float, _parse_grants,
    _parse_group, _parse_int, _parse_list, _parse_max_restarts, _parse_nonempty,
    _parse_octal, _parse_operator_signals, _parse_output, _parse_ready, _parse_rlimit,
    _parse_signal, _parse_start_failure, _parse_str, _parse_user)


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
}

_GLOBAL_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "check_delay": _Ignored("sockvisor does not poll: child exits are events"),
    "warmup_delay": _Ignored("sockvisor starts workers without a fixed delay"),
    "debug": _Ignored("use loglevel = debug"),
    "debug_gc": _Ignored("not applicable"),
    "stats_endpoint": _Ignored("use the `stats` command"),
    "statsd": _Unsupported("statsd is not supported"),
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
    "statsd_close_outputs": _Ignored("statsd is not supported"),
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
}

# Every limit this platform has (as Circus does): `rlimit_nofile` -> RLIMIT_NOFILE.
# process.py sets them by this table.
RLIMITS: dict[str, int] = {name[len("RLIMIT_"):].lower(): getattr(resource, name)
                           for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}
for _resource in RLIMITS:
    _WATCHER_OPTIONS[f"rlimit_{_resource}"] = _Option(_parse_rlimit)

_WATCHER_CIRCUS: dict[str, _Unsupported | _Ignored] = {
    "warmup_delay": _Unsupported("use ready = delay:SECONDS"),
    "max_age": _Unsupported("periodic recycling of workers is not supported"),
    "max_age_variance": _Unsupported("periodic recycling of workers is not supported"),
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
    # The flapping plugin's per-watcher overrides (flapping.attempts, ...).
    "flapping": _Unsupported("the flapping plugin is not supported; use max_restarts "
                             "and restart_window"),
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
