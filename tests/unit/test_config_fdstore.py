"""`[sockvisor] fdstore`: may sockvisor put its sockets in the service manager's fd store?

Three values, because the environment alone cannot always say: systemd >= 254
sets $FDSTORE when FileDescriptorStoreMax= is configured, older ones (252 on
Debian 12) do not.  Unset means "ask $FDSTORE", `true` forces the store (an old
systemd configured for it), `false` never uses it.  The integration side (the
fds actually sent, and the restart round trip) is in
tests/integration/test_systemd_fdstore.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sockvisor.config import ConfigError, load

pytestmark = pytest.mark.timeout(10)

ENVIRON = {"PATH": "/usr/bin:/bin"}


def write(tmp_path: Path, globals_: str) -> Path:
    path = tmp_path / "sockvisor.ini"
    path.write_text(textwrap.dedent(f"""
        [sockvisor]
        {globals_}

        [socket:web]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = /bin/true
        sockets = web
    """))
    return path


def test_fdstore_unset_means_ask_the_environment(tmp_path):
    config = load(str(write(tmp_path, "loglevel = info")), environ=ENVIRON)
    assert config.globals.fdstore is None


@pytest.mark.parametrize("raw, expected", [("true", True), ("yes", True), ("1", True),
                                           ("false", False), ("off", False)])
def test_fdstore_explicit(tmp_path, raw, expected):
    config = load(str(write(tmp_path, f"fdstore = {raw}")), environ=ENVIRON)
    assert config.globals.fdstore is expected


def test_fdstore_bad_value_names_file_section_and_key(tmp_path):
    path = write(tmp_path, "fdstore = sometimes")
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    error = info.value
    assert (error.section, error.key) == ("sockvisor", "fdstore")
    text = str(error)
    assert str(path) in text and "[sockvisor]" in text and "fdstore" in text
    assert "expected true or false" in text


def test_fdstore_misspelt_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(write(tmp_path, "fd_store = true")), environ=ENVIRON)
    assert "did you mean 'fdstore'" in str(info.value)
