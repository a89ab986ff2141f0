"""Value parsers: one option's raw text to its value, or a ValueError whose
message reads well after "file: [section] key: ".  Also the few text helpers the
loader and the control commands share (word splitting, signal names, addresses).

Pure functions: which option uses which parser is declared in options.py.
"""

from __future__ import annotations

import difflib
import grp
import pwd
import re
import signal
from typing import Callable

from sockvisor import wholenumber
from sockvisor.timed_rotation import parse_when
from sockvisor.config.model import (UNLIMITED_RESTARTS, OutputConfig, OutputKind,
                                    ReadyKind, ReadyPolicy)

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
    return _operator_signals_of(_parse_list(raw))


def _operator_signals_of(words: "list[str] | tuple[str, ...]") -> frozenset[int]:
    """The signals named by `words` (from the INI text, or a list over the control
    channel): the rules of `_parse_operator_signals`."""
    signals: set[int] = set()
    for word in words:
        if not isinstance(word, str):
            raise ValueError(f"expected signal names such as HUP or USR1, got {word!r}")
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


# Circus's own stream classes (circus.stream) and what each is here.
CIRCUS_STREAM_CLASSES = {
    "FileStream": OutputKind.FILE, "WatchedFileStream": OutputKind.FILE,
    "TimedRotatingFileStream": OutputKind.FILE, "NullStream": OutputKind.NULL,
    "StdoutStream": OutputKind.PREFIX, "FancyStdoutStream": OutputKind.PREFIX}


def _parse_circus_stream_class(raw: str) -> str:
    """The Circus class name (a key of CIRCUS_STREAM_CLASSES)."""
    # Circus's own classes, bare or as circus.stream.X; `mypkg.FileStream` is a
    # user's class that happens to share the name, not ours to imitate.
    module, _, name = raw.strip().rpartition(".")
    if module and not (module + ".").startswith("circus.stream."):
        name = ""
    if name not in CIRCUS_STREAM_CLASSES:
        raise ValueError(
            f"stream class {raw.strip()!r} is not one of Circus's own, which are all "
            f"sockvisor runs ({', '.join(CIRCUS_STREAM_CLASSES)}): sockvisor writes "
            "worker output itself and loads no stream code; use one of those, or "
            "stdout = prefix and a log shipper reading sockvisor's output or journald")
    return name


def _parse_rotate_when(raw: str) -> str:
    return parse_when(raw)


def _parse_start_failure(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("exit", "continue"):
        raise ValueError(f"expected exit or continue, got {raw.strip()!r}")
    return value



def _parse_rlimit(raw: str) -> int:
    # As in Circus, an empty value is no limit (RLIM_INFINITY), as is -1.
    return -1 if not raw.strip() else _parse_int(-1)(raw)



_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


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


# How alike a key must be to an option to count as its misspelling (an error,
# not an unknown key Circus would ignore): `workding_dir` (0.96), `numprocess`
# (0.91) are; `statsd_host` (0.76 to httpd_host), `max_retries` (0.8) are not.
TYPO_CUTOFF = 0.85

# Options whose misspelling, ignored as Circus ignores it, would leave a worker
# running as root or a socket file open to more users than meant: for these a
# key two edits away, however short (`grp` for group, `ui` for uid), or one
# that contains the name (`setuid`, `username`) counts as a misspelling.  (A
# misspelt endpoint_group, http or curve key errs on the safe side: less
# access, or a config error of its own.)
_SENSITIVE = ("uid", "gid", "user", "group", "owner", "mode", "umask", "rlimit_")


def misspelling_of(key: str, options: list[str]) -> str | None:
    """The option `key` is most likely a misspelling of, if it looks like one:
    as alike as TYPO_CUTOFF, or an edit or two away (one for a key of four
    letters or less: not `host` for `port`); for an option in _SENSITIVE, two
    edits whatever the length, or the option's name inside the key."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=TYPO_CUTOFF)
    if close:
        return close[0]
    best: tuple[int, str] | None = None
    lowered = key.lower()
    for option in options:
        sensitive = option.startswith(_SENSITIVE)
        limit = 2 if sensitive or len(key) > 4 else 1
        distance = _edits(lowered, option.lower(), limit)
        if sensitive and distance > limit and len(option) >= 3 and option in lowered:
            distance = limit   # setuid, username, run_as_user: it says which option
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, option)
    return best[1] if best else None


def _edits(a: str, b: str, limit: int) -> int:
    """Edits from `a` to `b` (insert, delete, replace, swap two neighbours), or
    limit + 1 once it is certain to be more than `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if (i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]):
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[len(b)]


def _did_you_mean(word: str, choices: list[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""



def _parse_loggerconfig(raw: str) -> str | None:
    """Circus's `loggerconfig`: `default` (or nothing) for sockvisor's own log
    set-up, else the path of a logging configuration file, which the loader
    reads and checks (logconfig.py: whose it is, its format)."""
    if raw.strip().lower() in ("", "default"):
        return None
    return raw.strip()
