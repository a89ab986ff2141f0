"""Loading: an INI file to a validated `Config`.

Everything a user can get wrong in a config file is caught here, before a socket
is bound or a worker spawned, and reported as a `ConfigError` that names the file,
the section and the key.  Which keys exist and how each is parsed is options.py's.

Two steps: `_read_ini` turns the file into sections of text keys (what reads the
file, and what is done to the text before the checks, goes there); `_Loader`
checks each section against the registry and builds the dataclasses.

Checked across sections, because each would otherwise surface only after `start`
had bound the ports: a config needs a watcher; no two sockets may share an
address; no value may be longer than 64 KiB (nothing longer can reach exec, and
the loader stays linear in the file) or hold a NUL.  Whether each worker's user can enter its
working_dir and run its program is asked as that user, by preflight.py.

Reading the file (comments, `include`, the bare [env] section) is circus_ini.py's,
which does it as Circus does.  Substitutions:
  * `$(sockvisor.env.X)` / `$(circus.env.X)` are resolved by circus_ini.py in every
    value, as Circus resolves them (case-insensitively); `add`/`set` over the
    control channel resolve them here, in cmd and args, against the watcher's
    final environment (its `env` on top of sockvisor's own environment);
  * `$(sockvisor.wid)` and `$(sockvisor.sockets.NAME)` (and the `circus.` spellings)
    depend on the worker and are resolved at spawn time by `expand_worker_args`.
"""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import ipaddress
import os
import re
import socket
from typing import Any, Callable, Iterable, Mapping

from sockvisor import circus_ini, circus_plugins, logconfig, logdir
from sockvisor.config.model import (Config, ConfigError, GlobalConfig, HookCommand, HookPython,
                                    LoggingFile, OutputConfig, OutputKind, ReadyKind,
                                    ReadyPolicy, RestartPolicy, SocketConfig, WatcherConfig)
from sockvisor.config.options import (_GLOBAL_CIRCUS, _GLOBAL_OPTIONS, _SOCKET_CIRCUS,
                                      _SOCKET_OPTIONS, _WATCHER_CIRCUS, _WATCHER_OPTIONS,
                                      _Ignored, _Option, _Unsupported)
from sockvisor.config import virtualenv
from sockvisor.config.substitutions import _SUBSTITUTION
from sockvisor.config.values import (CIRCUS_STREAM_CLASSES, MAX_SECONDS, _ENV_KEY, _NAME,
                                     _did_you_mean, _http_is_local, _switched_off,
                                     misspelling_of, split_words)
from sockvisor.timed_rotation import WHEN_VALUES

# A watcher name, or Circus's shell pattern for several in [env:PATTERN].
_ENV_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,200}")


# Longest value any key may have.  execve refuses a single argument or environment
# string over 128 KiB (MAX_ARG_STRLEN), so nothing longer can be meant; and the
# bound keeps the loader's work proportional to a sane file (a 10 MB `args` once
# kept it busy for hours).
MAX_VALUE_LENGTH = 64 * 1024
MAX_KEY_LENGTH = 200


# --------------------------------------------------------------------------- loading

