"""`[sockvisor] http`, `http_token_file` and Circus's httpd/httpd_host/httpd_port."""

from __future__ import annotations

import pytest

from sockvisor.config import ConfigError, load

BODY = "[socket:web]\nport = 0\n[watcher:web]\ncmd = /bin/true\n"


def load_globals(tmp_path, lines: str, section: str = "sockvisor"):
    path = tmp_path / "c.ini"
    path.write_text(f"[{section}]\n{lines}\n{BODY}")
    return load(str(path), environ={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("lines, address", [
    ("", None),
    ("http = 127.0.0.1:9180", "127.0.0.1:9180"),
    ("http = localhost:0", "localhost:0"),
    ("http = [::1]:9180", "[::1]:9180"),
    ("http = unix:/run/sockvisor-console.sock", "unix:/run/sockvisor-console.sock"),
    ("http = 0.0.0.0:9180\nhttp_token_file = /etc/sockvisor/token", "0.0.0.0:9180"),
    ("httpd = true", "localhost:8080"),
    ("httpd = true\nhttpd_host = 127.0.0.1\nhttpd_port = 9000", "127.0.0.1:9000"),
    ("httpd = true\nhttpd_host = ::1", "[::1]:8080"),
    ("httpd = false", None),
])
def test_http_address(tmp_path, lines, address):
    assert load_globals(tmp_path, lines).globals.http == address


def test_circus_section_turns_the_console_on(tmp_path):
    config = load_globals(tmp_path, "httpd = True\nhttpd_port = 8081", section="circus")
    assert config.globals.http == "localhost:8081"


def test_httpd_address_without_httpd_is_ignored_with_a_warning(tmp_path):
    config = load_globals(tmp_path, "httpd_port = 8081")
    assert config.globals.http is None
    assert any("httpd_port: ignored" in warning for warning in config.warnings)


@pytest.mark.parametrize("lines, key, address", [
    ("http = 0.0.0.0:9180", "http", "0.0.0.0:9180"),
    ("http = 192.0.2.7:80", "http", "192.0.2.7:80"),
    ("http = console.example:80", "http", "console.example:80"),
    ("httpd = true\nhttpd_host = 0.0.0.0", "httpd_host", "0.0.0.0:8080"),
])
def test_off_loopback_the_console_needs_the_token_of_each_start(tmp_path, lines, key, address):
    """Circus's `httpd_host = 0.0.0.0` loads: every request then needs the token
    (made afresh at each start, http/auth.py), and a warning says so."""
    config = load_globals(tmp_path, lines)
    assert config.globals.http == address and config.globals.http_token_file is None
    assert any(f"{key}: {address} is not a loopback address: every request" in warning
               and "sockvisorctl console-token" in warning for warning in config.warnings)


@pytest.mark.parametrize("lines, key, says", [
    ("http = 9180", "http", "expected HOST:PORT or unix:/PATH"),
    ("http = 127.0.0.1:99999", "http", "expected HOST:PORT"),
    ("http = ::1:9180", "http", "brackets"),
    ("http = unix:relative.sock", "http", "unix:/ABSOLUTE/PATH"),
    ("http = 127.0.0.1:9180\nhttpd = true", "httpd", "either http or httpd"),
    ("http_token_file = /etc/token", "http_token_file", "without http"),
    ("http = 127.0.0.1:1\nhttp_token_file = token", "http_token_file", "absolute path"),
])
def test_http_errors_name_the_key(tmp_path, lines, key, says):
    with pytest.raises(ConfigError) as info:
        load_globals(tmp_path, lines)
    message = str(info.value)
    assert "[sockvisor]" in message and key in message and says in message, message
