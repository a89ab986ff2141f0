"""sockvisor.log: every line on stderr fits journald when stderr is the journal.

Each case runs in a child interpreter whose stderr is a file; JOURNAL_STREAM is
that file's st_dev:st_ino (what systemd sets) or absent.  Besides sockvisor's
own loggers, asyncio's error reports and a crash (an uncaught exception) must
come out in the same form: `<N>` on every line under journald, `LEVEL name:`
otherwise, so a traceback is one entry at the right priority, not many at
"info".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import asyncio, logging
    from sockvisor import log
    log.setup("info")
    logging.getLogger("sockvisor.test").info("hello")
    logging.getLogger("sockvisor.test").debug("not shown at info")

    def broken():
        raise ValueError("in a callback")

    async def main():
        asyncio.get_running_loop().call_soon(broken)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    raise RuntimeError("the end")
""")


def run(tmp_path: Path, journal: bool) -> list[str]:
    stderr_path = tmp_path / "stderr"
    stderr_path.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    if journal:
        st = os.stat(stderr_path)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with open(stderr_path, "ab") as err:
        result = subprocess.run([sys.executable, "-c", PROGRAM], stderr=err, env=env,
                                timeout=20)
    assert result.returncode == 1
    return stderr_path.read_text().splitlines()


def test_journal_every_line_has_a_priority(tmp_path):
    lines = run(tmp_path, journal=True)
    assert "<6>sockvisor.test: hello" in lines
    assert not [line for line in lines if not re.match(r"<[0-7]>", line)], lines
    # asyncio's report, traceback included, at error priority.
    assert any(line.startswith("<3>asyncio: Exception in callback") for line in lines)
    assert "<3>ValueError: in a callback" in lines
    # The crash, at critical priority.
    assert "<2>sockvisor: sockvisor crashed: the end" in lines
    assert "<2>RuntimeError: the end" in lines
    assert not any("not shown" in line for line in lines)


def test_plain_lines_name_level_and_logger(tmp_path):
    lines = run(tmp_path, journal=False)
    starts = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert any(line.endswith(" INFO sockvisor.test: hello") for line in starts)
    assert any(" ERROR asyncio: Exception in callback" in line for line in starts)
    assert any(line.endswith(" CRITICAL sockvisor: sockvisor crashed: the end")
               for line in starts)
    assert not any("\x1b" in line for line in lines)
