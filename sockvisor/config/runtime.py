"""Watchers changed at run time: `add` builds one from control-channel options,
`set` changes some options of one, validated with the INI file's rules.
"""

from __future__ import annotations

import configparser
import os
import shlex
from typing import Any, Mapping

from sockvisor.config.loader import _Loader
from sockvisor.config.model import (ConfigError, OutputConfig, OutputKind, ReadyKind,
                                    SocketConfig, WatcherConfig)
from sockvisor.config.options import _WATCHER_OPTIONS
from sockvisor.config.values import _NAME, signal_names

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
