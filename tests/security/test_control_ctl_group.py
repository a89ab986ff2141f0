"""`sockvisorctl -c CONF` run by a group member finds a root-run sockvisor.

Root's sockvisor puts its default endpoint under /run/sockvisor/NAME-HASH/ (0710
for `endpoint_group`).  sockvisorctl run by a member used to look only under its
own /tmp/sockvisor-UID/ and say "no sockvisor".  It now looks in its own user's
place first, then in root's -- and works even when the config is root's alone
(0600: it may hold secrets), since the default place depends only on the path.
A user outside the group is told "permission denied", not served.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from sockvisor import paths

from conftest import Sockvisor
from group_member import Member, operator_group

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user")]


@pytest.fixture
def root_sockvisor(world_readable_dir, scripts):
    group = operator_group()
    directory = world_readable_dir / "sv"
    directory.mkdir()
    sv = Sockvisor(directory, f"""\
[sockvisor]
endpoint_group = {group}

[socket:web]
host = 127.0.0.1
port = 0

[watcher:web]
cmd = {scripts.cmd("worker.py")}
sockets = web
graceful_timeout = 1
""")
    try:
        sv.wait_ready()
        yield sv, Member(world_readable_dir, group)
    finally:
        sv.cleanup()
        runtime = paths.runtime_dir(str(sv.conf))
        with contextlib.suppress(OSError):
            for leftover in os.listdir(runtime):
                os.unlink(os.path.join(runtime, leftover))
            os.rmdir(runtime)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("conf_mode", [0o644, 0o600])
def test_group_member_finds_the_root_endpoint_with_c_conf(root_sockvisor, conf_mode):
    sv, member = root_sockvisor
    assert paths.runtime_dir(str(sv.conf)).startswith("/run/sockvisor/")
    sv.conf.chmod(conf_mode)
    result = member.ctl("-c", str(sv.conf), "status")
    assert result.returncode == 0, result.stderr
    assert "web" in result.stdout and "active" in result.stdout, result.stdout
    # Found the shared endpoint, and it is treated as the group's.
    result = member.ctl("-c", str(sv.conf), "quit")
    assert result.returncode == 1, result.stderr
    assert "endpoint_group_grants = quit" in result.stderr
    assert sv.proc.poll() is None


@pytest.mark.timeout(60)
def test_a_user_outside_the_group_is_told_permission_denied(root_sockvisor):
    sv, member = root_sockvisor
    member.group_gid = member.gid   # nobody with its own group only
    result = member.ctl("-c", str(sv.conf), "status")
    assert result.returncode == 3, result
    assert "permission denied" in result.stderr, result.stderr
