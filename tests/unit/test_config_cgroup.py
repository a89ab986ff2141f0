"""`[sockvisor] cgroup`: a cgroup per worker — auto (default), on (required), off.

What each value does at start is in sockvisor/cgroup.py and proved with real
processes in tests/faults/test_worker_containment.py; here only the parsing.
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

        [watcher:web]
        cmd = /bin/true
    """))
    return path


def test_cgroup_defaults_to_auto(tmp_path):
    assert load(str(write(tmp_path, "")), environ=ENVIRON).globals.cgroup == "auto"


@pytest.mark.parametrize("raw, expected", [("auto", "auto"), ("AUTO", "auto"),
                                           ("on", "on"), ("true", "on"), ("yes", "on"),
                                           ("off", "off"), ("false", "off"), ("0", "off")])
def test_cgroup_values(tmp_path, raw, expected):
    config = load(str(write(tmp_path, f"cgroup = {raw}")), environ=ENVIRON)
    assert config.globals.cgroup == expected


def test_cgroup_bad_value_names_file_section_and_key(tmp_path):
    path = write(tmp_path, "cgroup = sometimes")
    with pytest.raises(ConfigError) as info:
        load(str(path), environ=ENVIRON)
    assert (info.value.section, info.value.key) == ("sockvisor", "cgroup")
    assert "expected auto, on or off" in str(info.value)