def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; raise ConfigError naming where the problem is."""
    path = os.fspath(path)  # a pathlib.Path would break ConfigError.__str__
    environ = os.environ if environ is None else environ
    ini = _read_ini(path, environ)
    loader = _Loader(os.path.abspath(path), ini.parser, environ, ini.origins)
    loader.warnings.extend(ini.warnings)
    return loader.build()


def _read_ini(path: str, environ: Mapping[str, str]) -> "circus_ini.Ini":
    """The file and its includes, read as Circus reads them (comments, [env],
    $(circus.env.X) everywhere): circus_ini.py.  ConfigError for a file that cannot
    be read or is not INI (duplicate sections and keys included)."""
    try:
        return circus_ini.read(path, environ)
    except circus_ini.IniError as exc:
        raise ConfigError(exc.message, path=exc.path, section=exc.section,
                          key=exc.key) from None


def _default_or(values: Mapping[str, Any], key: str) -> Any:
    """The watcher option `key` from `values`, else its default (the registry's)."""
    return values[key] if key in values else _WATCHER_OPTIONS[key].default


class _Loader:
    def __init__(self, path: str, parser: configparser.ConfigParser | None,
                 environ: Mapping[str, str],
                 origins: Mapping[tuple[str, str | None], str] | None = None):
        # parser None: no file (runtime.py builds watchers from control options).
        self.path = path
        self.parser = parser
        self.environ = environ
        # Which included file gave a key or section (circus_ini.Ini.origins).
        self.origins = origins or {}
        self.warnings: list[str] = []
        self.plugins = circus_plugins.PluginSetup()

    def error(self, message: str, section: str | None = None,
              key: str | None = None) -> ConfigError:
        path = self.origins.get((section, key)) or self.origins.get((section, None))
        return ConfigError(message, path=path or self.path, section=section, key=key)

    def build(self) -> Config:
        global_sections: list[str] = []
        socket_sections: dict[str, str] = {}
        watcher_sections: dict[str, str] = {}
        env_sections: dict[str, str] = {}
        plugin_sections: dict[str, str] = {}
        kinds = {"socket": socket_sections, "watcher": watcher_sections, "env": env_sections,
                 "plugin": plugin_sections}
        shared_env: list[str] = []
        for section in self.parser.sections():
            self.check_lengths(section)
            if section in ("sockvisor", "circus"):
                global_sections.append(section)
                continue
            if section.strip() == "env":
                # Circus's bare [env]: for every watcher, under its own [env:NAME].
                shared_env.append(section)
                continue
            kind, sep, name = section.partition(":")
            if sep and kind.strip() == "env":
                # As in Circus, one [env:a, b] section may serve several watchers.
                names = [part.strip() for part in name.split(",")]
                if not all(_NAME.match(part) or _ENV_PATTERN.fullmatch(part)
                           for part in names):
                    raise self.error("names may use letters, digits, '_', '.' and '-' "
                                     "only, or shell patterns (web*, worker-?), several "
                                     "separated by commas", section)
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
        envs_of: dict[str, list[str]] = {name: list(shared_env) for name in watcher_sections}
        for names, section in env_sections.items():
            for name in names.split(","):
                if _ENV_PATTERN.fullmatch(name) and not _NAME.fullmatch(name):
                    # Circus's [env:web*]: every watcher the pattern matches.
                    matched = [w for w in watcher_sections if fnmatch.fnmatchcase(w, name)]
                    if not matched:
                        self.warnings.append(f"{self.path}: [{section}]: {name!r} matches "
                                             "no watcher: this environment is unused")
                    for watcher_name in matched:
                        if section not in envs_of[watcher_name]:
                            envs_of[watcher_name].append(section)
                    continue
                if name not in watcher_sections:
                    raise self.error(f"no [watcher:{name}] for this environment", section)
                if section not in envs_of[name]:
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
                     circus: dict[str, _Unsupported | _Ignored],
                     items: Iterable[tuple[str, Any]] | None = None,
                     parse: Callable[[_Option, Any], Any] | None = None) -> dict[str, Any]:
        """Parse every key of `section` by its table; canonical names in the result.

        `items` and `parse`: other (key, value) pairs than the section's and how to
        read a value (the control channel's JSON values: runtime.py); the same
        rules for unknown, Circus and duplicate keys either way."""
        by_name: dict[str, str] = {}
        for canonical, option in options.items():
            by_name[canonical] = canonical
            for alias in option.aliases:
                by_name[alias] = canonical
        values: dict[str, Any] = {}
        seen_as: dict[str, str] = {}
        unknown: dict[str, Any] = {}
        for key, raw in (self.parser.items(section) if items is None else items):
            # Circus spells hooks `hooks.before_start = ...`: look dotted keys up by prefix.
            circus_key = key if key in circus else key.partition(".")[0]
            if circus_key in circus and key not in by_name:
                entry = circus[circus_key]
                if isinstance(entry, _Unsupported) and _switched_off(str(raw)):
                    # `httpd = false`, `max_age = 0`: Circus configs often spell out
                    # the default; a feature turned off is one we do not miss.
                    continue
                if isinstance(entry, _Unsupported):
                    raise self.error(f"not supported by sockvisor: {entry.reason}",
                                     section, key)
                if entry.meaningless:
                    continue
                self.warnings.append(f"{self.path}: [{section}] {key}: ignored: {entry.reason}")
                continue
            canonical = by_name.get(key)
            if canonical is None:
                # Suggest a supported key before a Circus key we would refuse.
                hint = _did_you_mean(key, list(by_name)) or _did_you_mean(key, list(circus))
                typo = misspelling_of(key, [*by_name, *circus])
                if typo and not hint:
                    hint = f" (did you mean {typo!r}?)"
                if typo or items is not None:
                    # A misspelt option, whatever Circus does with it (it ignores
                    # `workding_dir`: the worker then runs elsewhere); and what
                    # the control channel sends is checked strictly.
                    raise self.error(f"unknown key{hint}", section, key)
                unknown[key] = hint   # Circus ignores it, or hands it to hooks (below)
                continue
            if canonical in seen_as:
                raise self.error(f"same setting as {seen_as[canonical]!r}; give it once",
                                 section, key)
            seen_as[canonical] = key
            try:
                values[canonical] = (options[canonical].parse(raw) if parse is None
                                     else parse(options[canonical], raw))
            except ValueError as exc:
                raise self.error(str(exc), section, key) from None
        if unknown and options is _WATCHER_OPTIONS and any(
                isinstance(value, HookPython) for value in values.values()):
            # Circus hands a watcher's keys that are no option to its hooks
            # (watcher._options: the uwsgi example's stats_base_port).
            values["__hook_options__"] = {key: str(raw) for key, raw in
                                          (self.parser.items(section) if items is None
                                           else items) if key in unknown}
            for key, hint in unknown.items():   # said, so a stray key is seen
                self.warnings.append(f"{self.path}: [{section}] {key}: not an option: "
                                     f"passed to the Python hooks as watcher._options{hint}")
        elif unknown:
            # Circus reads a file's keys it does not know and ignores them (a
            # watcher's go to its `_options`, unused without hooks): the file
            # still means what it meant, so it loads -- but nothing is dropped
            # without a word.  A key that looks like a misspelt option was
            # refused above.
            for key, hint in unknown.items():
                self.warnings.append(f"{self.path}: [{section}] {key}: ignored: not an "
                                     f"option (Circus ignores it too){hint}")
        values["__keys__"] = seen_as
        return values

    def build_globals(self, section: str | None) -> GlobalConfig:
        if section is None:
            return GlobalConfig()
        values = self.read_options(section, _GLOBAL_OPTIONS, _GLOBAL_CIRCUS)
        keys = values["__keys__"]
        for key in ("endpoint", "pubsub_endpoint"):
            value = values.get(key)
            relative = (value is not None and value.startswith("ipc://")
                        and value[6:7] not in ("/", "@", ""))
            if relative:   # Circus's zmq binds it from circusd's working directory
                values[key] = "ipc://" + self.absolute(value[6:], section, keys[key])
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
        logoutput = values.get("logoutput")
        if logoutput == "stdout":   # Circus's other spelling of "-"
            logoutput = "-"
        if logoutput is not None and logoutput != "-" and not logoutput.startswith("syslog:"):
            logoutput = self.absolute(logoutput, section, keys["logoutput"])
        if values.get("pidfile") is not None:
            values["pidfile"] = self.absolute(values["pidfile"], section, keys["pidfile"])
        if logoutput is not None and logoutput.startswith("syslog:"):
            raise self.error("syslog is not supported: sockvisor logs to stderr, which "
                             "journald records under systemd (with priorities); or give "
                             "a file, or - for stdout", section, keys["logoutput"])
        loggerconfig = self.logging_file(values, section)
        if loggerconfig is not None:
            # As Circus (util.configure_logger): the file decides both.
            for key in ("loglevel", "logoutput"):
                if key in keys:
                    self.warnings.append(f"{self.path}: [{section}] {keys[key]}: ignored: "
                                         "loggerconfig decides where sockvisor's log goes "
                                         "and at which level (as in Circus)")
            logoutput = None
        for key, path in (("logoutput", logoutput), ("pidfile", values.get("pidfile"))):
            if path is not None and path != "-":
                self.check_root_file(path, section, keys[key])
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
            pidfile=values.get("pidfile"),
            logoutput=logoutput,
            loggerconfig=loggerconfig,
        )

    def absolute(self, path: str, section: str, key: str) -> str:
        """`path`, relative to sockvisor's working directory if it is relative --
        where Circus opens it (circusd never changes directory) -- with a warning
        saying so: under systemd that directory is /, rarely what was meant."""
        if os.path.isabs(path):
            return path
        try:
            resolved = os.path.abspath(path)
        except OSError as exc:   # our working directory is gone
            raise self.error(f"a relative path, and sockvisor's working directory "
                             f"cannot be read ({exc.strerror}): give an absolute path",
                             section, key) from None
        if self.parser is not None:
            self.warnings.append(f"{self.path}: [{section}] {key}: {path!r} is relative: "
                                 f"read as {resolved} (from sockvisor's working directory, "
                                 "as Circus reads it); an absolute path says it for sure")
        return resolved

    def logging_file(self, values: dict[str, Any], section: str) -> LoggingFile | None:
        """Circus's `loggerconfig`, read now (logconfig.py says what is checked).
        A relative path is from sockvisor's working directory, where Circus reads
        it (util.configure_logger: os.path.abspath), with a warning."""
        key = values["__keys__"].get("loggerconfig")
        path = values.get("loggerconfig")
        if path is None:
            return None
        path = self.absolute(path, section, key)
        try:
            return LoggingFile(path, logconfig.read(path))
        except logconfig.LoggingConfigError as exc:
            raise self.error(str(exc), section, key) from None

    def check_root_file(self, path: str, section: str, key: str) -> None:
        """A file sockvisor (root) writes for itself (pidfile, logoutput): in a
        folder only root can write, so nobody can plant the name (logdir.py)."""
        if not os.path.isabs(path):
            raise self.error("expected an absolute path", section, key)
        try:
            logdir.check_log_path(path, None, None)
        except OSError as exc:
            raise self.error(str(exc), section, key) from None

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
            # Circus's `httpd_host = 0.0.0.0` (its console had no login at all):
            # served, but every request needs the token made at each start.
            self.warnings.append(
                f"{self.path}: [{section}] {key}: {address} is not a loopback address: "
                "every request to the console needs its bearer token, made afresh at "
                "each start (`sockvisorctl console-token`); set http_token_file for "
                "one that stays")
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
            # Loopback (Circus's default, tcp://127.0.0.1:5555): the server asks
            # the kernel who owns each peer's socket (control/peer.py).  Anywhere
            # else, only CURVE says who a client is.
            from sockvisor.control.peer import is_loopback
            host, colon, port = rest.rpartition(":")
            if not colon or not port.isdigit() or not 0 < int(port) < 65536:
                raise self.error(f"expected tcp://HOST:PORT, got {endpoint!r}", section, key)
            loopback = host == "localhost" or is_loopback(host.removeprefix("[")
                                                          .removesuffix("]"))
            if not loopback and "curve_secret_key_file" not in values:
                raise self.error(f"a tcp:// endpoint on {host} (not loopback) has no "
                                 "access control of its own: configure "
                                 "curve_secret_key_file and curve_authorized_keys_dir, "
                                 "or use ipc:// or a loopback address", section, key)
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
            mode = values.get("mode")
            if "umask" in values:
                # Circus binds under this umask: the file gets 0777 & ~umask.
                # sockvisor sets that mode through the file it bound (sockets.py).
                if mode is not None:
                    raise self.error("give either mode or umask (Circus's: the file "
                                     "gets mode 0777 & ~umask)", section, keys["umask"])
                mode = 0o777 & ~values["umask"]
            return SocketConfig(
                name=name, family=socket.AF_UNIX, path=path,
                backlog=values.get("backlog", 2048), mode=mode,
                owner=values["owner"].pw_uid if "owner" in values else None,
                group=values.get("group"), blocking=values.get("blocking", True))
        for key in ("mode", "owner", "group", "umask"):
            if key in values:
                raise self.error("only unix sockets (path = ...) take mode, owner, "
                                 "group, umask", section, keys[key])
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
        return self.watcher_from_values(name, section, values, sockets, env_sections)

    def watcher_from_values(self, name: str, section: str, values: dict[str, Any],
                            sockets: Mapping[str, SocketConfig],
                            env_sections: tuple[str, ...] = ()) -> WatcherConfig:
        """The watcher `values` (canonical option -> value, as `read_options` gives)
        describe, checked.  cmd, args and env may be text, as in the INI file, or
        already structured (a tuple of words, a mapping) as runtime.py gives them
        for `set` and `add`: those are never turned back into text."""
        keys = values["__keys__"]
        if "cmd" not in values:
            raise self.error("a watcher needs cmd", section, "cmd")

        env: dict[str, str] = {}
        if isinstance(values.get("env"), Mapping):
            env.update(values["env"])
        elif "env" in values:
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
        copy_env = _default_or(values, "copy_env")
        # Without copy_env a worker still gets sockvisor's PATH, so `cmd = python3`
        # resolves the way it does in the shell that wrote the config.
        base_env = (dict(self.environ) if copy_env
                    else {"PATH": self.environ.get("PATH", os.defpath)})
        copy_path = _default_or(values, "copy_path")
        if copy_path:
            # Circus: before the watcher's env, so an explicit PYTHONPATH wins.
            base_env["PYTHONPATH"] = virtualenv.copied_path()
        if "uid" in values:
            # A copied HOME, USER and LOGNAME describe sockvisor's user; a worker run
            # as another gets its own at spawn, unless the config sets them.
            for key in ("HOME", "USER", "LOGNAME"):
                base_env.pop(key, None)
        # $VAR / ${VAR} in [env:NAME] values refers to sockvisor's environment, as in Circus.
        env = {key: self.expand_env_refs(value, section, key) for key, value in env.items()}
        full_env = {**base_env, **env}
        lookup_env = {**self.environ, **env}
        venv = values.get("virtualenv")
        if venv is not None:
            # After env, as Circus: the virtualenv's paths go around the worker's.
            try:
                full_env = virtualenv.with_virtualenv(full_env, venv,
                                                      values.get("virtualenv_py_ver"))
            except ValueError as exc:
                raise self.error(str(exc), section, keys["virtualenv"]) from None
        elif "virtualenv_py_ver" in values and self.parser is not None:
            self.warnings.append(f"{self.path}: [{section}] {keys['virtualenv_py_ver']}: "
                                 "ignored: no virtualenv is given")

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

        # A Python hook may set variables in watcher.env (Circus's example10 sets
        # the one its cmd names in before_spawn): with one, a $(circus.env.X) in
        # cmd/args that nothing sets yet is resolved when a worker starts
        # (launcher.py), as Circus resolves them all.
        defer_env = any(isinstance(value, HookPython) for key, value in values.items()
                        if key.startswith("hooks."))
        if isinstance(values["cmd"], str):
            cmd = self.expand_static(values["cmd"], lookup_env, section, keys["cmd"],
                                     defer_unset=defer_env)
            # Split cmd and args separately so an error names the key that has it.
            cmd_parts = self.split_words(cmd, section, keys["cmd"])
        else:   # words already
            cmd_parts = [self.expand_static(word, lookup_env, section, keys["cmd"],
                                            defer_unset=defer_env)
                         for word in values["cmd"]]
        if not cmd_parts:
            raise self.error("must not be empty", section, keys["cmd"])
        raw_args = values.get("args", "")
        extra_args = [
            self.expand_static(arg, lookup_env, section, keys["args"], defer_unset=defer_env)
            for arg in (self.split_words(raw_args, section, keys.get("args"))
                        if isinstance(raw_args, str) else raw_args)]
        args = tuple(cmd_parts[1:]) + tuple(extra_args)
        shell = _default_or(values, "shell")
        raw_shell_args = values.get("shell_args", "")
        shell_args = tuple(
            self.expand_static(arg, lookup_env, section, keys["shell_args"])
            for arg in (self.split_words(raw_shell_args, section, keys.get("shell_args"))
                        if isinstance(raw_shell_args, str) else raw_shell_args))
        if shell_args and not shell and self.parser is not None:
            # Circus warns too: "shell_args is defined but won't be used".
            self.warnings.append(f"{self.path}: [{section}] {keys['shell_args']}: "
                                 "ignored: only used with shell = true")
        for text, key in ([(part, keys["cmd"]) for part in cmd_parts]
                          + [(arg, keys["args"]) for arg in extra_args]
                          + [(arg, keys["shell_args"]) for arg in shell_args]):
            for match in _SUBSTITUTION.finditer(text):
                ref = match.group(2)
                if ref.startswith("sockets."):
                    socket_name = ref[len("sockets."):]
                    if socket_name not in sockets:
                        raise self.error(f"$({match.group(1)}.{ref}): no [socket:"
                                         f"{socket_name}] is defined", section, key)
                    if socket_name not in wanted:
                        wanted.append(socket_name)
                elif ref.startswith("env.") and defer_env and key != keys.get("shell_args"):
                    pass   # resolved at spawn (see defer_env)
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
        for canonical, alias, who in (("uid", "user", user), ("gid", "group", gid)):
            if keys.get(canonical) == alias and self.parser is not None:
                # Circus 0.19 has no such key: it keeps it unused (freeform), and
                # the worker runs as circusd's own user -- root, usually.
                self.warnings.append(
                    f"{self.path}: [{section}] {alias}: Circus has no `{alias}` option "
                    f"and ignores it (its workers ran as circusd's {alias}); sockvisor "
                    f"reads it as {canonical} and runs them as {who}: write "
                    f"{canonical} = {who} to say so")
        if (uid is not None and uid != os.geteuid()) or (gid is not None and gid != os.getegid()):
            if os.geteuid() != 0:
                raise self.error("switching user or group needs sockvisor to run as root",
                                 section, keys.get("uid", keys.get("gid")))
        working_dir = values.get("working_dir")
        if working_dir is not None:
            working_dir = self.absolute(working_dir, section, keys["working_dir"])
        if working_dir is not None and not os.path.isdir(working_dir):
            raise self.error(f"no such directory: {working_dir}", section, keys["working_dir"])
        # Whether the worker's user can run the program is asked by a child that is
        # that user (preflight.py), at check, start, reloadconfig, add and set.
        if "\0" in cmd_parts[0]:
            raise self.error("the program name contains a NUL character", section,
                             keys["cmd"])

        restart = RestartPolicy(
            respawn=_default_or(values, "respawn"),
            min_uptime=_default_or(values, "min_uptime"),
            backoff_base=_default_or(values, "backoff_base"),
            backoff_max=_default_or(values, "backoff_max"),
            max_restarts=_default_or(values, "max_restarts"),
            window=_default_or(values, "restart_window"),
        )
        restart = self.apply_flapping(name, restart, keys)
        if restart.backoff_max < restart.backoff_base:
            raise self.error("must not be less than backoff_base", section,
                             keys.get("backoff_max", "backoff_max"))
        ready = values.get("ready", ReadyPolicy())
        timeout = _default_or(values, "ready_timeout")
        warmup = values.get("warmup_delay", 0.0)
        if warmup and "ready" not in values:
            # Circus waits warmup_delay after starting each worker before it goes
            # on; here the worker counts as started (ready) once it has lived
            # that long, and a start or reload waits for it.  (Circus also starts
            # the workers one by one; sockvisor starts them together.)
            ready = ReadyPolicy(ReadyKind.DELAY, delay=warmup)
            if "ready_timeout" not in values:
                timeout = max(timeout, warmup * 2)
        elif warmup and self.parser is not None:
            self.warnings.append(f"{self.path}: [{section}] {keys['warmup_delay']}: "
                                 "ignored: ready is given")
        ready = ReadyPolicy(ready.kind, ready.delay, timeout, values.get("ready_settle"))
        if ready.kind == ReadyKind.DELAY and ready.delay >= ready.timeout:
            raise self.error("the ready delay must be shorter than ready_timeout",
                             section, keys.get("ready") or keys["warmup_delay"])
        rlimits = {key[len("rlimit_"):]: value for key, value in values.items()
                   if key.startswith("rlimit_")}
        singleton = _default_or(values, "singleton")
        numprocesses = _default_or(values, "numprocesses")
        if singleton and numprocesses > 1:
            raise self.error(f"singleton = true runs exactly one worker, numprocesses = "
                             f"{numprocesses} asks for more: give one of them",
                             section, keys.get("numprocesses", "numprocesses"))
        # Circus's hooks: $(circus.env.X) resolved in each word of a command, as
        # in cmd; a Python callable's name is taken as it is.
        hooks = {key[len("hooks."):]: (hook if isinstance(hook, HookPython) else HookCommand(
                     tuple(self.expand_static(word, lookup_env, section, keys[key])
                           for word in hook.argv), hook.ignore_failure))
                 for key, hook in values.items() if key.startswith("hooks.")}
        on_demand = _default_or(values, "on_demand")
        if on_demand and not wanted:
            raise self.error("on_demand = true starts the workers at the first connection "
                             "on the watcher's sockets, and it has none: give sockets (or "
                             "use_sockets = true, or $(circus.sockets.NAME) in cmd)",
                             section, keys["on_demand"])
        return WatcherConfig(
            name=name, cmd=cmd_parts[0], args=args,
            numprocesses=numprocesses, sockets=tuple(wanted),
            uid=uid, gid=gid, user=user, home=home, working_dir=working_dir,
            env=full_env, copy_env=copy_env, explicit_env=env, umask=values.get("umask"),
            stop_signal=_default_or(values, "stop_signal"),
            operator_signals=_default_or(values, "operator_signals"),
            graceful_timeout=_default_or(values, "graceful_timeout"),
            restart=restart, ready=ready, reload_batch=_default_or(values, "reload_batch"),
            stdout=self.build_output("stdout", values, section, uid, gid),
            stderr=self.build_output("stderr", values, section, uid, gid),
            autostart=_default_or(values, "autostart"),
            rlimits=rlimits,
            copy_path=copy_path, virtualenv=venv,
            virtualenv_py_ver=values.get("virtualenv_py_ver"),
            shell=shell, shell_args=shell_args, singleton=singleton,
            priority=_default_or(values, "priority"),
            hooks=hooks, hook_timeout=_default_or(values, "hook_timeout"),
            hook_python=values.get("hook_python"),
            hook_options=values.get("__hook_options__", {}),
            send_hup=_default_or(values, "send_hup"), on_demand=on_demand,
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
            circus_class, circus_key = "FileStream", f"{stream}_stream.filename"
        when_key = f"{stream}_rotate_when"
        if circus_class is not None:
            if stream in values:
                raise self.error(f"give either {stream} or {circus_key}", section,
                                 keys[circus_key])
            kind = CIRCUS_STREAM_CLASSES[circus_class]
            output = OutputConfig(kind)
            if kind == OutputKind.FILE:
                filename = values.get(f"{stream}_stream.filename")
                if filename is None:
                    raise self.error(f"{circus_class} needs a filename", section,
                                     f"{stream}_stream.filename")
                output = OutputConfig(OutputKind.FILE, path=filename)
            # Circus's TimedRotatingFileStream rotates by time only, and fails
            # without rotate_when; its other classes ignore rotate_when.
            if circus_class == "TimedRotatingFileStream":
                if when_key not in values:
                    raise self.error(f"TimedRotatingFileStream needs "
                                     f"{stream}_stream.rotate_when ({WHEN_VALUES})",
                                     section, circus_key)
                if values.get(f"{stream}_max_bytes"):
                    raise self.error("TimedRotatingFileStream rotates by time only: "
                                     "remove max_bytes, or use FileStream",
                                     section, keys[f"{stream}_max_bytes"])
            elif circus_class == "WatchedFileStream" and values.get(f"{stream}_max_bytes"):
                raise self.error("WatchedFileStream leaves rotation to logrotate (Circus "
                                 "ignores max_bytes with it): remove max_bytes, or use "
                                 "FileStream", section, keys[f"{stream}_max_bytes"])
            elif when_key in values:
                raise self.error(f"only TimedRotatingFileStream rotates by time "
                                 f"(Circus's {circus_class} ignores it): set "
                                 f"{circus_key} = TimedRotatingFileStream, or remove it",
                                 section, keys[when_key])
        elif values.get(when_key) and values.get(f"{stream}_max_bytes"):
            raise self.error(f"give either {when_key} (by time) or {stream}_max_bytes "
                             f"(by size)", section, keys[when_key])
        if output.kind == OutputKind.FILE:
            assert output.path is not None
            key = keys.get(stream, f"{stream}_stream.filename")
            # Circus's FileStream opens a relative name from circusd's directory.
            output = dataclasses.replace(output, path=self.absolute(output.path, section,
                                                                    key))
            parent = os.path.dirname(output.path)
            if not os.path.isdir(parent):
                raise self.error(f"directory {parent} does not exist", section, key)
            try:
                logdir.check_log_path(output.path, uid, gid)
            except OSError as exc:
                raise self.error(str(exc), section, key) from None
            when = values.get(when_key)
            output = OutputConfig(
                OutputKind.FILE, path=output.path,
                max_bytes=_default_or(values, f"{stream}_max_bytes"),
                # By time, as Circus and logging do: all copies are kept by default.
                backup_count=values.get(f"{stream}_backup_count", 0) if when else
                _default_or(values, f"{stream}_backup_count"),
                rotate_when=when,
                rotate_interval=_default_or(values, f"{stream}_rotate_interval"),
                rotate_utc=_default_or(values, f"{stream}_rotate_utc"),
                watched=output.watched or circus_class == "WatchedFileStream")
        elif values.get(when_key):
            raise self.error(f"rotation is for a file: {stream} is "
                             f"{output.kind.value}", section, keys[when_key])
        return output

    def expand_env_refs(self, value: str, section: str, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return self.environ.get(name, "")
        return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))",
                      replace, value)

    def expand_static(self, text: str, env: Mapping[str, str], section: str,
                      key: str, defer_unset: bool = False) -> str:
        """Resolve $(sockvisor.env.X); leave per-worker substitutions for spawn time
        (and, with `defer_unset`, a variable that is not set yet)."""
        def replace(match: re.Match[str]) -> str:
            ref = match.group(2)
            if ref.startswith("env."):
                name = ref[len("env."):]
                if name not in env and defer_unset:
                    return match.group(0)
                if name not in env:
                    raise self.error(f"$({match.group(1)}.{ref}): {name} is not set",
                                     section, key)
                return env[name]
            return match.group(0)
        return _SUBSTITUTION.sub(replace, text)

