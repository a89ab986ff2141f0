"""The configuration: INI file → validated, frozen dataclasses (one package, one owner).

  * model.py: the dataclasses the rest of sockvisor reads, and ConfigError;
  * values.py: the value parsers (raw text → value, or a readable ValueError);
  * options.py: the option registry — every key declared once;
  * loader.py: `load(path)`: the INI file, checked, to a `Config`;
  * runtime.py: watchers built or changed at run time (`add`, `set`);
  * substitutions.py: `$(sockvisor.wid)`, `$(sockvisor.sockets.NAME)` at spawn time.
  * virtualenv.py: Circus's `virtualenv` and `copy_path`: the worker's PATH and
    PYTHONPATH, computed at load.

Everything other modules use is importable from here: `from sockvisor.config import X`.
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch `config.os.geteuid`: the one os module)

from sockvisor.config.model import (UNLIMITED_RESTARTS, Config, ConfigError, HookCommand,
                                    GlobalConfig, OutputConfig, OutputKind, ReadyKind,
                                    ReadyPolicy, RestartPolicy, SocketConfig,
                                    WatcherConfig, priority_groups)
from sockvisor.config.values import (ENDPOINT_GROUP_GRANTS, MAX_SECONDS, _http_is_local,
                                     http_host_port, signal_names, split_words)
from sockvisor.config.options import (OPERATOR_OPTIONS, PRIVILEGED_WATCHER_OPTIONS,
                                      RLIMITS, _GLOBAL_CIRCUS, _GLOBAL_OPTIONS,
                                      _SOCKET_CIRCUS, _SOCKET_OPTIONS, _WATCHER_CIRCUS,
                                      _WATCHER_OPTIONS, Change, Who, change_kind, changes,
                                      shown_options, watcher_option)
from sockvisor.config.substitutions import expand_worker_args, has_worker_substitution
from sockvisor.config.loader import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, load
from sockvisor.config.runtime import current_values, watcher_from_options, with_options

__all__ = [
    "UNLIMITED_RESTARTS", "Config", "ConfigError", "GlobalConfig", "HookCommand",
    "OutputConfig",
    "OutputKind", "ReadyKind", "ReadyPolicy", "RestartPolicy", "SocketConfig",
    "WatcherConfig", "ENDPOINT_GROUP_GRANTS", "MAX_SECONDS", "http_host_port",
    "signal_names", "split_words", "RLIMITS", "expand_worker_args",
    "has_worker_substitution", "MAX_KEY_LENGTH", "MAX_VALUE_LENGTH", "load",
    "OPERATOR_OPTIONS", "PRIVILEGED_WATCHER_OPTIONS", "Change", "Who", "change_kind",
    "changes", "shown_options", "watcher_option", "current_values",
    "watcher_from_options", "with_options", "priority_groups",
]
