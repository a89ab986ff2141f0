"""`sockvisorctl -c CONF` run by a group member finds a root-run sockvisor.

Root's sockvisor puts its default endpoint under /run/sockvisor/NAME-HASH/ (0710
for `endpoint_group`).  sockvisorctl run by a member used to look only under its
own /tmp/sockvisor-UID/ and say "no sockvisor".  It now looks in its own user's
place first, then in root's -- and works even when the config is root's alone
(0600: it may hold secrets), since the default place depends only on the path.
A user outside the group is told "permission denied", not served.

Its own place, without $XDG_RUNTIME_DIR, is /tmp/sockvisor-UID/: any local user
may create that first.  A place that is not the member's or root's, or that
others may write to, is skipped (said in the error if nothing else is found):
the member's sockvisorctl never talks to whoever put a socket there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket

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


SPOOFER = "daemon"   # another local user: neither the member nor root

# (owner, mode) of /tmp/sockvisor-UID and of the config's directory in it.
SPOOFS = {
    "both another user's": ((SPOOFER, 0o755), (SPOOFER, 0o755)),
    "base writable by all": (("member", 0o777), (SPOOFER, 0o755)),
    "folder writable by all": (("member", 0o755), ("member", 0o777)),
}


@pytest.fixture
def spoof():
    """spoof(conf, uid, layout) -> listening sockets at the member's first place
    for `conf` (its `admin` and `control`, mode 0777), laid out as `layout`."""
    made: list[str] = []
    listening: list[socket.socket] = []

    def make(conf: str, member_uid: int, layout: str) -> list[socket.socket]:
        base = f"/tmp/sockvisor-{member_uid}"
        if os.path.lexists(base):
            pytest.skip(f"{base} exists already; not ours to change")
        made.append(base)
        (base_owner, base_mode), (dir_owner, dir_mode) = SPOOFS[layout]
        owners = {"member": member_uid, SPOOFER: pwd.getpwnam(SPOOFER).pw_uid}
        directory = paths.runtime_dir(conf, base)
        os.mkdir(base)
        os.mkdir(directory)
        for path, owner, mode in ((base, base_owner, base_mode),
                                  (directory, dir_owner, dir_mode)):
            os.chown(path, owners[owner], -1)
            os.chmod(path, mode)
        for name in ("admin", "control"):
            fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listening.append(fake)
            fake.bind(f"{directory}/{name}")
            fake.listen(16)
            fake.setblocking(False)
            os.chmod(f"{directory}/{name}", 0o777)
            os.chown(f"{directory}/{name}", owners[SPOOFER], -1)
        return listening

    yield make
    for fake in listening:
        fake.close()
    for base in made:
        shutil.rmtree(base, ignore_errors=True)


def _nobody_connected(fakes: list[socket.socket]) -> None:
    for fake in fakes:
        with pytest.raises(BlockingIOError):
            connection, _ = fake.accept()
            connection.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", sorted(SPOOFS))
def test_a_spoofed_own_place_is_skipped_for_roots_endpoint(root_sockvisor, spoof,
                                                            layout):
    sv, member = root_sockvisor
    fakes = spoof(str(sv.conf), member.uid, layout)
    result = member.ctl("-c", str(sv.conf), "status")
    assert result.returncode == 0, result.stderr
    assert "web" in result.stdout and "active" in result.stdout, result.stdout
    _nobody_connected(fakes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", sorted(SPOOFS))
def test_a_spoofed_place_alone_is_refused_with_the_reason(world_readable_dir, spoof,
                                                          layout):
    member = Member(world_readable_dir, operator_group())
    conf = world_readable_dir / "nothing-runs-this.ini"
    conf.write_text("[sockvisor]\n\n[watcher:web]\ncmd = /bin/true\n")
    conf.chmod(0o644)
    fakes = spoof(str(conf), member.uid, layout)
    result = member.ctl("-c", str(conf), "status")
    assert result.returncode == 3, result
    skipped = paths.runtime_dir(str(conf), f"/tmp/sockvisor-{member.uid}")
    if SPOOFS[layout][0][0] != "member" or SPOOFS[layout][0][1] & 0o022:
        skipped = os.path.dirname(skipped)
    assert "skipped, as not safe to use" in result.stderr, result.stderr
    assert f"{skipped} (writable by others" in result.stderr \
        or f"{skipped} (owned by uid" in result.stderr, result.stderr
    _nobody_connected(fakes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", sorted(SPOOFS))
def test_discovery_without_c_skips_a_spoofed_place(world_readable_dir, spoof, layout):
    """With neither -c nor --endpoint sockvisorctl looks for running sockvisors
    under the runtime bases: a place another user made is not one of them."""
    member = Member(world_readable_dir, operator_group())
    conf = world_readable_dir / "spoofed.ini"
    conf.write_text("[sockvisor]\n\n[watcher:web]\ncmd = /bin/true\n")
    conf.chmod(0o644)
    fakes = spoof(str(conf), member.uid, layout)
    result = member.ctl("status")
    assert str(paths.runtime_dir(str(conf), f"/tmp/sockvisor-{member.uid}")) \
        not in result.stderr + result.stdout, result
    _nobody_connected(fakes)
