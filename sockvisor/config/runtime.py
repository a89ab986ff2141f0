"""Watchers built or changed at run time: `add` builds one from control-channel
options, `set` changes some options of one; both checked with the INI file's rules.

Values stay structured all the way: a watcher's current options are read from its
`WatcherConfig` (each option's value, options.py), the changed ones are parsed
(text by the option's INI parser, so "0x10" and " 3" mean what they mean in the
file; a JSON list or object by its `structured` reader), and the loader's
`watcher_from_values` builds the result.  Nothing is written back as INI text and
parsed again: that split an env value with a comma (`LIST = a,DEBUG=1`) into two
variables, and refused `JAVA_OPTS = -Xmx1g,-Dfoo=bar` at every `set`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from sockvisor.config.loader import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, _Loader
from sockvisor.config.model import ConfigError, SocketConfig, WatcherConfig
from sockvisor.config.options import _WATCHER_CIRCUS, _WATCHER_OPTIONS, _Option
from sockvisor.config.values import _NAME, _parse_user

_WHERE = "<control>"


def watcher_from_options(path: str, name: str, options: Mapping[str, Any],
                         sockets: Mapping[str, SocketConfig],
                         environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """Build a watcher from control-channel options (`add`), with the INI rules."""
    if not _NAME.match(name):
        raise ConfigError("names may use letters, digits, '_', '.' and '-' only",
                          path=_WHERE, section=f"watcher:{name}")
    loader = _Loader(_WHERE, None, os.environ if environ is None else environ)
    section = f"watcher:{name}"
    values = _read(loader, section, options)
    return loader.watcher_from_values(name, section, values, sockets)


def with_options(config: WatcherConfig, options: Mapping[str, Any],
                 sockets: Mapping[str, SocketConfig],
                 environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """`config` with some options changed (`set`), validated like the INI file.

    `cmd` is the whole command line unless `args` is set with it, as in the file:
    setting cmd alone drops the old arguments; setting args alone keeps the program."""
    loader = _Loader(_WHERE, None, os.environ if environ is None else environ)
    section = f"watcher:{config.name}"
    given = _read(loader, section, options)
    values = current_values(config, section)
    if "cmd" in given and "args" not in given:
        del values["args"]
    keys = {**values.pop("__keys__"), **given.pop("__keys__")}
    values.update(given)
    values["__keys__"] = keys
    return loader.watcher_from_values(config.name, section, values, sockets)


def current_values(config: WatcherConfig, section: str) -> dict[str, Any]:
    """The options that rebuild `config`, as their parsers return them (with
    `__keys__`, as `read_options` gives)."""
    values: dict[str, Any] = {}
    for key, option in _WATCHER_OPTIONS.items():
        if not option.kept:
            continue
        value = option.value_in(config)
        if value is None:
            continue
        if option.parse is _parse_user:
            # A config holds the uid; the loader wants the passwd entry (name, home).
            try:
                value = _parse_user(str(value))
            except ValueError as exc:
                raise ConfigError(str(exc), path=_WHERE, section=section, key=key) from None
        values[key] = value
    values["__keys__"] = {key: key for key in values}
    if config.hook_options:   # the section's keys for its Python hooks (loader.py)
        values["__hook_options__"] = dict(config.hook_options)
    return values


def _read(loader: _Loader, section: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Control-channel options, checked as the loader checks a section's keys."""
    for key, value in options.items():
        _check_text(loader, section, str(key), value)
        if key in ("max_age", "max_age_variance") or str(key).startswith("flapping."):
            # Read from the file by circus_plugins.py, not kept in a WatcherConfig.
            raise ConfigError("set in the config file and applied by reloadconfig",
                              path=_WHERE, section=section, key=str(key))
    return loader.read_options(section, _WATCHER_OPTIONS, _WATCHER_CIRCUS,
                               items=[(str(key), value) for key, value in options.items()],
                               parse=_parse_value)


def _parse_value(option: _Option, value: Any) -> Any:
    """A JSON value for `option`: text by its INI parser, a list or an object by its
    structured reader."""
    if isinstance(value, str):
        return option.parse(value)
    if isinstance(value, bool):
        return option.parse("true" if value else "false")
    if isinstance(value, (int, float)):
        return option.parse(str(value))
    if isinstance(value, (list, dict)) and option.structured is not None:
        return option.structured(value)
    raise ValueError(f"expected a string or a number, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    return {list: "a list", dict: "an object", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)


def _check_text(loader: _Loader, section: str, key: str, value: Any) -> None:
    """The loader's bounds on every text in a value (check_lengths for a file)."""
    if len(key) > MAX_KEY_LENGTH:
        raise loader.error(f"key too long ({len(key)} characters)", section,
                           key[:40] + "...")
    texts = ([value] if isinstance(value, str) else list(value) if isinstance(value, list)
             else [*value, *value.values()] if isinstance(value, dict) else [])
    for text in texts:
        if not isinstance(text, str):
            continue
        if len(text) > MAX_VALUE_LENGTH:
            raise loader.error(f"value too long: {len(text)} characters, at most "
                               f"{MAX_VALUE_LENGTH // 1024} KiB (exec refuses an "
                               "argument or environment string over 128 KiB)",
                               section, key)
        if "\0" in text:
            raise loader.error("the value contains a NUL character", section, key)
