"""Run control requests as a real `endpoint_group` member: `nobody`, with the
operator group as a supplementary group (setgroups: nothing in /etc/group changes).

The client is Debian's /usr/bin/python3 (the test interpreter lives under /root,
0700) with python3-zmq, importing a copy of the sockvisor package from a
world-readable directory: the kernel's permission checks on the endpoint and
sockvisor's own checks both apply, as for a real operator.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sockvisor

SYSTEM_PYTHON = "/usr/bin/python3"
MEMBER = "nobody"

CLIENT = r'''
import json, sys
import zmq
from sockvisor.control import protocol
from sockvisor.control.client import ControlClient

endpoint, mode = sys.argv[1], sys.argv[2]
requests = json.load(sys.stdin)
replies = []
if mode == "one-by-one":
    with ControlClient(endpoint, 30) as client:
        for command, props in requests:
            replies.append(client.call(command, props))
else:   # "pipelined": every request sent before any reply is read
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for number, (command, props) in enumerate(requests):
        sock.send(protocol.make_request(str(number), command, props))
    while len(replies) < len(requests) and sock.poll(30000):
        replies.append(json.loads(sock.recv()))
json.dump(replies, sys.stdout)
'''


def operator_group() -> str:
    """An existing group to act as endpoint_group (nobody is made a member of it
    for the client process only)."""
    for name in ("www-data", "daemon", "bin", "adm"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("no system group to act as the operator group")


class Member:
    """`nobody` + the operator group, running control clients and sockvisorctl."""

    def __init__(self, top: Path, group: str):
        if os.geteuid() != 0:
            pytest.skip("needs root: runs clients as another user")
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            pytest.skip(f"{SYSTEM_PYTHON} is needed to run a client as {MEMBER}")
        check = subprocess.run([SYSTEM_PYTHON, "-c", "import zmq"], capture_output=True)
        if check.returncode != 0:
            pytest.skip(f"{SYSTEM_PYTHON} has no zmq (Debian's python3-zmq)")
        self.lib = top / "lib"
        shutil.copytree(Path(sockvisor.__file__).parent, self.lib / "sockvisor",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [self.lib, *self.lib.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.client = top / "member_client.py"
        self.client.write_text(CLIENT)
        self.client.chmod(0o644)
        entry = pwd.getpwnam(MEMBER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.group_gid = grp.getgrnam(group).gr_gid

    def run(self, *argv: str, stdin: str = "", env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.lib),
                       "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent",
                       **(env or {})}
        return subprocess.run([SYSTEM_PYTHON, *argv], input=stdin, user=self.uid,
                              group=self.gid, extra_groups=[self.group_gid], cwd="/",
                              env=environment, capture_output=True, text=True,
                              timeout=timeout)

    def calls(self, endpoint: str, requests: list[tuple[str, dict[str, Any]]],
              pipelined: bool = False) -> list[dict[str, Any]]:
        result = self.run(str(self.client), endpoint,
                          "pipelined" if pipelined else "one-by-one",
                          stdin=json.dumps(requests))
        assert result.returncode == 0, f"member client failed:\n{result.stderr}"
        return json.loads(result.stdout)

    def call(self, endpoint: str, command: str, props: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        return self.calls(endpoint, [(command, props or {})])[0]

    def ctl(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return self.run("-m", "sockvisor.cli.ctl", *args, env=env)
