"""Reading INI files the way Circus 0.19 reads them: one or more files in, sections
and values out, with `$(circus.env.X)` already resolved.

This module owns everything between the bytes on disk and the option tables of
the config package, which then see the same sections and values Circus's own parser
(circus/util.py StrictConfigParser, circus/config.py read_config/get_config) would
hand its watchers.  Circus's rules, and where we differ on purpose:

  * Comments: a line whose first character is `#` or `;`, or whose first word is
    `rem`.  An inline comment starts at the first `;` of a value if the character
    before it is blank (`port = 80 ; the port` -> "80"; `a;b ; c` is kept whole,
    as Circus keeps it).  `#` never starts an inline comment.  A value `""` is
    the empty string.  Unlike Circus, an indented line starting with `#` or `;`
    is a comment too (Circus appends it to the value above, which nobody means:
    the README's own examples comment that way).
  * A line indented deeper than the key above continues its value; the lines
    are joined with "\\n".  (Circus's keys are never indented, so this is its
    rule; an evenly indented file reads as configparser reads it.)
  * Within one file a section or key given twice is an error (Circus merges the
    section and keeps the first key: almost always a mistake).  Across files,
    as in Circus, a section from an included file extends the one already read,
    and a key already read wins (with a warning naming both files).
  * `include` / `include_dir` in [circus] (or [sockvisor]) of the main file
    only: whitespace-separated globs relative to the main file's folder;
    include_dir means `DIR/*.ini`.  A pattern that matches nothing is a warning
    (Circus warns too); an include inside an included file is not followed
    (Circus does not) and is warned about.  Unlike Circus, glob results are
    read in sorted order (Circus's is the directory's, i.e. arbitrary), and an
    included file that cannot be read is an error, not silently skipped; so is
    one that a user other than root (or sockvisor's own) could have written, or
    whose folder they could write (`open_included`): it would decide what root
    runs.
  * Substitutions `$(circus.X)` and `((circus.X))` (and `sockvisor.` for
    `circus.`) are case-insensitive, as in Circus.  `env.NAME` is resolved here,
    in every value except a watcher's own environment ([env:NAME] and its `env`
    key, which Circus does not expand): in a watcher against sockvisor's
    environment, the bare [env] section, the watcher's `env` key and its
    [env:NAME] sections (later wins); elsewhere against sockvisor's environment
    and [env]; in [env] itself against sockvisor's environment.  Variable names
    match case-insensitively, the last one set winning among names that differ
    only in case (Circus lowercases them all).  An unset variable is an error
    naming file, section and key (Circus would pass the text on literally);
    in cmd and args it is left for the config package to refuse after the other keys
    (Circus resolves those again at spawn time, after its hooks ran).
    `wid` and `sockets.NAME` depend on the worker: they are rewritten to the
    canonical lowercase spelling (NAME as its [socket:NAME] spells it) and left
    for spawn time (config.expand_worker_args).  Any other name is an error.

What a section or key means is the config package's business, not this module's.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Mapping

from sockvisor import logdir

GLOBAL_SECTIONS = ("circus", "sockvisor")
INCLUDE_KEYS = ("include", "include_dir")


class IniError(Exception):
    """A problem in a file, located by file, section and key where known."""

    def __init__(self, message: str, *, path: str, section: str | None = None,
                 key: str | None = None):
        self.message = message
        self.path = path
        self.section = section
        self.key = key
        super().__init__(message)


@dataclass
class Ini:
    """What a main config file and its includes say."""
    parser: configparser.ConfigParser
    # (section, key) -> the included file it came from; (section, None) -> the
    # included file that first opened the section.  Main-file entries are absent.
    origins: dict[tuple[str, str | None], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- one file

_HEADER = re.compile(r"\[(?P<header>.+)\]")     # text after the last `]` is ignored
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]\s*(?P<value>.*)$")


def strip_inline_comment(value: str) -> str:
    """Circus's rule: the first `;` starts a comment if a blank precedes it.
    Circus looks at `value[pos - 1]`, so a `;` that begins the value counts as
    preceded by the value's last character; kept, to mean what Circus means."""
    pos = value.find(";")
    if pos != -1 and value[pos - 1].isspace():
        value = value[:pos]
    value = value.strip()
    return "" if value == '""' else value


