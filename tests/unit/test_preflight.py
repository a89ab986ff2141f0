"""sockvisor.preflight's pure parts: which module `-m` names, where execvpe looks.

(The probes themselves run as a real user: tests/unit/test_config_checks.py and
tests/integration/test_preflight_as_user.py.)"""

from __future__ import annotations

import pytest

from sockvisor.preflight import program_candidates, python_module


@pytest.mark.parametrize("program, args, module", [
    ("/usr/bin/python3", ["-m", "app"], "app"),
    ("/srv/venv/bin/python", ["-u", "-X", "dev", "-mapp.main", "--port", "1"], "app.main"),
    ("python3.11", ["-W", "ignore", "-m", "uvicorn", "--fd", "3"], "uvicorn"),
    ("pypy3", ["-m", "gunicorn"], "gunicorn"),
    ("/usr/bin/python3", ["server.py", "-m", "app"], None),   # -m of the script
    ("/usr/bin/python3", ["-c", "import app", "-m", "x"], None),
    ("/usr/bin/python3", ["-m"], None),
    ("/usr/bin/gunicorn", ["-m", "007"], None),                # not a Python
    ("/usr/bin/pythonic-server", ["-m", "app"], None),
])
def test_python_module(program, args, module):
    assert python_module(program, args) == module


def test_program_candidates_follow_execvpe():
    assert program_candidates("srv", {"PATH": "/a:/b"}, "/w") == ["/a/srv", "/b/srv"]
    assert program_candidates("bin/srv", {"PATH": "/a"}, "/w") == ["/w/bin/srv"]
    assert program_candidates("/opt/srv", {"PATH": "/a"}, "/w") == ["/opt/srv"]
    # An empty PATH entry is the working directory, as for execvpe.
    assert program_candidates("srv", {"PATH": ":/b"}, "/w") == ["/w/srv", "/b/srv"]
