"""sockvisorctl starts fast: its import graph stays free of the supervisor's heavy parts.

Start-up time itself is measured in bench/control.py; this guards the cause of a
regression we had (command modules importing asyncio at the top: ~25 ms).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("asyncio", "dataclasses", "psutil", "tornado", "zmq.asyncio", "logging")


def test_sockvisorctl_imports_nothing_heavy():
    code = ("import sys, json\n"
            "from sockvisor.cli import ctl\n"
            "from sockvisor.control.commands import load_commands\n"
            "ctl.build_parser(load_commands())\n"
            "import sockvisor.control.client\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    # -S: without site-packages' .pth files, which may import anything.
    result = subprocess.run([sys.executable, "-S", "-c",
                             f"import sys; sys.path[:0] = {sys.path!r}\n" + code],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