def parse_text(text: str, path: str) -> dict[str, dict[str, str]]:
    """One file's sections, in order, each its keys in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    section_name = ""
    key: str | None = None
    key_indent = 0
    bad_lines: list[int] = []
    # Only "\n" ends a line: the file is read with universal newlines, and a
    # form feed or U+2028 inside a value is the value's (as in configparser).
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in "rR" and line.split(None, 1)[0].lower() == "rem":
            continue
        indent = len(line) - len(line.lstrip())
        if current is not None and key is not None and indent > key_indent:
            current[key].append(stripped)
            continue
        key_indent = indent
        header = _HEADER.match(stripped)
        if header:
            section_name = header.group("header")
            if "\0" in section_name:
                raise IniError(f"line {lineno}: the section name contains a NUL "
                               "character", path=path)
            if section_name in sections:
                raise IniError(f"section defined twice (line {lineno})", path=path,
                               section=section_name)
            current = sections[section_name] = {}
            key = None
            continue
        if current is None:
            raise IniError(f"line {lineno}: a key before any [section]", path=path)
        option = _OPTION.match(stripped)
        if not option or not option.group("key"):
            bad_lines.append(lineno)
            key = None
            continue
        key = option.group("key")
        if key in current:
            raise IniError(f"key defined twice in the section (line {lineno})",
                           path=path, section=section_name, key=key)
        current[key] = [strip_inline_comment(option.group("value"))]
    if bad_lines:
        raise IniError(f"cannot parse line(s) {', '.join(map(str, bad_lines))}", path=path)
    return {name: {k: "\n".join(v) for k, v in keys.items()}
            for name, keys in sections.items()}


_MAX_LINKS = 40   # as the kernel's own path walk


def open_included(path: str, links: int = 0) -> int:
    """An fd to read the included file `path`, or UntrustedInclude.

    Whoever can write an included file, or the folder it is in, decides what
    sockvisor runs, as root: so both must be root's (or sockvisor's own user's),
    not group- or world-writable, and the folder is reached as logdir.py reaches
    a log folder (no link anyone else could have planted is followed).  A link
    in such a folder was made by root and is followed, to a target checked the
    same way.  Circus reads whatever the glob found."""
    trust = logdir.Trust(None, None)
    directory, name = os.path.split(path)
    try:
        # First with our wording; open_directory then re-checks on the fds it holds.
        reason = trust.writers(os.stat(directory))
        if reason is not None:
            raise UntrustedInclude(f"its folder {logdir.describe(directory, os.stat(directory))}"
                                   f" is {reason}")
        dirfd = logdir.open_directory(directory, trust)
    except FileNotFoundError:
        raise UntrustedInclude(f"no such folder {directory}") from None
    except OSError as exc:
        raise UntrustedInclude(str(exc)) from None
    try:
        entry = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if stat.S_ISLNK(entry.st_mode):
            if links >= _MAX_LINKS:
                raise UntrustedInclude("too many symbolic links")
            target = os.path.join(directory, os.readlink(name, dir_fd=dirfd))
            return open_included(os.path.normpath(target), links + 1)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dirfd)
    except FileNotFoundError:
        raise UntrustedInclude(f"{path} does not exist") from None
    except OSError as exc:
        raise UntrustedInclude(f"cannot open {path}: {exc.strerror}") from None
    finally:
        os.close(dirfd)
    st = os.fstat(fd)
    reason = (None if stat.S_ISREG(st.st_mode) else "not a regular file") \
        or trust.writers(st)
    if reason is not None:
        os.close(fd)
        raise UntrustedInclude(f"{logdir.describe(path, st)} is {reason}")
    os.set_blocking(fd, True)
    return fd


class UntrustedInclude(Exception):
    """An included file sockvisor must not take orders from; the message says why."""


def read_file(path: str, shown_as: str | None = None, fd: int | None = None
              ) -> dict[str, dict[str, str]]:
    shown = path if shown_as is None else shown_as
    try:
        with (open(path, encoding="utf-8") if fd is None
              else open(fd, encoding="utf-8", closefd=True)) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise IniError("no such file", path=shown) from None
    except PermissionError:
        raise IniError("permission denied reading the file", path=shown) from None
    except IsADirectoryError:
        raise IniError("is a directory, not a config file", path=shown) from None
    except UnicodeDecodeError as exc:
        raise IniError(f"not UTF-8 text ({exc.reason})", path=shown) from None
    except OSError as exc:
        raise IniError(f"cannot read: {exc.strerror}", path=shown) from None
    return parse_text(text, shown)


# --------------------------------------------------------------------------- substitutions

_PREFIX = r"(?P<prefix>circus|sockvisor)\.(?P<ref>[\w.\-]+)"
SUBSTITUTION = re.compile(rf"\$\({_PREFIX}\)|\(\({_PREFIX.replace('?P<', '?P<d')}\)\)",
                          re.IGNORECASE)


def lower_keys(env: Mapping[str, str]) -> dict[str, str]:
    """Names folded as Circus folds them: of names equal but for case, the one
    set last (in the merged order) wins."""
    return {name.lower(): value for name, value in env.items()}


def substitute(text: str, env: Mapping[str, str], socket_names: Mapping[str, str],
               fail: Callable[[str], None], where: str = "sockvisor's environment",
               defer_unset: bool = False) -> str:
    """Resolve env.NAME against `env` (lowercased names), normalise wid and
    sockets.NAME; `fail(message)` raises for an unset variable (unless
    `defer_unset`: then it is left, spelled canonically, for the spawn-time
    pass) or an unknown name."""
    def replace(match: re.Match[str]) -> str:
        prefix = (match.group("prefix") or match.group("dprefix")).lower()
        ref = match.group("ref") or match.group("dref")
        lowered = ref.lower()
        if lowered.startswith("env."):
            name = ref[len("env."):]
            if name.lower() not in env and defer_unset:
                return f"$({prefix}.env.{name})"
            if name.lower() not in env:
                fail(f"$({prefix}.env.{name}): {name} is not set (looked up, ignoring "
                     f"case as Circus does, in {where})")
            return env[name.lower()]
        if lowered == "wid":
            return f"$({prefix}.wid)"
        if lowered.startswith("sockets."):
            name = ref[len("sockets."):]
            return f"$({prefix}.sockets.{socket_names.get(name.lower(), name)})"
        fail(f"unknown substitution {match.group(0)}; known: sockets.NAME, wid, "
             "env.NAME")
        raise AssertionError("unreachable")
    return SUBSTITUTION.sub(replace, text)


# Watcher keys Circus converts as it reads them (circus/config.py `dget`): their
# substitutions see only sockvisor's environment and [env], not the watcher's own
# env, which Circus merges in afterwards.
GLOBAL_ENV_WATCHER_KEYS = frozenset({
    "numprocesses", "warmup_delay", "executable", "on_demand", "shell", "send_hup",
    "stop_children", "close_child_stderr", "close_child_stdout", "close_child_stdin",
    "use_sockets", "singleton", "copy_env", "copy_path", "max_retry",
    "graceful_timeout", "priority", "check_flapping", "respawn", "autostart"})


# Circus formats cmd and args again when it spawns, against the watcher's env as
# it is then (a Python hook may have added to it); so an unset variable there is
# left, in canonical spelling, for the config package's own pass, which refuses it after
# the watcher's other keys (a hook among them) are checked.
SPAWN_TIME_KEYS = ("cmd", "args")

ENV_SOCKVISOR = "sockvisor's environment"
ENV_GLOBAL = "sockvisor's environment and [env]"
ENV_WATCHER = "sockvisor's environment, [env] and the watcher's own env"


def _env_pairs(text: str) -> dict[str, str]:
    """The watcher `env = A=1, B=2` key (sockvisor's); malformed items are
    the config package's to report, so skipped here."""
    pairs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            pairs[name.strip()] = value.strip()
    return pairs


# --------------------------------------------------------------------------- the whole read

def read(path: str, environ: Mapping[str, str]) -> Ini:
    """Read `path` and what it includes; resolve $(circus.env.X)."""
    sections = read_file(path)
    located = os.path.abspath(path)   # how the config package names the main file
    origins: dict[tuple[str, str | None], str] = {}
    warnings: list[str] = []
    main_global = next((name for name in GLOBAL_SECTIONS if name in sections), None)
    environ_lower = lower_keys(environ)

    # ---- includes (from the main file only, as in Circus)
    if main_global is not None:
        base = os.path.dirname(located)
        seen = {os.path.realpath(path)}
        patterns: list[tuple[str, str]] = []
        for key in INCLUDE_KEYS:
            raw = sections[main_global].pop(key, None)
            if raw is None:
                continue

            def fail(message: str, key: str = key) -> None:
                raise IniError(message, path=located, section=main_global, key=key)
            raw = substitute(raw, environ_lower, {}, fail, ENV_SOCKVISOR)
            for word in raw.split():
                pattern = word if key == "include" else os.path.join(word, "*.ini")
                patterns.append((key, os.path.join(base, pattern)))
        for key, pattern in patterns:
            found = sorted(glob.glob(pattern))
            if not found:
                warnings.append(f"{located}: [{main_global}] {key}: {pattern} matches no "
                                "file; skipped, as Circus does (relative paths are from "
                                "the main config file's folder)")
            for included in found:
                real = os.path.realpath(included)
                if real in seen:
                    continue   # Circus would read it again, to no effect
                seen.add(real)
                if os.path.isdir(included):
                    warnings.append(f"{located}: [{main_global}] {key}: {included} is a "
                                    "directory; skipped")
                    continue
                try:
                    fd = open_included(os.path.abspath(included))
                except UntrustedInclude as exc:
                    runs_as = "root" if os.geteuid() == 0 else "its own user"
                    raise IniError(f"{included} not read: {exc}: whoever can write it "
                                   f"decides what sockvisor runs, as {runs_as}; make the "
                                   "file and its folder root's, not group- or "
                                   "world-writable",
                                   path=located, section=main_global, key=key) from None
                _merge(sections, read_file(included, fd=fd), included, origins, warnings,
                       located)

    # ---- substitutions
    bare_env = next((name for name in sections if name.strip() == "env"), None)
    env_section = sections.get(bare_env, {}) if bare_env is not None else {}
    socket_names = {name.partition(":")[2].strip().lower(): name.partition(":")[2].strip()
                    for name in sections if name.partition(":")[0].strip() == "socket"}

    def expand(section: str, env: Mapping[str, str], where: str,
               skip: tuple[str, ...] = (), global_keys: frozenset[str] = frozenset(),
               defer: tuple[str, ...] = ()) -> None:
        for key, value in sections[section].items():
            if key in skip:
                continue

            def fail(message: str, key: str = key) -> None:
                raise IniError(message, path=origins.get((section, key), located),
                               section=section, key=key)
            use, said = env, where
            if key in global_keys:
                use, said = global_lower, (f"{ENV_GLOBAL}: Circus reads {key} before "
                                           "it adds the watcher's own env")
            sections[section][key] = substitute(value, use, socket_names, fail, said,
                                                defer_unset=key in defer)

    if bare_env is not None:
        expand(bare_env, environ_lower, ENV_SOCKVISOR)
    global_env = {**environ, **env_section}
    global_lower = lower_keys(global_env)
    # What each watcher's substitutions see: what the worker gets, in the order
    # the config package builds it (its `env` key, then [env], then its [env:NAME] sections).
    watcher_envs: dict[str, dict[str, str]] = {}
    section_of: dict[str, str] = {}
    for name in sections:
        kind, sep, watcher = name.partition(":")
        if sep and kind.strip() == "watcher":
            section_of.setdefault(watcher.strip(), name)
            watcher_envs[name] = {**global_env, **_env_pairs(sections[name].get("env", "")),
                                  **env_section}
    for name in sections:
        kind, sep, names = name.partition(":")
        if sep and kind.strip() == "env":
            for watcher in names.split(","):
                if watcher.strip() in section_of:
                    watcher_envs[section_of[watcher.strip()]].update(sections[name])
    for name in sections:
        kind, sep, _ = name.partition(":")
        if name == bare_env or (sep and kind.strip() == "env"):
            continue
        if name in watcher_envs:
            expand(name, lower_keys(watcher_envs[name]), ENV_WATCHER, skip=("env",),
                   global_keys=GLOBAL_ENV_WATCHER_KEYS, defer=SPAWN_TIME_KEYS)
        else:
            expand(name, global_lower, ENV_GLOBAL)

    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str  # type: ignore[assignment]  # keys are case-sensitive
    for name, keys in sections.items():
        parser.add_section(name)
        for key, value in keys.items():
            parser.set(name, key, value)
    return Ini(parser, origins, warnings)


def _merge(sections: dict[str, dict[str, str]], extra: dict[str, dict[str, str]],
           source: str, origins: dict[tuple[str, str | None], str],
           warnings: list[str], main: str) -> None:
    """Fold an included file into what was read: Circus's first-read-wins."""
    for name, keys in extra.items():
        if name in GLOBAL_SECTIONS:
            for key in INCLUDE_KEYS:
                if keys.pop(key, None) is not None:
                    warnings.append(f"{source}: [{name}] {key}: ignored: only the main "
                                    "config file's include is followed, as in Circus")
        if name not in sections:
            sections[name] = {}
            origins[(name, None)] = source
        for key, value in keys.items():
            if key in sections[name]:
                first = origins.get((name, key), main)
                warnings.append(f"{source}: [{name}] {key}: ignored: already set in "
                                f"{first} (the first file read wins, as in Circus)")
                continue
            sections[name][key] = value
            origins[(name, key)] = source
