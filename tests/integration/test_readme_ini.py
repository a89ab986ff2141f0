"""The README's INI examples, read the way sockvisor reads them.

Every ```ini block in README.md is parsed (sockvisor/circus_ini.py): none may
leave a comment in a value (a `;` after a blank that did not start a comment
would be passed on to the program).  The full reference example (the one with
[socket:web] on port 80) must pass the real `sockvisor check` with only
environment edits: its program (/usr/bin/myserver) replaced by one that exists.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest

from conftest import run_cli
from sockvisor import circus_ini
from sockvisor.config import OutputKind, ReadyKind, load

pytestmark = pytest.mark.timeout(30)

README = Path(__file__).resolve().parents[2] / "README.md"


def ini_blocks() -> list[str]:
    return re.findall(r"^```ini\n(.*?)^```", README.read_text(encoding="utf-8"),
                      re.MULTILINE | re.DOTALL)


def reference_block() -> str:
    [block] = [b for b in ini_blocks() if "[socket:web]" in b and "port = 80 " in b
               and "[sockvisor]" in b]
    return block


def test_readme_has_ini_examples():
    assert len(ini_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(ini_blocks())))
def test_no_comment_is_left_in_a_value(index):
    sections = circus_ini.parse_text(ini_blocks()[index], f"README.md ```ini block {index}")
    for section, keys in sections.items():
        for key, value in keys.items():
            assert not re.search(r"\s;", value), (section, key, value)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the example runs its worker as www-data")
def test_reference_example_passes_check(world_readable_dir, tmp_path):
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user here")
    program = world_readable_dir / "myserver"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    text = reference_block().replace("/usr/bin/myserver", str(program))
    conf = tmp_path / "readme.ini"
    conf.write_text(text, encoding="utf-8")

    result = run_cli("check", str(conf))
    assert result.returncode == 0, result
    assert "OK (1 sockets, 1 watchers)" in result.stdout

    config = load(str(conf))
    web = config.sockets["web"]
    assert (web.host, web.port, web.backlog) == ("0.0.0.0", 80, 2048)
    watcher = config.watchers["web"]
    assert watcher.argv() == [str(program), "--listen-fd", "$(sockvisor.sockets.web)"]
    assert (watcher.numprocesses, watcher.user) == (4, "www-data")
    assert watcher.ready.kind == ReadyKind.NOTIFY and watcher.ready.settle == 1.0
    assert watcher.ready.timeout == 30 and watcher.reload_batch == 0
    assert watcher.stdout.kind == OutputKind.PREFIX
    assert (watcher.restart.min_uptime, watcher.restart.max_restarts,
            watcher.restart.window) == (1.0, 5, 60.0)
