"""Property tests (hypothesis) for the config loader: any input → a Config or a
ConfigError, never another exception, and never slow (issue 8).

Three kinds of input: arbitrary text; INI-shaped text whose sections and keys are
the ones sockvisor knows (so the parsers behind each key are reached) with odd
values; and word splitting, which must agree with `shlex.split` (the loader has
its own, linear, splitter).  Bounded in examples and per-example time, so the
file runs in a few seconds; `derandomize` keeps CI runs repeatable.

Pure logic: files in a temporary directory, a fixed environment passed with
`environ=`; the loader only reads (stat, isdir, pwd), nothing is bound or spawned.
"""

from __future__ import annotations

import shlex
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockvisor import config as config_module
from sockvisor.config import Config, ConfigError, load

pytestmark = pytest.mark.timeout(120)

ENVIRON = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "X": "/bin/true"}

#: Per example: the loader's own work is milliseconds; this is far from a hang.
PER_LOAD = 2.0

PROPERTY = settings(max_examples=200, deadline=timedelta(seconds=PER_LOAD),
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def conf_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties") / "sockvisor.ini"


def load_text(path: Path, text: str) -> Config | ConfigError:
    """Load `text`; the property is that this returns (no other exception escapes)
    and returns in time."""
    path.write_text(text, encoding="utf-8")
    started = time.monotonic()
    try:
        result: Config | ConfigError = load(str(path), environ=ENVIRON)
    except ConfigError as exc:
        result = exc
        # A usable message: located in the file, not a repr of an exception.
        assert str(path) in str(exc)
        assert "Traceback" not in str(exc)
    assert time.monotonic() - started < PER_LOAD
    return result


# --------------------------------------------------------------------------- strategies

ODD_VALUES = [
    "", " ", "0", "1", "-1", "²", "٣", "1e400", "nan", "inf", "-0", "0x10", "0o7", "07",
    "99999999999999999999999", "true", "no", "yes please", "file:/tmp", "file:/",
    "file:relative", "/dev/null", "prefix", "delay:1", "delay:-1", "delay:nan", "notify",
    "/bin/true", "true", "sleep 1", "$(circus.env.X)", "$(sockvisor.env.NOPE)",
    "$(sockvisor.sockets.web)", "$(circus.wid)", "$(sockvisor.", "'", '"', "\\",
    "a\\", "nobody", "root", "65534", "4294967296", "::", "0.0.0.0", "[::1]", "::ffff:1.2.3.4",
    "localhost", "example.com", "@abstract", "ipc:///tmp/x", "ipc://", "tcp://127.0.0.1:1",
    "AF_UNIX", "AF_INET6", "SOCK_DGRAM", "/tmp", "/nonexistent/x", "web", "web, web",
    "A=1,B", "=1", "TERM", "SIGKILL", "64", "0777", "8", "\t", "a" * 300,
]

KNOWN_SECTIONS = ["sockvisor", "circus", "socket:web", "socket:api", "watcher:web",
                  "watcher:w2", "env:web", "env:web,w2", "env:nope", "plugin:x",
                  "watcher", "socket:", "watcher:bad name"]

KEYS = sorted({*config_module._GLOBAL_OPTIONS, *config_module._GLOBAL_CIRCUS,
               *config_module._SOCKET_OPTIONS, *config_module._SOCKET_CIRCUS,
               *config_module._WATCHER_OPTIONS, *config_module._WATCHER_CIRCUS,
               "PATH", "HOME", "unknown_key", "hooks.before_start", "user", "group"})

# Printable text without newlines (a newline would make a continuation line or a
# new key; the free-text strategy covers those).
line_text = st.text(st.characters(blacklist_categories=("Cs",),
                                  blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85"
                                                       "\u2028\u2029"), max_size=40)
values = st.one_of(st.sampled_from(ODD_VALUES), line_text)


@st.composite
def ini_files(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        section = draw(st.one_of(st.sampled_from(KNOWN_SECTIONS), line_text))
        lines.append(f"[{section}]")
        keys = draw(st.lists(st.one_of(st.sampled_from(KEYS), line_text), max_size=8,
                             unique=True))
        for key in keys:
            lines.append(f"{key} = {draw(values)}")
    return "\n".join(lines) + "\n"


@st.composite
def mostly_valid_files(draw) -> str:
    """A valid config with one or two keys given odd values: reaches deep checks."""
    sections = {
        "sockvisor": {"loglevel": "info"},
        "socket:web": {"host": "127.0.0.1", "port": "0"},
        "watcher:web": {"cmd": "/bin/true", "sockets": "web"},
        "env:web": {"A": "1"},
    }
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(sections)))
        options = {"sockvisor": config_module._GLOBAL_OPTIONS,
                   "socket:web": config_module._SOCKET_OPTIONS,
                   "watcher:web": config_module._WATCHER_OPTIONS,
                   "env:web": {"PATH": None, "B": None}}[section]
        key = draw(st.sampled_from(sorted(options)))
        sections[section][key] = draw(values)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())
                   for name, body in sections.items())


# --------------------------------------------------------------------------- properties

@PROPERTY
@given(text=st.text(max_size=400))
def test_any_text_gives_a_config_or_a_config_error(conf_path, text):
    load_text(conf_path, text)


@PROPERTY
@given(text=ini_files())
def test_any_ini_gives_a_config_or_a_config_error(conf_path, text):
    load_text(conf_path, text)


@PROPERTY
@given(text=mostly_valid_files())
def test_odd_values_for_known_keys_give_a_config_or_a_config_error(conf_path, text):
    result = load_text(conf_path, text)
    if isinstance(result, Config):
        assert set(result.watchers) == {"web"}


@settings(max_examples=30, deadline=timedelta(seconds=PER_LOAD), derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["cmd", "args", "env", "working_dir", "stdout", "sockets"]),
       length=st.integers(60_000, 3_000_000),
       char=st.sampled_from(["x", " ", "'", '"', "\\", "$(circus.wid)", "é"]))
def test_huge_values_are_refused_or_loaded_quickly(conf_path, key, length, char):
    value = (char * (length // len(char) + 1))[:length]
    text = ("[socket:web]\nport = 0\n[watcher:web]\n"
            + ("cmd = /bin/true\n" if key != "cmd" else "") + f"{key} = {value}\n")
    load_text(conf_path, text)


SHELLISH = st.text(st.sampled_from(list("ab \t\n'\"\\#$()é")), max_size=30)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(text=SHELLISH)
def test_split_words_agrees_with_shlex(text):
    try:
        expected = shlex.split(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            config_module.split_words(text)
        assert str(info.value) == str(exc)
    else:
        assert config_module.split_words(text) == expected
